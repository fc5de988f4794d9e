"""Foundation benchmarks (`make bench`): loader throughput on the medium world, on one core.

Generates the `medium` world once under `runs/bench/world-medium` (reused afterwards), then measures
`BatchLoader` samples/s with a 100-event long-term and a 20-event real-time sequence: the median of several
shuffled repeats. Writes `benchmarks/results/foundation.json` and prints the command that produced it.
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
    parser.add_argument("--max-batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4096)
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
    out = ROOT / "benchmarks" / "results" / "foundation.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nloader: {result['samples_per_s_median']:,.0f} samples/s (median of {args.repeats}, one core)")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
