"""SID tokenizer settings side by side, tokenizer only (no LM): each `--try` is a comma-separated list of
`key.path=value` overrides of `--config` (empty: the config as is), and each prints one row of geogr.md §3.7's
diagnostics on the codes before dedup, beside the text-only (TIGER-style) SIDs of the same config.

    python benchmarks/retrieval_sid_sweep.py --config configs/retrieval/city_small_cpu.yaml \
        --data runs/world-small/next_poi --try "" "semantic_ids.geo.weight=0.3" \
        "semantic_ids.geo.weight=0.3,semantic_ids.contrastive.enabled=false"

One JSON row per setting is appended to `--results` (default: none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from retrieval_city import VARIANTS  # this script's folder is on sys.path

from rankstack.config import parse_override
from rankstack.retrieval.data import load_retrieval_data
from rankstack.retrieval.run import load_run_config
from rankstack.retrieval.semantic_ids import build_semantic_ids

# retrieval_city.py's `tiger` variant, written as a --try string
TEXT_ONLY = ",".join(f"{key}={str(value).lower()}" for key, value in VARIANTS["tiger"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="a next-POI dataset folder")
    parser.add_argument("--try", dest="tries", nargs="+", default=[""], metavar="OVERRIDES")
    parser.add_argument("--seed", type=int, default=0, help="the tokenizer's seed")
    parser.add_argument("--results", type=Path, help="append one JSON row per setting here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_retrieval_data(args.data)
    print("command:", " ".join([Path(sys.executable).name, *(repr(a) if a == "" else a for a in sys.argv)]))
    print("\n| SIDs (overrides) | uniqueness | within-code km | complementary pairs sharing level 1 | category NMI "
          "(level 1) | within-prefix text cos ℓ = 1 / 2 / 3 | s |\n|---|---|---|---|---|---|---|")
    for spec in [TEXT_ONLY, *args.tries]:
        overrides = {"data": args.data, "semantic_ids.seed": args.seed}
        overrides |= dict(parse_override(item) for item in spec.split(",") if item)
        config = load_run_config(args.config, overrides)
        start = time.perf_counter()
        sids = build_semantic_ids(data, config.semantic_ids)
        wall = time.perf_counter() - start
        d = sids.meta["diagnostics"]
        label = "text only (TIGER-style)" if spec == TEXT_ONLY else (spec or "the config")
        cos = " / ".join(f"{c:.2f}" for c in d["within_prefix_text_cos"])
        print(f"| {label} | {d['uniqueness']:.3f} | {d['within_code_km']:.2f} | {d['complementary_share_l1']:.2f} "
              f"| {d['category_nmi']:.2f} | {cos} | {wall:.0f} |", flush=True)
        if args.results:
            with open(args.results, "a") as out:
                out.write(json.dumps({"benchmark": "retrieval_sid_sweep", "config": args.config, "data": args.data,
                                      "seed": args.seed, "overrides": spec, "diagnostics": d, "wall_s": wall,
                                      "pair_recall": sids.meta.get("contrastive", {}).get("best"),
                                      "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
