"""Two-process data-parallel training with torchrun (gloo on CPU): disjoint shards, identical parameters on both
ranks, a falling loss, and an exact resume of a run whose every process was killed with SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
from _train_launch import (
    assert_same_params,
    csv_rows,
    kill,
    metrics_without_timing,
    params,
    run,
    start,
    torchrun_command,
    wait_for,
)

from rankstack.train import load_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")

N_TRAIN = 1024  # 512 samples per rank, 32 steps per epoch with batches of 16, 3 epochs
# The killed run stops after step 45; its last checkpoint is step 40, in the middle of the second epoch.
KILL_AFTER_STEP = 45


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """An uninterrupted two-rank run; returns its folder (``run/`` and ``rec/`` inside)."""
    root = tmp_path_factory.mktemp("ddp_full")
    run(torchrun_command(2, "--run-dir", root / "run", "--record-dir", root / "rec", "--n-train", N_TRAIN))
    return root


def test_ranks_train_on_disjoint_shards_and_end_with_identical_parameters(full_run):
    ids = [json.loads((full_run / "rec" / f"ids_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(ids[0]) == sorted(ids[1]) == ["0", "1", "2"]
    for epoch in ids[0]:
        rank0, rank1 = set(ids[0][epoch]), set(ids[1][epoch])
        assert len(rank0) == len(rank1) == N_TRAIN // 2
        assert not rank0 & rank1 and rank0 | rank1 == set(range(N_TRAIN))
    assert ids[0]["0"] != ids[0]["1"]  # reshuffled per epoch

    assert_same_params(params(full_run / "rec", 0), params(full_run / "rec", 1))

    losses = [float(row["loss"]) for row in csv_rows(full_run / "run") if row["loss"]]
    assert losses[-1] < 0.7 * losses[0]
    metrics = json.loads((full_run / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 96 and metrics["samples"] == 3 * N_TRAIN
    assert metrics["final"]["accuracy"] > 0.85


def test_killed_ddp_run_resumes_bit_identical(full_run, tmp_path):
    args = ("--run-dir", tmp_path / "run", "--record-dir", tmp_path / "rec", "--n-train", N_TRAIN)
    process = start(torchrun_command(2, *args, "--pause-after-step", KILL_AFTER_STEP), tmp_path / "log")
    try:
        wait_for(tmp_path / "rec" / "paused", process, tmp_path / "log")
    finally:
        kill(process, tmp_path / "rec")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["state"]["step"] == 40 and checkpoint["world_size"] == 2
    assert [r["loader"] for r in checkpoint["ranks"]] == [{"epoch": 1, "yielded": 8}] * 2

    run(torchrun_command(2, *args, "--resume"))
    for rank in (0, 1):
        assert_same_params(params(tmp_path / "rec", rank), params(full_run / "rec", rank))
    assert metrics_without_timing(tmp_path / "run") == metrics_without_timing(full_run / "run")
    assert csv_rows(tmp_path / "run") == csv_rows(full_run / "run")
