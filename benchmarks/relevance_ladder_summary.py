"""Summarise the TaoSR1 ladder over seeds (relevance.md §10.1, §10.3).

Reads the JSON files that `benchmarks/relevance_cpu.py` writes (one seed's runs may be split over several files:
the label-first chain in one, the SFT variants in another) and prints, as mean ± sample std over seeds:
- per run (label-only, think-first, label-first SFT, + DPO, + GRPO): macro-F1 of CumPT, of the first-token argmax
  and of the full greedy decode, accuracy, F1 per tier, macro-F1 on the hard query types, format-failure and
  discriminative-hallucination rates, step accuracy of the Verdict section, rule adherence, and the single-pass
  vs decode throughput ratio;
- the per-seed change of each metric along the chain SFT → DPO → GRPO (every seed's DPO and GRPO continue its
  own SFT run, so these are paired differences);
- macro-F1 per query type (decode; CumPT does not exist for think-first).
`--cross-encoder` adds the MiniLM cross-encoder's runs (`bench relevance --cross-encoder` folders: their
`results.json` test metrics, the seed from their `config.yaml`) as a row of the table and of the per-type table.

    python benchmarks/relevance_ladder_summary.py benchmarks/results/relevance_ladder_100m_small_seed*_h200*.json
    python benchmarks/relevance_ladder_summary.py benchmarks/results/relevance_ladder_sampled_*.json \
        --cross-encoder runs/minilm-small-seed0 runs/minilm-small-seed1 runs/minilm-small-seed2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

RUNS = ("cross_encoder", "sft_label_only", "sft_think_first", "sft_label_first", "dpo", "grpo")
NAMES = {"cross_encoder": "MiniLM cross-encoder", "sft_label_only": "label-only SFT",
         "sft_think_first": "think-first SFT", "sft_label_first": "label-first SFT", "dpo": "+ DPO", "grpo": "+ GRPO",
         "majority": "majority tier"}
COLUMNS = (("cumpt", "macro_f1", "macro-F1 CumPT"), ("argmax", "macro_f1", "macro-F1 argmax"),
           ("decode", "macro_f1", "macro-F1 decode"), ("decode", "accuracy", "accuracy"),
           ("decode", "f1_1", "F1 tier 1"), ("decode", "f1_2", "F1 2"), ("decode", "f1_3", "F1 3"),
           ("decode", "f1_4", "F1 4"), ("decode", "macro_f1/hard", "macro-F1 hard types"),
           ("decode", "format_failure_rate", "format failures"), ("decode", "hallucination_rate", "hallucination"),
           ("decode", "step_accuracy/Verdict", "step acc. Verdict"), ("decode", "rule_adherence", "rule adherence"),
           ("", "speedup", "single pass vs decode"))
CHAIN = (("sft_label_first", "dpo"), ("dpo", "grpo"), ("sft_label_first", "grpo"))


def load(paths: list[str]) -> dict[int, dict[str, dict]]:
    """{seed: {run name: bench report}}, merged over the files of each seed."""
    seeds: dict[int, dict[str, dict]] = defaultdict(dict)
    for path in paths:
        result = json.loads(Path(path).read_text())
        for name, report in result["runs"].items():
            if name in seeds[result["seed"]]:
                raise SystemExit(f"{path}: seed {result['seed']} has `{name}` in two files; pass one of them.")
            seeds[result["seed"]][name] = report
    return dict(sorted(seeds.items()))


def load_cross_encoder(folders: list[str], seeds: dict[int, dict[str, dict]]) -> None:
    """Add each cross-encoder run's test metrics to its seed as the run `cross_encoder` (its `decode` section)."""
    for folder in folders:
        seed = int(yaml.safe_load((Path(folder) / "config.yaml").read_text())["seed"])
        if "cross_encoder" in seeds.setdefault(seed, {}):
            raise SystemExit(f"{folder}: seed {seed} has two cross-encoder runs; pass one of them.")
        seeds[seed]["cross_encoder"] = {"decode": json.loads((Path(folder) / "results.json").read_text())["test"]}


def value(report: dict, section: str, key: str) -> float:
    found = (report.get(section) or {}).get(key) if section else report.get(key)
    return float("nan") if found is None else float(found)


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def table(seeds: dict[int, dict[str, dict]]) -> list[str]:
    lines = ["| run | seeds | " + " | ".join(c[2] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    first = next(iter(seeds.values()))
    if "sft_label_first" in first:  # every run's bench reports the majority tier on the same pairs
        majority = [s["sft_label_first"]["majority_baseline"] for s in seeds.values() if "sft_label_first" in s]
        cells = [mean_std([m[key] for m in majority]) if section in ("cumpt", "argmax", "decode") and key in majority[0]
                 else "n/a" for section, key, _ in COLUMNS]
        lines.append(f"| {NAMES['majority']} | {len(majority)} | " + " | ".join(cells) + " |")
    for run in RUNS:
        reports = [s[run] for s in seeds.values() if run in s]
        if reports:
            cells = [mean_std([value(r, section, key) for r in reports]) for section, key, _ in COLUMNS]
            lines.append(f"| {NAMES[run]} | {len(reports)} | " + " | ".join(cells) + " |")
    return lines


def chain(seeds: dict[int, dict[str, dict]]) -> list[str]:
    keys = (("cumpt", "macro_f1", "CumPT"), ("decode", "macro_f1", "decode"), ("decode", "macro_f1/hard", "hard"),
            ("decode", "hallucination_rate", "hallucination"))
    lines = ["| step | " + " | ".join(f"Δ {k[2]} per seed" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for before, after in CHAIN:
        pairs = [(s[before], s[after]) for s in seeds.values() if before in s and after in s]
        cells = []
        for section, key, _ in keys:
            deltas = [value(a, section, key) - value(b, section, key) for b, a in pairs]
            cells.append(" / ".join(f"{d:+.3f}" for d in deltas) + f" (mean {np.mean(deltas):+.3f})")
        lines.append(f"| {NAMES[before]} → {NAMES[after].lstrip('+ ')} | " + " | ".join(cells) + " |")
    return lines


def per_type(seeds: dict[int, dict[str, dict]]) -> list[str]:
    types = sorted({key.split("/", 1)[1] for s in seeds.values() for r in s.values()
                    for key in (r.get("decode") or {}) if key.startswith("macro_f1/") and key != "macro_f1/hard"})
    lines = ["| run (decode macro-F1) | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for run in RUNS:
        reports = [s[run] for s in seeds.values() if run in s]
        if reports:
            cells = [mean_std([value(r, "decode", f"macro_f1/{t}") for r in reports]) for t in types]
            lines.append(f"| {NAMES[run]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="relevance_cpu.py result JSONs (any number per seed)")
    parser.add_argument("--cross-encoder", nargs="+", default=[], metavar="RUN",
                        help="bench relevance --cross-encoder run folders (results.json, config.yaml)")
    args = parser.parse_args()
    seeds = load(args.results)
    load_cross_encoder(args.cross_encoder, seeds)
    command = ["python", "benchmarks/relevance_ladder_summary.py", *args.results]
    if args.cross_encoder:
        command += ["--cross-encoder", *args.cross_encoder]
    print(" ".join(command))
    print(f"\nseeds: {list(seeds)}; mean ± sample std over seeds\n")
    print("\n".join(table(seeds)))
    print("\nPaired changes along the chain (seed " + " / seed ".join(map(str, seeds)) + ")\n")
    print("\n".join(chain(seeds)))
    print("\nPer query type\n")
    print("\n".join(per_type(seeds)))


if __name__ == "__main__":
    main()
