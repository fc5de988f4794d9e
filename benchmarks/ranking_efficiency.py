"""Ranking efficiency benchmark (hemix.md §12.5, §12.7): what `rankstack bench ranking` measures, written to
`benchmarks/results/ranking_efficiency.json` with the command and the machine.

1. The HeteroMixer layer vs a self-attention layer at equal tokens and width (N = 12, d = 256, batch 1024):
   forward+backward medians of interleaved repeats, their ratio, beside the §4 cost model and the MACs that
   `torch.utils.flop_counter` counts.
2. HeMix serving throughput (candidates/s) for 500 candidates per request without and with the user-side cache,
   and the largest difference between the cached and the uncached scores.

    python benchmarks/ranking_efficiency.py [--repeats 7] [--longterm-len 100 1000] [--threads 1]
        [--serve-with target_match]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--longterm-len", type=int, nargs="+", default=[100])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serve-with", nargs="+", default=[], metavar="SWITCH",
                        help="also serve each stream length with these HeMix switches on (their serving cost): "
                        "target_match, query_match, recency, query_cross=N")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ranking_efficiency.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from rankstack.ranking.bench import bench_ranking, format_bench_ranking

    result = bench_ranking(repeats=args.repeats, candidates=args.candidates, longterm_lens=tuple(args.longterm_len),
                           threads=args.threads, options=tuple(args.serve_with))
    result["command"] = " ".join(["python", *sys.argv])
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(format_bench_ranking(result))
    print(f"\ncommand: {result['command']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
