"""Summarise issue 7's RL arms over seeds (relevance.md §10.2): the JSON files `benchmarks/relevance_rl.py` writes.

Prints, as mean ± sample std over the seeds, the start (each seed's `before`, the same for every arm of a seed) and
each arm's `after` metrics, the per-seed hard-type macro-F1, the paired differences to GRPO, the step judge's
held-out agreement against its majority baseline, and with `--train-logs` the means of guided replay's counters
(`replay/*` in an AGRL run's `train_log.jsonl`) over the steps that log them.

    python benchmarks/relevance_rl_summary.py benchmarks/results/relevance_rl_100m_small_seed?_h200_hint0.5_*.json \
        --train-logs benchmarks/results/relevance_rl_100m_small_seed?_h200_hint0.5_agrl_train_log.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from relevance_ladder_summary import mean_std  # this script's folder is on sys.path

METRICS = ("macro_f1", "macro_f1/hard", "step_accuracy/Verdict", "rule_adherence", "hallucination_rate",
           "format_failure_rate")
REPLAY = ("replay/rate", "replay/guided_format_failures", "replay/guided_success", "replay/hint_leaks",
          "replay/swapped_rows", "replay/zero_std_before", "replay/zero_std_after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="relevance_rl.py JSON files (files without `rows` are skipped)")
    parser.add_argument("--train-logs", nargs="*", default=[], help="AGRL runs' train_log.jsonl, for replay's counters")
    args = parser.parse_args()
    rows = {}
    for path in args.results:
        for row in json.loads(Path(path).read_text()).get("rows", []):
            rows[row["arm"], row["seed"]] = row
    seeds = sorted({seed for _, seed in rows})
    arms = [arm for arm in ("grpo", "srpo", "agrl", "srpo_agrl") if all((arm, s) in rows for s in seeds)]
    first = {s: rows[next(a for a, seed in rows if seed == s), s] for s in seeds}
    print(f"seeds {seeds}; arms with every seed: {arms}")
    print("| | " + " | ".join(METRICS) + " | per seed (hard) |")
    print("|---|" + "---|" * (len(METRICS) + 1))
    table = [("start", {s: first[s]["before"] for s in seeds})] + [(a, {s: rows[a, s]["after"] for s in seeds})
                                                                   for a in arms]
    for name, by_seed in table:
        cells = [mean_std([by_seed[s][m] for s in seeds]) for m in METRICS]
        hard = " / ".join(f"{by_seed[s]['macro_f1/hard']:.3f}" for s in seeds)
        print(f"| {name} | " + " | ".join(cells) + f" | {hard} |")
    if "grpo" in arms:
        for arm in arms[1:]:
            for metric in ("macro_f1/hard", "macro_f1"):
                diffs = [rows[arm, s]["after"][metric] - rows["grpo", s]["after"][metric] for s in seeds]
                print(f"{arm} − grpo, {metric}: " + " / ".join(f"{d:+.3f}" for d in diffs) + f" (mean {mean_std(diffs)})")
    for arm in arms:
        for s in seeds:
            held = rows[arm, s].get("step_rm", {}).get("heldout")
            if held:
                print(f"step judge {arm} seed {s}: agreement {held['agreement']:.3f}, majority "
                      f"{held['majority_baseline']:.3f}, unsure {held['unsure_rate']:.3f}, "
                      f"where sure {held['agreement_when_sure']:.3f}"
                      + (f" (majority there {held['majority_baseline_when_sure']:.3f}), AUC {held['auc']:.3f}"
                         if held.get("auc") is not None else ""))
    for path in args.train_logs:
        steps = [row for row in map(json.loads, Path(path).read_text().splitlines()) if "replay/rate" in row]
        means = ", ".join(f"{key.split('/')[1]} {np.mean([row[key] for row in steps if key in row]):.3f}"
                          for key in REPLAY)  # a counter is logged only on the steps it applies to
        swapped = sum(row["replay/swapped_rows"] for row in steps)
        print(f"{path}: {len(steps)} steps; means: {means}; swapped in all {swapped:.0f}")


if __name__ == "__main__":
    main()
