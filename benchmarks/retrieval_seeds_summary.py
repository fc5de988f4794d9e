"""Mean ± std over seeds of `retrieval_city.py` rows (GeoGR, its ablations, TIGER-style SIDs) beside the baselines
of the same dataset: the deterministic ones (popularity, geo-nearest popular, user history, the oracle on the city)
from a run's `eval/metrics.json`, and the SASRec-style baseline from `rankstack bench retrieval` folders, one per
seed, or a JSON file that collects them. Prints a Markdown table of the test split with the command.

    python benchmarks/retrieval_seeds_summary.py --results benchmarks/results/retrieval_nyc_seeds.jsonl \
        --sasrec benchmarks/results/retrieval_nyc_sasrec_seeds.json \
        --baselines benchmarks/results/retrieval_nyc_seeds_baselines.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from rankstack.ranking.sweep import mean_std

KEYS = ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr")
LABELS = {"geogr": "GeoGR (co-visit SIDs, CPT, SFT)", "no_cpt": "GeoGR − CPT",
          "no_covisit": "GeoGR − co-visit loss", "tiger": "TIGER-style (text-only SIDs, same LM)",
          "em": "GeoGR + EM refinement", "sasrec": "SASRec-style", "user_history": "user history (visit counts)",
          "geo_nearest_popular": "geo-nearest popular", "popularity": "popularity",
          "oracle": "oracle (expected, W = 50)"}


def spread(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {std:.4f}"


def sasrec_runs(path: Path) -> list[tuple[str, dict]]:
    """(seed, test metrics) of a `rankstack bench retrieval` folder, or of every entry of a JSON file that
    collects such runs (`{"seed0": {"test": ...}, ...}`, as in benchmarks/results/)."""
    if path.is_dir():
        seed = yaml.safe_load((path / "config.yaml").read_text())["sasrec"]["seed"]
        return [(str(seed), json.loads((path / "results.json").read_text())["sasrec"]["test"])]
    return [(key.removeprefix("seed"), run["test"]) for key, run in json.loads(path.read_text()).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="retrieval_city.py's JSON rows")
    parser.add_argument("--config", help="keep only the rows of this config")
    parser.add_argument("--sasrec", nargs="*", default=[], type=Path,
                        help="`rankstack bench retrieval` folders or JSON files of such runs")
    parser.add_argument("--results-extra", type=Path, nargs="*", default=[],
                        help="more `retrieval_city.py` JSONL files; rows run with `--set` get their own lines")
    parser.add_argument("--baselines", type=Path, help="an `eval/metrics.json` with the deterministic baselines "
                        "(default: the first row's run folder)")
    args = parser.parse_args()

    rows = [json.loads(line) for path in (args.results, *args.results_extra)
            for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if args.config is None or r["config"] == args.config]
    if not rows:
        sys.exit(f"{args.results}: no rows{' of ' + args.config if args.config else ''}; run retrieval_city.py first.")
    by_variant: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:  # a variant run with `--set` overrides is another row of the table
        by_variant.setdefault((row["variant"], *row.get("set", [])), []).append(row)
    table: list[tuple[str, list[dict], str]] = []
    for (variant, *sets), group in by_variant.items():
        seeds = sorted("config's" if r["seed"] is None else str(r["seed"]) for r in group)
        label = LABELS.get(variant, variant) + (f" (`{'`, `'.join(sets)}`)" if sets else "")
        table.append((label, [r["test"] for r in group], ", ".join(seeds)))
    sasrec = [run for path in args.sasrec for run in sasrec_runs(path)]
    if sasrec:
        table.append((LABELS["sasrec"], [test for _, test in sasrec], ", ".join(sorted(seed for seed, _ in sasrec))))
    metrics = json.loads((args.baselines or Path(rows[0]["run"]) / "eval" / "metrics.json").read_text())
    for name in ("user_history", "geo_nearest_popular", "popularity", "oracle"):
        if name in metrics:
            table.append((LABELS[name], [metrics[name].get("test", metrics[name])], "deterministic"))

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"test split, {int(rows[0]['test']['count'])} requests; mean ± std over the seeds listed\n")
    print("| method | seeds | " + " | ".join(k.replace("acc", "Acc").replace("ndcg", "NDCG").replace("mrr", "MRR")
                                           for k in KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for label, tests, seeds in table:
        print(f"| {label} | {seeds} | " + " | ".join(spread([t[k] for t in tests]) for k in KEYS) + " |")


if __name__ == "__main__":
    main()
