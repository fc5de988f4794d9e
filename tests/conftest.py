"""Fixtures shared by several test modules (pytest finds this file by name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankstack.data.dataset import Dataset
from rankstack.world import WorldConfig, generate
from tests._ranking import write_datasets


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Dataset]:
    return write_datasets(tmp_path_factory.mktemp("ranking"))


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    """The tiny synthetic world (seed 0), generated once per test session; tests read it and never modify it."""
    return generate(WorldConfig.preset("tiny"), seed=0, out=tmp_path_factory.mktemp("tiny-world") / "world")


@pytest.fixture(scope="module")
def tiny_world(tiny_world_dir: Path) -> Dataset:
    """The tiny world's ranking dataset."""
    return Dataset.open(tiny_world_dir / "ranking")


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
