"""The ranking issue's tables (hemix.md §12.2, §12.3): every model × seeds on one dataset, mean ± std beside Bayes.

Trains `configs/ranking/<model>_world_<recipe>.yaml` (`--recipe small|medium`, a world) or
`configs/ranking/<model>_<recipe>.yaml` (`--recipe beauty|sports`, real data) for each model and seed and writes
the table of test AUC, GAUC and log-loss for click and conversion (mean ± std over seeds), with the
item-popularity baseline and, on a world, the Bayes-optimal figures of its true probabilities:
- `<out>/runs/<model>-seed<s>/`: each run (resumable: a run whose `results.json` exists is read, not retrained;
  one stopped half-way continues from its checkpoint), so running the same command again finishes a table;
- `<out>/ranking_world.json` (rows and summary) and `<out>/ranking_world.md` (the table).

    python benchmarks/ranking_world.py --data /tmp/world-medium/ranking --recipe medium --out runs/world-table \\
        [--models hemix dlrm dcnv2 din rankmixer transformer] [--seeds 0 1 2] [--set trainer.lr_dense=3e-4]
        [--set transformer:trainer.lr_dense=1e-3]
    python benchmarks/ranking_world.py --data /tmp/beauty --recipe beauty --out runs/beauty-table   # real data

`--max-steps` and `--eval-max-rows` cap each run for smoke checks; such tables are not results. `--jobs N` trains
N runs at once (each in its own process: on a GPU, several runs share the card); `--collect-only` trains nothing
and tabulates the runs that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.config import parse_override  # noqa: E402
from rankstack.ranking import MODELS  # noqa: E402
from rankstack.ranking.bench import machine_info  # noqa: E402
from rankstack.ranking.sweep import format_table, run_all, summarise  # noqa: E402

TASKS = ("click", "order")
WORLD_RECIPES = ("small", "medium")


def config_path(model: str, recipe: str) -> Path:
    """`configs/ranking/<model>_world_<recipe>.yaml` for a world recipe, `<model>_<recipe>.yaml` for real data."""
    name = f"{model}_world_{recipe}" if recipe in WORLD_RECIPES else f"{model}_{recipe}"
    return ROOT / "configs" / "ranking" / f"{name}.yaml"


def model_overrides(pairs: list[str], model: str) -> dict:
    """The `--set` overrides that apply to `model`: unprefixed ones, and `model:`-prefixed ones."""
    chosen = []
    for pair in pairs:
        prefix, _, rest = pair.partition(":")
        if rest and "=" not in prefix:
            if prefix == model:
                chosen.append(rest)
        else:
            chosen.append(pair)
    return dict(parse_override(p) for p in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a ranking dataset folder (a world's, or a converted one)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", default="medium", choices=[*WORLD_RECIPES, "beauty", "sports"],
                        help="which configs to train: <model>_world_<recipe>.yaml on a world, else <model>_<recipe>.yaml")
    parser.add_argument("--models", nargs="+", default=["hemix", "dlrm", "dcnv2", "din", "rankmixer", "transformer"],
                        choices=sorted(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, help="cap on optimiser steps per run (smoke checks)")
    parser.add_argument("--eval-max-rows", type=int, help="cap on validation rows per evaluation")
    parser.add_argument("--set", action="append", default=[], metavar="[MODEL:]KEY.PATH=VALUE",
                        help="an override for every run, or only for MODEL's runs (transformer:model.args.dim=64)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--collect-only", action="store_true", help="train nothing; tabulate the finished runs")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out)
    plan = [(model, seed, config_path(model, args.recipe)) for model in args.models for seed in args.seeds]
    runs = [(config, {"data": args.data, "trainer.seed": seed,
                      **({"trainer.max_steps": args.max_steps} if args.max_steps else {}),
                      **({"eval_max_rows": args.eval_max_rows} if args.eval_max_rows else {}),
                      **model_overrides(args.set, model)}, out / "runs" / f"{model}-seed{seed}")
            for model, seed, config in plan]
    rows = []
    for (model, seed, config), results in zip(plan, run_all(runs, args.jobs, args.collect_only)):
        if results is None:
            print(f"{model} seed {seed}: no result", flush=True)
            continue
        rows.append({"model": model, "seed": seed, "config": str(config), "params": results["params"],
                     "wall_time_s": results["train"]["wall_time_s"],
                     "samples_per_s": results["train"]["samples_per_s"], "test": results["test"]})
        print(f"{model} seed {seed}: click AUC {results['test']['click_auc']:.4f}", flush=True)
    summary = summarise(rows, "model", TASKS)
    table = format_table(summary, TASKS)
    command = " ".join(["python", *sys.argv])
    (out / "ranking_world.json").write_text(json.dumps(
        {"command": command, **machine_info(), "data": args.data, "recipe": args.recipe, "seeds": args.seeds,
         "max_steps": args.max_steps, "rows": rows, "summary": summary}, indent=2))
    (out / "ranking_world.md").write_text(f"```\n{command}\n```\n\n{table}\n")
    print(f"\n{table}\n\ncommand: {command}\nwritten {out / 'ranking_world.json'} and {out / 'ranking_world.md'}")


if __name__ == "__main__":
    main()
