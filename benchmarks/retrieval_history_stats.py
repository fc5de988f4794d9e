"""How long the histories of a next-POI dataset are and how often the target is a POI the user visited recently
(issue 5, Foursquare NYC: is a longer history in GeoGR's prompt worth its SFT time? geogr.md §4.3).

For each split: the number of requests, the share with at least k prior check-ins in their history array, the
share whose target is among the last k history POIs (an upper bound on the Acc@W of any method that recommends only
from the last k history POIs; GeoGR's prompt holds the last `lm.prompt.max_history` SIDs), and the share whose
target is among the user's k most visited POIs in the whole history array (what `lm.prompt.profile_pois: k` writes
in the `[user]` profile). Writes one JSON row to `--results` (appends) and prints it with the command.

    python benchmarks/retrieval_history_stats.py --data data/nyc-next-poi \
        --results benchmarks/results/retrieval_nyc_history_stats.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rankstack.retrieval.lm import most_visited

ROOT = Path(__file__).resolve().parent.parent
KS = (1, 5, 10, 20, 30, 50)


def history_stats(history: np.ndarray, target: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, object]:
    """`history`: [N, H] catalogue indices, left-aligned, -1 padded, oldest first; `target`: [N]."""
    lengths = (history >= 0).sum(axis=1)
    last = [h[h >= 0] for h in history]
    by_visits = [most_visited(h.tolist(), len(h)) for h in last]  # every visited POI, most visits first
    return {"requests": int(len(target)),
            "history_width": int(history.shape[1]),
            "median_length": float(np.median(lengths)) if len(lengths) else 0.0,
            "share_length_at_least": {k: float((lengths >= k).mean()) for k in ks},
            "share_target_in_last": {k: float(np.mean([int(t) in set(h[-k:].tolist()) for h, t in zip(last, target)]))
                                     for k in ks},
            "share_target_in_most_visited": {k: float(np.mean([int(t) in ranked[:k]
                                                               for ranked, t in zip(by_visits, target)])) for k in ks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a next-POI dataset folder")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "retrieval_history_stats.jsonl"))
    args = parser.parse_args()
    from rankstack.retrieval.data import load_retrieval_data

    command = " ".join([Path(sys.executable).name, *sys.argv])
    data = load_retrieval_data(args.data)
    row = {"benchmark": "retrieval_history_stats", "data": args.data, "command": command,
           "date": time.strftime("%Y-%m-%d")}
    row |= {split: history_stats(data.splits[split].history, data.splits[split].target)
            for split in ("train", "valid", "test")}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print("command:", command)
    for split in ("train", "valid", "test"):
        stats = row[split]
        print(f"{split:6} n={stats['requests']:6d} median history {stats['median_length']:.0f}  "
              + "  ".join(f">={k}: {v:.3f}" for k, v in stats["share_length_at_least"].items()))
        print("       target in last k: " + "  ".join(f"k={k}: {v:.4f}" for k, v in stats["share_target_in_last"].items()))
        print("       target in k most visited: "
              + "  ".join(f"k={k}: {v:.4f}" for k, v in stats["share_target_in_most_visited"].items()))


if __name__ == "__main__":
    main()
