"""hemix.md §6's diagnostics of finished HeMix runs, side by side (ranking issue, "Ablations").

For each run folder, loads the best weights and computes `HeMix.diagnostics` on the split's first batch
(`rankstack.ranking.evaluate.model_diagnostics`): attention entropy per query kind and branch beside the entropy of
equal weights on every real event, attention mass on the real-time events, padding mass, and each block's
‖Mix‖/‖X‖ and ‖FFN‖/‖U‖. Runs given the same `--names` label (seeds of one arm) are averaged: mean ± std.

    python benchmarks/ranking_diagnostics.py --runs runs/a-seed0 runs/a-seed1 runs/b-seed0 --names a a b \\
        [--split test] [--batch-size 4096] [--out benchmarks/results/ranking_diagnostics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.ranking.bench import machine_info, run_labels  # noqa: E402


def summarize(reports: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per label and key: (mean, std, runs) over the label's runs that report the key."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for label, runs in reports.items():
        keys = sorted({k for run in runs for k in run})
        out[label] = {}
        for key in keys:
            values = [run[key] for run in runs if key in run]
            out[label][key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                               len(values))
    return out


def table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """A markdown table: one row per diagnostic (per-slot entropies left out), one column per label."""
    labels = list(summary)
    keys = sorted({k for entries in summary.values() for k in entries if "_slot" not in k})
    lines = ["| diagnostic | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key in keys:
        cells = []
        for label in labels:
            entry = summary[label].get(key)
            cells.append("—" if entry is None else f"{entry[0]:.2f}" + (f" ± {entry[1]:.2f}" if entry[2] > 1 else ""))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    runs = [max((e[2] for e in summary[label].values()), default=0) for label in labels]
    lines.append("| runs | " + " | ".join(str(n) for n in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="finished HeMix run folders")
    parser.add_argument("--names", nargs="+", help="a label per run; runs with one label are averaged "
                        "(default: the folder names)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows of the split's first batch")
    parser.add_argument("--out", help="write every run's diagnostics and the summary as JSON here")
    args = parser.parse_args()
    names = run_labels(args.runs, args.names)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from rankstack.ranking.evaluate import model_diagnostics
    from rankstack.ranking.run import load_run

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    reports: dict[str, list[dict[str, float]]] = {}
    runs: dict[str, dict[str, float]] = {}
    for name, run in zip(names, args.runs):
        _, dataset, model = load_run(run)
        report = model_diagnostics(model, dataset, args.split, args.batch_size)
        if not report:
            sys.exit(f"{run}: its model ({type(model).__name__}) has no diagnostics; they are HeMix's (hemix.md §6)")
        reports.setdefault(name, []).append(report)
        runs[str(run)] = report
    summary = summarize(reports)
    command = " ".join(["python", *sys.argv])
    print(f"{table(summary)}\n\ncommand: {command}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, **machine_info(), "split": args.split,
                                              "batch_size": args.batch_size, "runs": runs,
                                              "summary": summary}, indent=2))
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
