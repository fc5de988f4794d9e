"""`torchrun -m rankstack train ranking` with two gloo processes on CPU: the Parquet loader shards row groups by
rank, both ranks run the same number of steps, and rank 0 writes one run folder (the trainer's own DDP test,
test_train_ddp.py, checks replica parameters and resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from rankstack.train import load_weights
from tests._datasets import write_toy_dataset


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_process_training_through_the_cli(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", rows=4000, row_group_size=250)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(data),
        "model": {"name": "dlrm", "args": {"top_mlp": [64, 32], "tower": [16]}},
        "batch_size": 64,
        "trainer": {"epochs": 2, "eval_every_steps": 25, "checkpoint_every_steps": 25, "progress_bar": False,
                    "lr_dense": 3e-3, "lr_embedding": 3e-2, "early_stopping_metric": "click_auc"},
    }))
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "rankstack", "train", "ranking",
         "--config", str(config), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # Each rank trains on half of the 16 row groups: 2000 rows → 32 batches of 64 per epoch.
    assert metrics["steps"] == 2 * 32
    assert metrics["samples"] == 2 * 2 * 2000, "samples are counted over both ranks"
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["click_auc"] > 0.6
    assert load_weights(out / "best.safetensors"), "rank 0 saved the best weights"
