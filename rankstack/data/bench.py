"""Loader throughput: samples per second of `BatchLoader` on one core (`rankstack bench loader`).

The loader must not set training speed: the foundation's target is >= 50,000 samples/s on the `medium` world
(a 100-event long-term and a 20-event real-time sequence) on one core. Each repeat reads a fresh shuffled epoch
(or its first `max_batches` batches when > 0); the median over repeats is reported.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader


def bench_loader(data: str | Path, split: str = "train", batch_size: int = 4096, repeats: int = 5,
                 max_batches: int = 0) -> dict[str, Any]:
    torch.set_num_threads(1)
    dataset = Dataset.open(data)
    rates = []
    for repeat in range(repeats):
        loader = BatchLoader(dataset, split, batch_size, shuffle=True, seed=repeat)
        rows = 0
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            rows += len(next(iter(batch.values())))
            if max_batches and i + 1 >= max_batches:
                break
        rates.append(rows / (time.perf_counter() - start))
    sequences = {c.name: c.max_len for c in dataset.schema.columns if c.kind == "sequence"}
    return {
        "data": str(data), "split": split, "batch_size": batch_size, "repeats": repeats,
        "rows_per_repeat": rows, "columns": len(dataset.schema.columns), "sequence_max_len": sequences,
        "samples_per_s_median": statistics.median(rates), "samples_per_s_all": rates, "threads": 1,
    }
