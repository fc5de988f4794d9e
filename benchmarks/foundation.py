"""Foundation benchmarks (`make bench`): loader throughput on the medium world, and the DLRM baseline end to end.

1. Generates the `medium` world once under `runs/bench/world-medium` (reused afterwards) and measures
   `BatchLoader` samples/s with a 100-event long-term and a 20-event real-time sequence on one core: the median
   of several shuffled whole-epoch repeats.
2. With `--ranking`, trains the demo's DLRM config on the `small` world for several seeds and reports test
   AUC / GAUC / log-loss (mean ± std) beside the item-popularity baseline and the Bayes-optimal figures.
Writes `benchmarks/results/foundation.json` and prints the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", default=str(ROOT / "runs" / "bench" / "world-medium"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-batches", type=int, default=0, help="0: each repeat reads a whole epoch")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--ranking", action="store_true", help="also train DLRM on the small world per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rankstack.data.bench import bench_loader
    from rankstack.world import WorldConfig, generate

    world = Path(args.world)
    generation_s = None
    if not (world / "world.yaml").is_file():
        start = time.perf_counter()
        generate(WorldConfig.preset("medium"), seed=0, out=world)
        generation_s = time.perf_counter() - start
    result = bench_loader(world / "ranking", "train", args.batch_size, args.repeats, args.max_batches)
    result.update({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "python": platform.python_version(),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip(),
        "world_generation_s": generation_s,
    })
    if args.ranking:
        result["dlrm_small_world"] = bench_dlrm_small_world(args.seeds)
    out = ROOT / "benchmarks" / "results" / "foundation.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nloader: {result['samples_per_s_median']:,.0f} samples/s (median of {args.repeats}, one core)")
    print(f"written to {out}")


def bench_dlrm_small_world(seeds: list[int]) -> dict:
    """Generate the small world (seed 0) and train the demo DLRM config once per training seed."""
    import numpy as np

    from rankstack.ranking.run import load_run_config, train_ranking
    from rankstack.world import WorldConfig, generate

    world = ROOT / "runs" / "bench" / "world-small"
    if not (world / "world.yaml").is_file():
        generate(WorldConfig.preset("small"), seed=0, out=world)
    runs = []
    for seed in seeds:
        config = load_run_config(ROOT / "configs" / "ranking" / "dlrm_world_small.yaml",
                                 {"data": str(world / "ranking"), "trainer.seed": seed,
                                  "trainer.progress_bar": False})
        out = ROOT / "runs" / "bench" / f"dlrm-small-seed{seed}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        runs.append(train_ranking(config, out))
    summary: dict = {"seeds": seeds, "train_samples_per_s": [r["train"]["samples_per_s"] for r in runs]}
    for source in ("model", "popularity", "bayes"):
        for key in ("click_auc", "click_gauc", "click_logloss", "order_auc", "order_gauc", "order_logloss"):
            values = [(r["test"] if source == "model" else r["test"][source])[key] for r in runs]
            summary[f"{source}_{key}"] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                          "runs": values}
    return summary


if __name__ == "__main__":
    main()
