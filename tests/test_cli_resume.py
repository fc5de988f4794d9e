"""Kill `rankstack train ranking` with SIGKILL mid-run, resume it, and get exactly the uninterrupted result.

This is the whole production path (CLI, Parquet loader, DLRM, trainer) rather than the trainer's toy; it runs
the CLI in subprocesses so the kill is a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests._datasets import write_toy_dataset

TIMEOUT_S = 180


def _command(config, out, *extra):
    return [sys.executable, "-m", "rankstack", "train", "ranking", "--config", str(config), "--out", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _checkpoint_step(run_dir) -> int:
    path = run_dir / "checkpoint.pt"
    return torch.load(path, weights_only=True)["state"]["step"] if path.exists() else 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", rows=6000, row_group_size=500)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(data),
        "model": {"name": "dlrm", "args": {"top_mlp": [64, 32], "tower": [16], "dropout": 0.1}},
        "batch_size": 64,
        "trainer": {"epochs": 3, "eval_every_steps": 40, "checkpoint_every_steps": 10, "progress_bar": False,
                    "early_stopping_metric": "click_auc", "seed": 5},
    }))
    reference = tmp_path / "reference"
    subprocess.run(_command(config, reference), env=_env(), check=True, timeout=TIMEOUT_S, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(config, killed), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    # Kill after an evaluation (step 40) so the best-metric state is part of what must survive.
    while _checkpoint_step(killed) < 50:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before step 50"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    step = _checkpoint_step(killed)
    total = json.loads((reference / "metrics.json").read_text())["steps"]
    assert 0 < step < total, "the kill must land mid-run"
    assert not (killed / "results.json").exists()

    subprocess.run(_command(config, killed, "--resume"), env=_env(), check=True, timeout=TIMEOUT_S,
                   capture_output=True)
    expected = json.loads((reference / "results.json").read_text())
    got = json.loads((killed / "results.json").read_text())
    assert got["test"] == expected["test"]
    for key in ("steps", "best", "best_step", "final", "train_loss"):
        assert got["train"][key] == expected["train"][key], key
