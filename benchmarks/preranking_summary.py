"""Summarise pre-ranking benchmark results over seeds (autofas.md §13.3, §13.4, §13.6).

Reads `benchmarks/results/preranking_<name>.json` files written by `benchmarks/preranking.py` (one per seed; the
first must hold the baselines) and prints:
- AutoFAS per budget: measured latency, × budget, AUC and Overlap@10 as mean ± std over seeds, fields, widths and
  search time;
- the frontier check of §13.4 on the first seed's baselines: for every baseline point inside AutoFAS's latency
  range, how far its AUC and Overlap@10 lie above AutoFAS's frontier (seed-mean points, piecewise linear in
  log-latency); the spec passes a point above by at most one seed std of AutoFAS's AUC;
- on a world, the noise fields and the costly informative crosses each student kept, and how many fields failed
  the derivation's field test.

    python benchmarks/preranking_summary.py medium medium_seed1 medium_seed2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("auc", "overlap@10")


def load(name: str) -> dict:
    path = RESULTS / f"preranking_{name}.json"
    if not path.is_file():
        sys.exit(f"{path} not found; run benchmarks/preranking.py with --name {name} first.")
    return json.loads(path.read_text())


def autofas_by_budget(results: list[dict]) -> dict[float, list[dict]]:
    """AutoFAS rows grouped by budget rank (the i-th smallest budget of each seed; a sweep's budgets are factors
    of each seed's own T_ref), keyed by the first seed's budget."""
    per_seed = [sorted((r for r in result["rows"] if r["model"] == "autofas"), key=lambda r: r["budget_ms"])
                for result in results]
    if len({len(rows) for rows in per_seed}) != 1:
        sys.exit("the results have different numbers of AutoFAS budgets; summarise matching runs only.")
    return {round(rows[0]["budget_ms"], 3): list(rows) for rows in zip(*per_seed)}


def frontier(points: list[tuple[float, float]], latency: float) -> float:
    """The piecewise-linear (in log-latency) frontier of `points` (latency, value) at `latency`."""
    xs = np.log([p[0] for p in points])
    order = np.argsort(xs)
    ys = np.maximum.accumulate(np.asarray([p[1] for p in points])[order])
    return float(np.interp(np.log(latency), xs[order], ys))


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def summarize(names: list[str], costly: list[str] | None = None) -> str:
    results = [load(n) for n in names]
    budgets = autofas_by_budget(results)
    lines = [f"runs: {', '.join(names)}; a cell lists one value per run, or mean ± std over runs", "",
             "| budget (ms, first run) | measured p50 (ms) | × budget | AUC | Overlap@10 | fields | widths | search (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for budget, rows in budgets.items():
        lat = [r["latency_p50_ms"] for r in rows]
        ratio = [r["latency_p50_ms"] / r["budget_ms"] for r in rows]
        lines.append(
            f"| {budget:.2f} | {' / '.join(f'{x:.2f}' for x in lat)} | "
            f"{' / '.join(f'{x:.2f}' for x in ratio)} | {mean_std([r['auc'] for r in rows])} | "
            f"{mean_std([r['overlap@10'] for r in rows])} | {' / '.join(str(r['n_fields']) for r in rows)} | "
            f"{' / '.join(str(r['widths']) for r in rows)} | {' / '.join(str(round(r['search_s'])) for r in rows)} |")
    auc_std = float(np.mean([np.std([r["auc"] for r in rows], ddof=1) for rows in budgets.values()])) \
        if len(results) > 1 else 0.0
    points = {m: [(float(np.mean([r["latency_p50_ms"] for r in rows])), float(np.mean([r[m] for r in rows])))
                  for rows in budgets.values()] for m in METRICS}
    low, high = min(p[0] for p in points["auc"]), max(p[0] for p in points["auc"])
    lines += ["", f"Frontier check (§13.4): baselines of {names[0]} inside AutoFAS's latency range "
              f"{low:.2f}–{high:.2f} ms; mean seed std of AutoFAS AUC = {auc_std:.4f}", "",
              "| baseline | latency p50 (ms) | AUC | AutoFAS frontier AUC | above by | Overlap@10 | "
              "AutoFAS frontier Overlap@10 | above by |", "|---|---|---|---|---|---|---|---|"]
    for row in sorted(results[0]["rows"], key=lambda r: r["latency_p50_ms"]):
        lat = row["latency_p50_ms"]
        if row["model"] == "autofas" or not low <= lat <= high:
            continue
        cells = []
        for m in METRICS:
            f = frontier(points[m], lat)
            cells += [f"{row[m]:.4f}", f"{f:.4f}", f"{row[m] - f:+.4f}"]
        lines.append(f"| {row['model']} | {lat:.2f} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
                     f"{cells[4]} | {cells[5]} |")
    kept = [(budget, r["selection"]) for budget, rows in budgets.items() for r in rows]
    if "noise_kept" in kept[0][1]:
        lines += ["", "| budget (ms) | noise fields kept | costly informative crosses kept | failed the field test |",
                  "|---|---|---|---|"]
        for budget, sel in kept:
            names_kept = {r["field"] for r in sel["fields"] if r["kept"]}
            costly_kept = ([n for n in costly if n in names_kept] if costly is not None
                           else sel.get("costly_informative_kept", []))
            lines.append(f"| {budget:.2f} | {', '.join(sel['noise_kept']) or '–'} | "
                         f"{', '.join(costly_kept) or '–'} | {len(sel.get('failed_test', []))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="result names (preranking_<name>.json), the first with baselines")
    parser.add_argument("--world-truth", default="", help="the view's truth/fields.json, for results written "
                        "before selection.json listed the costly informative crosses kept")
    args = parser.parse_args()
    costly = (json.loads(Path(args.world_truth).read_text())["costly_informative"] if args.world_truth else None)
    print(" ".join(["python", "benchmarks/preranking_summary.py", *sys.argv[1:]]))
    print(summarize(args.names, costly))


if __name__ == "__main__":
    main()
