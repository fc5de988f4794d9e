"""HeMix scaling sweep (ranking issue, "Scaling"; hemix.md §12.6): AUC against dense parameters and FLOPs.

Trains HeMix at several sizes over token width d and depth L (N, H and r fixed, as §10's scaling recipe says) on
one world dataset, one run per size, and writes:
- `<out>/runs/d<d>-L<L>/`: each run folder (resumable: a size whose `results.json` exists is not retrained);
- `<out>/ranking_scaling.json`: per size, dense parameters, forward FLOPs per sample (`torch.utils.flop_counter`)
  and the active ones (the same except with `--set model.args.ffn=moe`: without the experts a row does not use),
  test metrics, and over the sizes the Spearman ρ(params, click AUC), the least-squares slope of AUC against
  log10(params) and the largest-minus-smallest AUC difference (§12.6's three checks);
- `<out>/ranking_scaling.png`: click AUC against dense parameters and against active FLOPs per sample, with the
  Bayes-optimal AUC as a line.

    python benchmarks/ranking_scaling.py --data /tmp/world-medium/ranking --out benchmarks/results/scaling-medium \\
        [--sizes 64x1 128x1 128x2 256x2 256x3] [--epochs 1] [--max-steps N] [--seed 0] [--jobs N] [--collect-only]

The issue's result needs the `medium` (or `large`) world; runs on `small` with few steps are smoke checks only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.ranking.bench import machine_info  # noqa: E402
from rankstack.ranking.sweep import model_cost, run_all  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    dim, layers = text.lower().split("x")
    return int(dim), int(layers)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values: list[float]) -> np.ndarray:
        values_arr = np.asarray(values)
        order = values_arr.argsort()
        r = np.empty(len(values_arr))
        r[order] = np.arange(len(values_arr))
        for v in np.unique(values_arr):
            r[values_arr == v] = r[values_arr == v].mean()
        return r
    if len(x) < 2:
        return float("nan")
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def plot(rows: list[dict], bayes: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "dense_params", "dense parameters"),
                           (axes[1], "active_flops_per_sample", "forward FLOPs per sample (MoE: active experts)")):
        ordered = sorted(rows, key=lambda r: r[key])
        x, auc = [r[key] for r in ordered], [r["click_auc"] for r in ordered]
        ax.plot(x, auc, "o-")
        for r, xi, yi in zip(ordered, x, auc):
            ax.annotate(f"d={r['dim']}, L={r['n_layers']}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        if bayes is not None:
            ax.axhline(bayes, linestyle="--", color="grey", label=f"Bayes-optimal {bayes:.4f}")
            ax.legend(loc="center right")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test click AUC")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a world's ranking dataset folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "configs" / "ranking" / "hemix_world_medium.yaml"))
    parser.add_argument("--sizes", nargs="+", default=["64x1", "128x1", "128x2", "256x2", "256x3"],
                        help="DxL: token width d and depth L")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, help="cap on optimiser steps per run (smoke checks)")
    parser.add_argument("--eval-max-rows", type=int, help="cap on validation rows per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="another override for every run")
    parser.add_argument("--jobs", type=int, default=1, help="sizes trained at once, each in its own process")
    parser.add_argument("--collect-only", action="store_true", help="train nothing; tabulate the finished sizes")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from rankstack.config import parse_override

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [parse_size(size) for size in args.sizes]
    runs = [(args.config, {"data": args.data, "model.args.dim": dim, "model.args.n_layers": layers,
                           "trainer.epochs": args.epochs, "trainer.seed": args.seed,
                           "trainer.early_stopping_patience": None,
                           **({"trainer.max_steps": args.max_steps} if args.max_steps else {}),
                           **({"eval_max_rows": args.eval_max_rows} if args.eval_max_rows else {}),
                           **dict(parse_override(p) for p in args.set)}, out / "runs" / f"d{dim}-L{layers}")
            for dim, layers in sizes]
    rows, bayes = [], None
    for (dim, layers), (_, overrides, _), results in zip(sizes, runs, run_all(runs, args.jobs, args.collect_only)):
        if results is None:
            print(f"d={dim} L={layers}: no result", flush=True)
            continue
        cost = model_cost(args.config, overrides)
        bayes = results["test"].get("bayes", {}).get("click_auc")
        rows.append({"dim": dim, "n_layers": layers, **cost,
                     "wall_time_s": results["train"]["wall_time_s"], "steps": results["train"]["steps"],
                     **{k: v for k, v in results["test"].items() if isinstance(v, float)}})
        print(f"d={dim} L={layers}: {cost['dense_params']:,} dense params, "
              f"{cost['active_flops_per_sample'] / 1e6:.1f} MFLOP/sample, "
              f"click AUC {rows[-1]['click_auc']:.4f}", flush=True)
    if not rows:
        sys.exit("no size has a result yet.")
    rows.sort(key=lambda r: r["dense_params"])
    auc = [r["click_auc"] for r in rows]
    log_params = np.log10([r["dense_params"] for r in rows])
    summary = {
        "command": " ".join(["python", *sys.argv]), **machine_info(), "data": args.data, "config": args.config,
        "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed, "rows": rows,
        "bayes_click_auc": bayes,
        "spearman_params_auc": spearman([r["dense_params"] for r in rows], auc),
        "slope_auc_per_log10_params": float(np.polyfit(log_params, auc, 1)[0]) if len(rows) > 1 else None,
        "largest_minus_smallest_auc": auc[-1] - auc[0],
    }
    (out / "ranking_scaling.json").write_text(json.dumps(summary, indent=2))
    plot(rows, bayes, out / "ranking_scaling.png",
         f"HeMix scaling on {Path(args.data).parent.name}, {args.epochs} epoch(s)"
         + (f", ≤{args.max_steps} steps" if args.max_steps else ""))
    print(f"Spearman ρ(params, AUC) = {summary['spearman_params_auc']:.3f}; slope per decade of params = "
          f"{summary['slope_auc_per_log10_params']}; largest − smallest AUC = {summary['largest_minus_smallest_auc']:+.4f}")
    print(f"command: {summary['command']}\nwritten {out / 'ranking_scaling.json'} and {out / 'ranking_scaling.png'}")


if __name__ == "__main__":
    main()
