"""Many ranking runs from one place: the drivers behind the ranking issue's tables (hemix.md §12.2–§12.6).

A sweep is a list of named runs, each a YAML run config plus dotted overrides, trained into its own folder under
one output folder. `run_or_load` trains a run only when its folder holds no `results.json` yet, so a sweep that
was stopped (or that gains rows) resumes by running the same command again; a run stopped half-way restarts from
its checkpoint. `summarise` turns the rows into mean ± std per group and metric, and `format_table` prints them
beside the item-popularity baseline and the Bayes-optimal figure of the world's true probabilities.

Used by `benchmarks/ranking_world.py` (models × seeds), `benchmarks/ranking_ablations.py` (HeMix ablations × world
mechanisms on/off) and `benchmarks/ranking_scaling.py` (sizes).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from rankstack.data.loader import BatchLoader
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.hemix import PerTokenMoE
from rankstack.ranking.run import build_for, load_run_config, train_ranking

METRICS = ("auc", "gauc", "logloss")


def run_or_load(config: str | Path, overrides: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """`results.json` of the run in `out`: read it if it exists, otherwise train the run (resuming from its
    checkpoint if one was left) and return what it wrote."""
    out = Path(out)
    done = out / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_config = load_run_config(config, {"trainer.progress_bar": False, "trainer.tensorboard": False, **overrides})
    run_config.trainer.resume = (out / "checkpoint.pt").is_file()
    return train_ranking(run_config, out, where=str(config))


Run = tuple[str | Path, dict[str, Any], str | Path]  # (config, overrides, out folder)


def map_in_processes(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int = 1) -> list[Any]:
    """`[fn(*call) for call in calls]`; with `jobs` > 1, that many calls at once, each in its own spawned process
    (`fn` must be importable, and its arguments picklable)."""
    if jobs <= 1:
        return [fn(*call) for call in calls]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*calls)))


def _run_logged(config: str | Path, overrides: dict[str, Any], out: str | Path) -> dict[str, Any] | None:
    try:
        return run_or_load(config, overrides, out)
    except Exception:  # noqa: BLE001 - one failed run must not take the sweep's other runs with it
        print(f"run {out} failed:\n{traceback.format_exc()}", flush=True)
        return None


def run_all(runs: Sequence[Run], jobs: int = 1, collect_only: bool = False) -> list[dict[str, Any] | None]:
    """`run_or_load` for every run, in order: with `jobs` > 1, that many at once, each in its own process (a
    ranker of the world's size leaves most of a GPU idle, so several share one card). A run that fails gives None
    (its traceback is printed) when `jobs` > 1 and raises when runs go one by one. With `collect_only`, nothing is
    trained: finished runs are read back, the others give None (to tabulate a sweep that was stopped)."""
    if collect_only:
        return [json.loads(done.read_text()) if (done := Path(out) / "results.json").is_file() else None
                for _, _, out in runs]
    return map_in_processes(run_or_load if jobs <= 1 else _run_logged, runs, jobs)


def model_cost(config: str | Path, overrides: dict[str, Any], batch_size: int = 256) -> dict[str, float]:
    """`dense_params` and `embedding_params` of the run's model, and its forward FLOPs per sample on the dataset's
    first validation batch (`forward_flops_per_sample`, `torch.utils.flop_counter`: matrix products, which is
    where a ranker's compute is). HeMix's `ffn: moe` computes every expert; `active_flops_per_sample` leaves out
    the experts a row does not use (equal to the computed FLOPs for every other model)."""
    run_config = load_run_config(config, overrides)
    dataset, _, model = build_for(run_config, str(config))
    batch = next(iter(BatchLoader(dataset, "valid", batch_size)))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval().logits(batch)
    counts = parameter_breakdown(model)
    flops = counter.get_total_flops() / len(next(iter(batch.values())))
    inactive = sum(m.inactive_flops_per_row() for m in model.modules() if isinstance(m, PerTokenMoE))
    return {"dense_params": counts["dense"], "embedding_params": counts["embeddings"],
            "forward_flops_per_sample": flops, "active_flops_per_sample": flops - inactive}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; both NaN for none, e.g. a stopped sweep's)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]], group: str, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per value of `row[group]`: mean and std of each `{task}_{metric}` of `row["test"]` over its rows, the
    number of rows, and the Bayes and popularity figures (identical across seeds of one dataset)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(row[group] for row in rows):
        mine = [row for row in rows if row[group] == name]
        entry: dict[str, Any] = {"runs": len(mine)}
        for task in tasks:
            for metric in METRICS:
                key = f"{task}_{metric}"
                values = [row["test"][key] for row in mine if key in row["test"]]
                if values:
                    entry[key] = mean_std(values)
        test = mine[0]["test"]
        entry["bayes"], entry["popularity"] = test.get("bayes", {}), test.get("popularity", {})
        out[name] = entry
    return out


def format_table(summary: dict[str, dict[str, Any]], tasks: Sequence[str], label: str = "model") -> str:
    """A Markdown table: one row per group with mean ± std of every metric, then the popularity and Bayes rows."""
    keys = [f"{t}_{m}" for t in tasks for m in METRICS]
    lines = [f"| {label} | runs | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, entry in summary.items():
        cells = [f"{entry[k][0]:.4f} ± {entry[k][1]:.4f}" if k in entry else "" for k in keys]
        lines.append(f"| {name} | {entry['runs']} | " + " | ".join(cells) + " |")
    first = next(iter(summary.values()), {})
    for name in ("popularity", "bayes"):
        figures = first.get(name, {})
        if figures:
            lines.append(f"| {name} | | " + " | ".join(f"{figures[k]:.4f}" if k in figures else "" for k in keys)
                         + " |")
    return "\n".join(lines)
