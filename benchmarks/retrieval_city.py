"""GeoGR against its baselines and ablations on a next-POI dataset (geogr.md §10.2, §10.4), one seed: the synthetic
city (the default config) or Foursquare NYC (`--config configs/retrieval/nyc_cpu.yaml`, `--data` from `rankstack
data convert --format foursquare-nyc`; the oracle row exists only on the city).

Runs `train_retrieval` for each variant into `<out>/<variant>` (finished stages are reused, so a rerun only
evaluates what is missing), then prints the test table beside popularity, geo-nearest popular and the oracle, and
appends one JSON row per variant to `benchmarks/results/retrieval_city.jsonl`. Variants (overrides of `--config`):

    geogr        the config as is (co-visit contrastive SIDs, CPT, SFT)
    no_cpt       lm.cpt.enabled = false
    no_covisit   semantic_ids.contrastive.enabled = false (SIDs from [text; geo] without the co-visit loss)
    tiger        TIGER-style: text-only SIDs (no geo channel, no co-visit loss) through the same LM pipeline
    em           lm.em.rounds = 2 (EM refinement, then CPT + SFT again on the best round's SIDs)

    python benchmarks/retrieval_city.py --data runs/world-tiny/next_poi --out runs/bench-city-tiny
    python benchmarks/retrieval_city.py --config configs/retrieval/nyc_cpu.yaml --data data/nyc-next-poi \
        --out runs/bench-nyc --variants geogr tiger --results benchmarks/results/retrieval_nyc.jsonl

`--seed S` sets the tokenizer's and the LM's seeds, `--set key.path=value` overrides the config for every variant,
and `--jobs N` trains N variants at once, each in its own process (on a GPU they share the card).
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
VARIANTS = {
    "geogr": {},
    "no_cpt": {"lm.cpt.enabled": False},
    "no_covisit": {"semantic_ids.contrastive.enabled": False},
    "tiger": {"semantic_ids.geo.enabled": False, "semantic_ids.contrastive.enabled": False},
    "em": {"lm.em.rounds": 2},
}
KEYS = ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr")


def run_variant(variant: str, args: argparse.Namespace, command: str, git: str) -> tuple[dict, dict]:
    """Train (or finish) one variant's run and return its JSON row and the baselines scored beside it."""
    from rankstack.config import parse_override
    from rankstack.retrieval.run import load_run_config, train_retrieval
    from rankstack.retrieval.semantic_ids import SemanticIds

    overrides = {"data": args.data, "sasrec.enabled": False} | VARIANTS[variant]
    if args.seed is not None:
        overrides |= {"semantic_ids.seed": args.seed, "lm.seed": args.seed}
    overrides |= dict(parse_override(text) for text in args.set)
    config = load_run_config(args.config, overrides)
    run = Path(args.out) / variant
    start = time.perf_counter()
    metrics = train_retrieval(config, run)
    stages = {name: json.loads((run / name / "stage.json").read_text()).get("stage_wall_time_s")
              for name in ("sids", "base", "cpt", "sft", "final_cpt", "final_sft", "eval")
              if (run / name / "stage.json").is_file()}
    served = metrics.get("served", {"model": "sft", "sids": "sids"})  # runs evaluated before it was recorded
    diagnostics = SemanticIds.load(run / served["sids"]).meta.get("diagnostics", {})
    row = {"benchmark": "retrieval_city", "data": args.data, "config": args.config, "variant": variant,
           "overrides": VARIANTS[variant], "seed": args.seed, "set": args.set, "run": str(run),
           "test": metrics["geogr"]["test"], "valid": metrics["geogr"]["valid"], "served": served,
           "within_code_km": diagnostics.get("within_code_km"), "uniqueness": diagnostics.get("uniqueness"),
           "complementary_share_l1": diagnostics.get("complementary_share_l1"),
           "category_nmi": diagnostics.get("category_nmi"),
           "within_prefix_text_cos": diagnostics.get("within_prefix_text_cos"),
           "stage_wall_time_s": stages, "this_call_s": time.perf_counter() - start, "command": command,
           "date": time.strftime("%Y-%m-%d"), "git": git,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)"}
    baselines = {name: metrics[name]["test"] if "test" in metrics[name] else metrics[name]
                 for name in ("popularity", "geo_nearest_popular", "user_history", "sasrec", "oracle") if name in metrics}
    return row, baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "retrieval" / "city_tiny.yaml"))
    parser.add_argument("--data", required=True, help="<world>/next_poi")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "retrieval_city.jsonl"))
    parser.add_argument("--seed", type=int, help="semantic_ids.seed and lm.seed (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a config override for every variant")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    command = " ".join([Path(sys.executable).name, *sys.argv])
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()
    calls = [(variant, args, command, git) for variant in args.variants]
    from rankstack.ranking.sweep import map_in_processes

    done = map_in_processes(run_variant, calls, args.jobs)
    rows = [row for row, _ in done]
    baselines = done[-1][1]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print("command:", command)
    print(f"{'method':24}" + "".join(f"{k:>9}" for k in KEYS) + f"{'W':>5}")
    for row in rows:
        print(f"{row['variant']:24}" + "".join(f"{row['test'][k]:9.4f}" for k in KEYS) + f"{int(row['test']['width']):5d}")
    for name, test in baselines.items():
        print(f"{name:24}" + "".join(f"{test[k]:9.4f}" for k in KEYS) + f"{int(test['width']):5d}")


if __name__ == "__main__":
    main()
