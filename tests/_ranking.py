"""Datasets, fixtures and helpers shared by the ranking-model tests (test_ranking_models, test_hemix)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from rankstack.config import from_dict
from rankstack.data.dataset import Dataset, DatasetWriter
from rankstack.data.loader import BatchLoader
from rankstack.data.schema import Schema
from rankstack.nn.features import FieldLayout
from rankstack.ranking import build_model
from rankstack.ranking.base import RankingModel
from tests._datasets import SCHEMA, toy_rows, write_toy_dataset

# Small sizes so that every test runs in well under a second per model.
SMALL_ARGS: dict[str, dict] = {
    "dlrm": {"top_mlp": [32, 16], "tower": [16]},
    "dcnv2": {"dnn": [32, 16], "tower": [16]},
    "din": {"attention": [16, 8], "mlp": [32, 16], "tower": [16]},
    "rankmixer": {"num_tokens": 6, "dim": 24, "n_layers": 2, "history_heads": 2, "tower": [16]},
    "transformer": {"dim": 24, "heads": 2, "n_layers": 2, "tower": [16]},
    "hemix": {"dim": 24, "n_layers": 2, "rank": 4, "realtime_len": 3, "tower": [16]},
}
MODEL_NAMES = sorted(SMALL_ARGS)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "ranking"


# -- datasets --------------------------------------------------------------------------------------------------


def write_stream_dataset(out: Path, streams: str, rows: int = 1200, seed: int = 0) -> Path:
    """The toy dataset with another stream layout and two dense numerics (`age`: user, request level; `price`:
    item, candidate level).

    streams: `history` (one undivided history of up to 8 events, the toy's real-time events) or `two`
        (`longterm_*` of up to 6 older events beside the toy's `realtime_*`).
    """
    spec = copy.deepcopy(SCHEMA)
    spec["columns"] += [{"name": "age", "kind": "numeric", "role": "user"},
                        {"name": "price", "kind": "numeric", "role": "item"}]
    if streams == "history":
        for col in spec["columns"]:
            if col["name"].startswith("realtime_"):
                col.update(name=col["name"].replace("realtime_", "history_"), role="history", max_len=8)
    else:
        spec["columns"] += [
            {"name": "longterm_poi_id", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "poi_id"},
            {"name": "longterm_category", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "category", "vocab": {"min_count": 2}},
            {"name": "longterm_action", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "action"},
        ]
    schema = from_dict(Schema, spec)
    with DatasetWriter(out, schema, row_group_size=256) as writer:
        for i, split in enumerate(schema.splits):
            n = rows if split == "train" else rows // 4
            data = toy_rows(n, seed + i, start=i * rows)
            rng = np.random.default_rng(seed + 10 + i)
            data["age"] = rng.normal(40, 12, n).astype(np.float32)
            data["price"] = rng.exponential(20, n).astype(np.float32)
            if streams == "history":
                data = {k.replace("realtime_", "history_"): v for k, v in data.items()}
            else:
                older = toy_rows(n, seed + 100 + i)
                for name in ("poi_id", "category", "action"):
                    data[f"longterm_{name}"] = older[f"realtime_{name}"]
            writer.write(split, data)
    return out


def write_datasets(root: Path) -> dict[str, Dataset]:
    """The three stream layouts: `realtime` (the toy dataset), `history` and `two` (`write_stream_dataset`)."""
    return {
        "realtime": Dataset.open(write_toy_dataset(root / "toy", rows=2000)),
        "history": Dataset.open(write_stream_dataset(root / "history", "history")),
        "two": Dataset.open(write_stream_dataset(root / "two", "two")),
    }


def make_model(name: str, dataset: Dataset, seed: int = 0, **overrides) -> RankingModel:
    torch.manual_seed(seed)
    return build_model(name, {**SMALL_ARGS[name], **overrides}, FieldLayout.from_dataset(dataset))


def first_batch(dataset: Dataset, size: int = 64, split: str = "train") -> dict[str, torch.Tensor]:
    return next(iter(BatchLoader(dataset, split, size)))


def sequence_columns(layout: FieldLayout) -> list[str]:
    return [c for s in layout.sequences for c in (*s.item_columns, s.action_column) if c is not None]


def feature_keys(layout: FieldLayout) -> list[str]:
    """The batch keys a model reads, in a fixed order (the inputs of an exported graph)."""
    return ([k for k, _ in layout.ns] + [k for k, _ in layout.multi_valued] + list(layout.dense)
            + [k for k, _ in layout.target] + sequence_columns(layout))


def perturb(batch: dict[str, torch.Tensor], layout: FieldLayout, where: str,
            roles: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """A copy of `batch` with new ids in every sequence column except the first of each stream (which defines the
    mask) at padded positions (`where="padding"`) or at the newest event of non-empty rows (`"events"`); only in
    the streams of `roles` when given."""
    out = dict(batch)
    generator = torch.Generator().manual_seed(7)
    for seq in layout.sequences:
        if roles is not None and seq.role not in roles:
            continue
        columns = [c for c in (*seq.item_columns, seq.action_column) if c is not None]
        mask = batch[columns[0]] != 0
        where_mask = ~mask if where == "padding" else mask & (torch.arange(mask.shape[1]) == mask.shape[1] - 1)
        for column in columns[1:]:
            noise = torch.randint(2, 5, batch[column].shape, generator=generator)
            out[column] = torch.where(where_mask, noise, batch[column])
    return out


def left_pad(batch: dict[str, torch.Tensor], layout: FieldLayout, extra: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for column in sequence_columns(layout):
        out[column] = torch.nn.functional.pad(batch[column], (extra, 0))
    return out


def one_request(batch: dict[str, torch.Tensor], model: RankingModel, candidates: int) -> dict[str, torch.Tensor]:
    """`candidates` rows that share row 0's user, context and behaviour (as one request's candidates do)."""
    layout = model.layout
    shared = [k for k in model.layout.levels if layout.level_of(k) == "request" and k in batch]
    shared += [c for s in layout.sequences for c in (*s.item_columns, s.action_column) if c is not None]
    rows = {k: v[:candidates].clone() for k, v in batch.items()}
    for key in shared:
        rows[key] = batch[key][:1].expand_as(rows[key]).clone()
    return rows
