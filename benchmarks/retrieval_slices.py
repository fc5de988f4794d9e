"""Where GeoGR wins and loses on the synthetic city: test Acc@K of finished retrieval runs, split by how the
next visit relates to the user's last one (world.md §2):

    chain     the next POI's category follows the last POI's in a complementary chain (hotel -> parking,
              gym -> juice bar, ...): mechanism 5, the pairs geo co-visit SIDs are built to keep together
    same      the next POI has the last POI's category
    other     everything else (intent switches, long-term interest)

Each slice is printed with its share of the test requests, the geo-nearest-popular baseline (the run's tuned
bandwidth) and the oracle's expected Acc@K from the true next-visit distribution. Decoding runs again (the
evaluation stage keeps only the metrics), on the served model and SIDs of each run.

    python benchmarks/retrieval_slices.py --data runs/world-small/next_poi \
        --runs runs/bench-city-small/geogr runs/bench-city-small/tiger --out slices.json

`--summarize A.json B.json ...` prints the mean ± std over several such files (one per seed) as a Markdown table;
`--keys` picks its metrics (default Acc@1 and Acc@10; `top1_km` is the median distance from the request to the
first POI of each list, and for the "next POI" row to the POI actually visited; `top10_category` is the share of
each list's first ten POIs that have the visited POI's category).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rankstack.retrieval.baselines import geo_popular_topk
from rankstack.retrieval.data import haversine_km, load_retrieval_data
from rankstack.retrieval.evaluate import metrics_from_ranks, oracle_probabilities, ranks_in_lists
from rankstack.retrieval.lm import generate_candidates, load_lm
from rankstack.retrieval.run import load_run_config, prompt_writer
from rankstack.retrieval.semantic_ids import SemanticIds
from rankstack.retrieval.trie import sid_level_offsets
from rankstack.world.city import CHAINS

SLICES = ("chain", "same", "other")


def slice_of_requests(categories: np.ndarray, last: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each request's slice name: `chain`, `same` or `other` (a request without history or target is `other`)."""
    out = np.full(len(target), "other", dtype=object)
    known = (last >= 0) & (target >= 0)
    last_cat = np.where(known, categories[np.maximum(last, 0)], None)
    next_cat = np.where(known, categories[np.maximum(target, 0)], None)
    for i in np.flatnonzero(known):
        if next_cat[i] == last_cat[i]:
            out[i] = "same"
        elif next_cat[i] in CHAINS.get(last_cat[i], {}):
            out[i] = "chain"
    return out


def slice_metrics(lists: np.ndarray, targets: np.ndarray, slices: np.ndarray, km: np.ndarray | None = None,
                  categories: np.ndarray | None = None, width: int = 20) -> dict[str, dict[str, float]]:
    """`metrics_from_ranks` of top-W `lists` per slice and over all requests, plus `top1_km` (the median distance
    from the request to the first POI of its list) when `km` gives that distance per request, and
    `top10_category` (the mean share of the first ten POIs that have the next POI's category) with the POIs'
    `categories`; an empty slice gets only its count (0)."""
    ranks = ranks_in_lists(lists, targets)
    same = None
    if categories is not None:
        top = lists[:, :10]
        same = ((categories[np.maximum(top, 0)] == categories[np.maximum(targets, 0)][:, None]) & (top >= 0)).mean(1)
        same = np.where(targets >= 0, same, np.nan)  # a target outside the catalogue has no category
    out = {}
    for name, mask in [(s, slices == s) for s in SLICES] + [("all", np.ones(len(slices), dtype=bool))]:
        out[name] = metrics_from_ranks(ranks[mask], width) if mask.any() else {"count": 0.0}
        if km is not None and mask.any():
            out[name]["top1_km"] = float(np.median(km[mask]))
        if same is not None and mask.any():
            out[name]["top10_category"] = float(np.nanmean(same[mask]))
    return out


class ServedRun(NamedTuple):
    """What a finished run serves: its config, SIDs, LM and prompt writer (the model and SIDs its evaluation
    stage names under `served`)."""

    config: Any
    sids: SemanticIds
    model: Any
    tokenizer: Any
    writer: Any

    @classmethod
    def load(cls, run: Path, data) -> ServedRun:
        config = load_run_config(run / "config.yaml")
        served = json.loads((run / "eval" / "metrics.json").read_text()).get("served", {"model": "sft", "sids": "sids"})
        sids = SemanticIds.load(run / served["sids"])
        model, tokenizer = load_lm(run / served["model"], "cpu")
        return cls(config, sids, model, tokenizer, prompt_writer(data, sids, config.lm))


def run_lists(run: Path, data, split: str = "test", served: ServedRun | None = None) -> np.ndarray:
    """The run's served top-W POI lists [n, W] for `split`, over the requests its evaluation scored (the first
    `lm.decode.max_eval_samples`, or all); `served` is the run's `ServedRun` when the caller has it loaded."""
    served = served or ServedRun.load(run, data)
    config, sids, model, tokenizer, writer = served
    samples = data.splits[split]
    n = len(samples) if config.lm.decode.max_eval_samples is None else min(len(samples), config.lm.decode.max_eval_samples)
    trie = sids.trie(sid_level_offsets(tokenizer, sids.level_sizes))
    candidates = generate_candidates(model, tokenizer, writer.prompts(samples)[:n], trie, config.lm.decode.num_beams,
                                     config.lm.decode.batch_size, histories=[row[row >= 0] for row in samples.history[:n]])
    return candidates.items


def summarize(paths: list[Path], keys: tuple[str, ...] = ("acc@1", "acc@10")) -> str:
    """A Markdown table of each row's per-slice metrics, mean ± std over the files (rows present in all of them)."""
    tables = [json.loads(path.read_text()) for path in paths]
    names = [name for name in tables[0]["rows"] if all(name in t["rows"] for t in tables)]
    shares = ", ".join(f"{s} {np.mean([t['shares'][s] for t in tables]):.3f}" for s in SLICES)
    columns = [(s, k) for s in (*SLICES, "all") for k in keys]
    lines = [f"slice shares: {shares}; {len(tables)} files", "",
             "| method | " + " | ".join(f"{s} {k}" for s, k in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        cells = []
        for s, k in columns:
            values = np.array([t["rows"][name][s].get(k, np.nan) for t in tables], dtype=np.float64)
            spread = f" ± {values.std(ddof=1):.4f}" if np.ptp(values) > 1e-12 else ""
            cells.append(f"{values.mean():.4f}{spread}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="JSON", help="tabulate earlier --out files")
    parser.add_argument("--keys", nargs="+", default=["acc@1", "acc@10"],
                        help="the metrics --summarize shows per slice (e.g. acc@10 top1_km)")
    parser.add_argument("--data", help="the city's next_poi folder the runs were trained on")
    parser.add_argument("--runs", nargs="+", type=Path, help="finished retrieval run folders")
    parser.add_argument("--names", nargs="+", help="a row name per run (default: the folder names)")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize, tuple(args.keys)))
        return
    if not args.data or not args.runs:
        parser.error("give --data and --runs (or --summarize with earlier --out files).")
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        sys.exit(f"--names gives {len(names)} names for {len(args.runs)} runs; give one per run.")
    torch.set_num_threads(1)
    data = load_retrieval_data(args.data)
    categories = data.catalogue.column("category_l2")
    if categories is None or data.oracle_path is None:
        sys.exit(f"{args.data} has no `category_l2` in its catalogue or no truth/; the slices need the synthetic city.")
    test = data.splits["test"]
    slices = slice_of_requests(categories, test.last_poi(), test.target)
    rows: dict[str, dict[str, dict[str, float]]] = {}

    def request_km(pois: np.ndarray) -> np.ndarray:
        """Distance from each request to a POI of its own (-1: none, NaN)."""
        n, cat = len(pois), data.catalogue
        km = haversine_km(test.lat[:n], test.lon[:n], cat.lat[np.maximum(pois, 0)], cat.lon[np.maximum(pois, 0)])
        return np.where(pois >= 0, km, np.nan)

    for name, run in zip(names, args.runs):
        start = time.perf_counter()
        lists = run_lists(run, data)
        if len(lists) != len(slices):
            if rows:
                sys.exit(f"{run} evaluated {len(lists)} test requests and an earlier run {len(slices)}; compare runs "
                         "evaluated on the same requests (lm.decode.max_eval_samples).")
            slices = slices[:len(lists)]
        rows[name] = slice_metrics(lists, test.target[:len(lists)], slices, request_km(lists[:, 0]), categories)
        print(f"{name}: decoded {len(lists)} requests in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    bandwidth = json.loads((args.runs[0] / "eval" / "metrics.json").read_text())["geo_nearest_popular"]["bandwidth_km"]
    popularity = data.train_checkins.popularity(len(data.catalogue))
    n = len(slices)
    geo = geo_popular_topk(popularity, data.catalogue, test.lat[:n], test.lon[:n], bandwidth, 20)
    rows["geo_nearest_popular"] = slice_metrics(geo, test.target[:n], slices, request_km(geo[:, 0]), categories)
    probs = oracle_probabilities(data.oracle_path)[:n]
    oracle = {k: probs[:, :k].sum(axis=1) for k in (1, 5, 10)}  # expected Acc@k per request
    rows["oracle"] = {s: {f"acc@{k}": float(v[slices == s].mean()) for k, v in oracle.items()}
                      if (slices == s).any() else {"count": 0.0} for s in SLICES} | {
        "all": {f"acc@{k}": float(v.mean()) for k, v in oracle.items()}}
    target_km = request_km(test.target[:n])
    rows["next POI (its distance)"] = {s: {"top1_km": float(np.nanmedian(target_km[slices == s]))}
                                       if (slices == s).any() else {"count": 0.0} for s in SLICES} | {
        "all": {"top1_km": float(np.nanmedian(target_km))}}
    share = {s: float(np.mean(slices == s)) for s in SLICES}
    print("slice shares: " + ", ".join(f"{s} {share[s]:.3f}" for s in SLICES))
    print(f"{'method':24s}" + "".join(f"{s + ' ' + k:>16s}" for s in (*SLICES, "all") for k in ("acc@1", "acc@10")))
    for name, row in rows.items():
        print(f"{name:24s}" + "".join(f"{row[s].get(k, float('nan')):16.4f}" for s in (*SLICES, "all")
                                       for k in ("acc@1", "acc@10")))
    if args.out:
        command = "python " + " ".join(sys.argv)
        args.out.write_text(json.dumps({"command": command, "data": args.data, "runs": [str(r) for r in args.runs],
                                        "shares": share, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
