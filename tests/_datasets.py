"""Small hand-built datasets for data-contract and loader tests (no world generation needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rankstack.config import from_dict
from rankstack.data.dataset import DatasetWriter
from rankstack.data.schema import Schema

SCHEMA = {
    "name": "toy",
    "group_key": "user_id",
    "request_key": "request_id",
    "columns": [
        {"name": "request_id", "kind": "categorical", "role": "key"},
        {"name": "user_id", "kind": "categorical", "role": "key"},
        {"name": "hour", "kind": "categorical", "role": "context", "cost_ms": 0.1},
        {"name": "city", "kind": "categorical", "role": "user", "dtype": "string"},
        {"name": "poi_id", "kind": "categorical", "role": "item", "cost_ms": 0.001},
        {"name": "category", "kind": "categorical", "role": "item", "vocab": {"min_count": 2}},
        {"name": "distance_km", "kind": "numeric", "role": "cross", "num_buckets": 8},
        {"name": "attrs", "kind": "sequence", "role": "item", "max_len": 3, "embedding_group": "attr"},
        {"name": "realtime_poi_id", "kind": "sequence", "role": "realtime_seq", "max_len": 4,
         "embedding_group": "poi_id"},
        {"name": "realtime_category", "kind": "sequence", "role": "realtime_seq", "max_len": 4,
         "embedding_group": "category", "vocab": {"min_count": 2}},
        {"name": "realtime_action", "kind": "sequence", "role": "realtime_seq", "max_len": 4,
         "embedding_group": "action"},
        {"name": "click", "kind": "numeric", "role": "label"},
    ],
}


def toy_rows(n: int, seed: int, start: int = 0) -> dict:
    """`n` rows whose click depends on whether the candidate's category was in the real-time sequence."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 7, n)
    seq_poi = [list(rng.integers(1, 50, k)) for k in lengths]
    seq_cat = [[int(p) % 5 for p in s] for s in seq_poi]
    poi = rng.integers(1, 50, n)
    cat = poi % 5
    match = np.array([c in s for c, s in zip(cat, seq_cat)])
    p = 1 / (1 + np.exp(-(-1.0 + 2.5 * match)))
    return {
        "request_id": np.arange(start, start + n) // 4,
        "user_id": rng.integers(0, 30, n),
        "hour": rng.integers(0, 24, n),
        "city": rng.choice(["paris", "rome", "oslo"], n),
        "poi_id": poi,
        "category": cat,
        "distance_km": rng.exponential(2.0, n),
        "attrs": [list(rng.integers(0, 6, rng.integers(0, 4))) for _ in range(n)],
        "realtime_poi_id": seq_poi,
        "realtime_category": seq_cat,
        "realtime_action": [list(rng.integers(0, 3, len(s))) for s in seq_poi],
        "click": (rng.random(n) < p).astype(np.float32),
    }


def write_toy_dataset(out: Path, rows: int = 2000, row_group_size: int = 256, seed: int = 0) -> Path:
    schema = from_dict(Schema, SCHEMA)
    with DatasetWriter(out, schema, row_group_size=row_group_size) as writer:
        for i, split in enumerate(schema.splits):
            n = rows if split == "train" else rows // 4
            writer.write(split, toy_rows(n, seed + i, start=i * rows))
    return out
