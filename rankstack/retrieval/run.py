"""Retrieval runs from a YAML config (`configs/retrieval/*.yaml`): fit a SID tokenizer, score the baselines.

The functions a CLI calls:

    config = load_run_config("configs/retrieval/city_tiny.yaml", {"data": "runs/world/next_poi"})
    report = build_tokenizer(config, "runs/sids_city_tiny")      # sids.json, sids.safetensors, tokenizer.json
    report = bench_baselines(config, "runs/baselines_city_tiny")  # results.json, results.jsonl (one row per method)
    print(format_baselines(report))

Both write the resolved config to `<out>/config.yaml` first.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstack.config import dump_yaml, load_yaml
from rankstack.retrieval.baselines import BaselineConfig, run_baselines
from rankstack.retrieval.data import load_retrieval_data
from rankstack.retrieval.semantic_ids import SemanticIdConfig, build_semantic_ids
from rankstack.train.checkpoint import save_json


@dataclass
class RetrievalRunConfig:
    """A retrieval run.

    data: a next-POI dataset folder (`<world>/next_poi`, or a `foursquare-nyc` / `amazon-s3rec` conversion).
    semantic_ids: the tokenizer (`SemanticIdConfig`). baselines: the baseline benchmark (`BaselineConfig`).
    """

    data: str
    semantic_ids: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RetrievalRunConfig:
    """Read a YAML run config; `overrides` maps dotted keys to values (`trainer.seed: 1`)."""
    return load_yaml(RetrievalRunConfig, path, overrides)


def build_tokenizer(config: RetrievalRunConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Fit the SID tokenizer of `config` on its dataset's train split into `out`; returns the tokenizer's
    report (pair statistics, adapter training, reconstruction error, diagnostics), also in `tokenizer.json`."""
    out = Path(out)
    start = time.perf_counter()
    sids = build_semantic_ids(load_retrieval_data(config.data), config.semantic_ids, out, overwrite=overwrite)
    dump_yaml(config, out / "config.yaml")
    report = {"data": config.data, "level_sizes": list(sids.level_sizes), "length": sids.length,
              "wall_time_s": time.perf_counter() - start} | sids.meta
    save_json(report, out / "tokenizer.json")
    return report


def bench_baselines(config: RetrievalRunConfig, out: str | Path) -> dict[str, Any]:
    """Score every baseline on `config.data` into `out/results.json`, and append one machine-readable row per
    method and split to `out/results.jsonl`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    start = time.perf_counter()
    report = run_baselines(load_retrieval_data(config.data), config.baselines)
    report["wall_time_s"] = time.perf_counter() - start
    save_json(report, out / "results.json")
    with open(out / "results.jsonl", "a") as rows:
        for method, entry in report.items():
            if not isinstance(entry, dict):
                continue
            for split in ("valid", "test"):
                if split in entry:
                    rows.write(json.dumps({"data": config.data, "method": method, "split": split,
                                           "host": platform.node()} | entry[split]) + "\n")
            if method == "oracle":
                rows.write(json.dumps({"data": config.data, "method": method, "split": "test",
                                       "host": platform.node()} | entry) + "\n")
    return report


def format_baselines(report: dict[str, Any]) -> str:
    """Test metrics of each method as a small table (W is the list width every metric is capped at)."""
    keys = ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr")
    lines = [f"{'method':22}" + "".join(f"{k:>9}" for k in keys) + f"{'W':>5}"]
    for method, entry in report.items():
        if not isinstance(entry, dict):
            continue
        row = entry.get("test", entry)
        lines.append(f"{method:22}" + "".join(f"{row[k]:9.4f}" for k in keys) + f"{int(row['width']):5d}")
    return "\n".join(lines)
