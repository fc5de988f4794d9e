"""`rankstack data inspect DIR`: what a dataset holds, read from its schema, Parquet metadata and vocabularies.

Sequence-length statistics are computed by streaming the list lengths of each sequence column, so inspecting a
large split costs one pass over those columns only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack.data.dataset import Dataset


def sequence_stats(dataset: Dataset, split: str) -> dict[str, dict[str, float]]:
    """Per sequence column: mean, median, p95 and max length, the share of empty rows and of truncated rows."""
    columns = [c for c in dataset.schema.columns if c.kind == "sequence"]
    if not columns:
        return {}
    lengths: dict[str, list[np.ndarray]] = {c.name: [] for c in columns}
    reader = pq.ParquetFile(dataset.split_file(split))
    for batch in reader.iter_batches(batch_size=1 << 16, columns=[c.name for c in columns]):
        for col in columns:
            lengths[col.name].append(pc.list_value_length(batch.column(col.name)).to_numpy(zero_copy_only=False))
    stats = {}
    for col in columns:
        values = np.concatenate(lengths[col.name])
        stats[col.name] = {
            "mean": float(values.mean()), "p50": float(np.median(values)), "p95": float(np.percentile(values, 95)),
            "max": int(values.max()), "empty": float((values == 0).mean()),
            "truncated": float((values > col.max_len).mean()),
        }
    return stats


def inspect(dataset: Dataset) -> dict[str, Any]:
    """A JSON-able summary of the dataset: schema, rows per split, vocab sizes, sequence lengths (train)."""
    schema = dataset.schema
    columns = []
    for col in schema.columns:
        entry: dict[str, Any] = {"name": col.name, "kind": col.kind, "role": col.role, "dtype": col.dtype}
        if col.has_vocab:
            entry["group"] = col.embedding_group
            entry["vocab"] = dataset.vocab.size(col.embedding_group)
            entry["policy"] = col.vocab.policy
        if col.kind == "sequence":
            entry["max_len"] = col.max_len
        if col.num_buckets:
            entry["vocab"] = dataset.vocab.bucket_count(col.name)
        if col.is_feature:
            entry["level"] = col.level
            entry["cost_ms"] = col.cost_ms
        columns.append(entry)
    labels = {}
    for name in schema.labels:
        table = pq.read_table(dataset.split_file("train"), columns=[name])
        labels[name] = float(pc.mean(table.column(name)).as_py())
    return {
        "name": schema.name,
        "path": str(dataset.path),
        "rows": {split: dataset.num_rows(split) for split in schema.splits},
        "columns": columns,
        "label_means_train": labels,
        "sequence_lengths_train": sequence_stats(dataset, "train"),
    }


def format_report(summary: dict[str, Any]) -> str:
    lines = [f"dataset {summary['name']} at {summary['path']}", ""]
    lines.append("rows: " + ", ".join(f"{split} {n:,}" for split, n in summary["rows"].items()))
    lines.append("label means (train): " + ", ".join(f"{k} {v:.4f}" for k, v in summary["label_means_train"].items()))
    lines += ["", f"{'column':28} {'kind':11} {'role':12} {'level':9} {'cost_ms':>9} {'group':22} {'vocab':>9} {'max_len':>7}"]
    for c in summary["columns"]:
        cost = f"{c['cost_ms']:.4f}" if "cost_ms" in c else ""
        vocab = f"{c['vocab']:,}" if "vocab" in c else ""
        lines.append(f"{c['name']:28} {c['kind']:11} {c['role']:12} {c.get('level', ''):9} {cost:>9} "
                     f"{c.get('group', ''):22} {vocab:>9} {c.get('max_len', ''):>7}")
    if summary["sequence_lengths_train"]:
        lines += ["", "sequence lengths (train):",
                  f"{'column':28} {'mean':>7} {'p50':>6} {'p95':>6} {'max':>6} {'empty':>7} {'truncated':>9}"]
        for name, s in summary["sequence_lengths_train"].items():
            lines.append(f"{name:28} {s['mean']:7.1f} {s['p50']:6.0f} {s['p95']:6.0f} {s['max']:6d} "
                         f"{s['empty']:7.1%} {s['truncated']:9.1%}")
    return "\n".join(lines)
