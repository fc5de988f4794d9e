"""HeMix's user-side cache in the served ranker: latency with and without it, and the largest score difference.

    python benchmarks/user_cache.py --run runs/hemix-small --world runs/demo/world --requests 30 --candidates 100

For each of `--requests` random users (noon, at home) the served ranker scores the same `--candidates` POIs
(the feed's pre-ranking survivors) through `HeMix.encode_user` + `score` and through the reference `forward`,
alternating the order. Reports median milliseconds per request of each path (features included; they are built
once per call either way) and the largest absolute difference of the probabilities. Writes
benchmarks/results/user_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--world")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "user_cache.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rankstack.serving.cascade import Cascade, CascadeConfig, Context, configure_threads

    configure_threads(CascadeConfig())
    cascade = Cascade.load(args.run, args.world, CascadeConfig())
    ranker = cascade.ranker
    if not ranker.use_user_cache:
        raise SystemExit(f"{args.run} serves `{ranker.name}`, which has no user-side cache (HeMix has one)")
    rng = np.random.default_rng(args.seed)
    timings: dict[bool, list[float]] = {True: [], False: []}
    largest = 0.0
    for i, user in enumerate(rng.integers(1, cascade.tables.n_users + 1, size=args.requests)):
        request = cascade.resolve(int(user), Context(hour=12))
        pois = cascade.retriever.retrieve(request, None, args.candidates).pois
        out = {}
        for cached in ((True, False) if i % 2 else (False, True)):
            start = time.perf_counter()
            out[cached] = ranker.probabilities(request, pois, use_user_cache=cached)
            timings[cached].append(1000 * (time.perf_counter() - start))
        largest = max(largest, float((out[True] - out[False]).abs().max()))
    row = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "model": ranker.name, "requests": args.requests, "candidates": args.candidates,
           "cached_ms_median": round(float(np.median(timings[True])), 1),
           "reference_ms_median": round(float(np.median(timings[False])), 1),
           "max_abs_difference": largest}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
