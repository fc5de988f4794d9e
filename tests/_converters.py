"""Helpers shared by the converter tests: where the real data lives, and what a failed conversion leaves."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real(path: str) -> Path:
    full = DATA / path
    if not full.exists():
        pytest.skip(f"{full} is absent: the real-data check needs ../shared/data/{path} (see its README)")
    return full


def rows(out: Path, split: str) -> list[dict]:
    return pq.read_table(out / f"{split}.parquet").to_pylist()


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a temporary folder was left behind"
