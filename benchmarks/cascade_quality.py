"""End-to-end quality of the served cascade on the synthetic world, against the Bayes-optimal ordering.

    python benchmarks/cascade_quality.py --run runs/demo/dlrm --world runs/demo/world --requests 200

Replays logged *test* requests of the world through the cascade's public API (same user, position, time and
weather; search requests with their query text) and scores the final top K with the world's true click
probabilities (`rankstack.world.truth.WorldTruth`, every POI as if shown at position 1):

- ndcg@K: DCG of the list with gains p_click, over the DCG of the K best POIs of the whole catalogue (the
  Bayes-optimal ordering, 1.0 by definition);
- recall@K: share of the true K best POIs that the list holds;
- retrieval_recall@K: share of the true K best that survive retrieval at all (a ceiling for every later stage).

Variants, each a cascade with one stage swapped: `cascade` (as served), `ranking=retrieval_order` (the ranker
replaced by its baseline: the retrieval score order), `ranking=oracle` (the ranker replaced by the true
probabilities: the best any ranker could do on these candidates), `preranking=off` (the ranker scores every
retrieved candidate), for search `relevance=off` (no tiers: nothing dropped or demoted), and, when the export holds
them, GeoGR, AutoFAS and the TaoSR1 model each swapped for its baseline (`retrieval=geo_nearest_popular`,
`preranking=retrieval_score_truncation`, `relevance=lexical`). Writes benchmarks/results/cascade_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def dcg(gains: np.ndarray) -> float:
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--world", help="world folder (default: the run's)")
    parser.add_argument("--requests", type=int, default=200, help="logged test requests replayed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cascade_quality.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rankstack.serving.cascade import Cascade, CascadeConfig, Context, configure_threads
    from rankstack.serving.stages import Candidates, Ranked
    from rankstack.world.places import to_latlon
    from rankstack.world.truth import WorldTruth

    configure_threads(CascadeConfig())
    base = Cascade.load(args.run, args.world)
    world = base.tables.root
    truth = WorldTruth(world)
    requests = pq.read_table(world / "truth" / "requests.parquet").to_pandas()
    requests = requests[requests["split"] == "test"].sample(n=args.requests, random_state=args.seed)
    queries = dict(zip(*pq.read_table(world / "tables" / "queries.parquet", columns=["query_id", "text"])
                       .to_pydict().values()))
    n_pois = base.tables.n_pois
    current: dict[str, int] = {}

    class RetrievalOrder:
        name, baseline, note = "retrieval_order", True, "ranking swapped for its baseline: the retrieval score"

        def rank(self, request: Any, candidates: Candidates, request_number: int = 0) -> Ranked:
            order = np.argsort(-candidates.scores, kind="stable")
            return Ranked(candidates.pois[order], candidates.scores[order], {})

    class Oracle:
        name, baseline, note = "oracle", False, "the true click probabilities (the ceiling for any ranker)"

        def rank(self, request: Any, candidates: Candidates, request_number: int = 0) -> Ranked:
            p = truth.click_probability(np.full(len(candidates), current["rid"]), candidates.pois + 1)
            order = np.argsort(-p, kind="stable")
            return Ranked(candidates.pois[order], p[order], {})

    class NoRelevance:
        name, baseline, note, beta = "none", True, "relevance stage off: every candidate Good", 0.5

        def tier_probabilities(self, query: Any, pois: np.ndarray) -> np.ndarray:
            return np.tile([0.0, 0.0, 0.0, 1.0], (len(pois), 1))

        def rationale(self, query: Any, poi: int) -> str:
            return ""

    def swapped(ranker: Any = None, relevance: Any = None, config: Any = None) -> Cascade:
        return Cascade(base.tables, config or base.config, base.retriever, base.search_retriever, base.preranker,
                       ranker or base.ranker, relevance or base.relevance, base.parser)

    everything = replace(base.config, feed=replace(base.config.feed, preranking=base.config.feed.retrieval),
                         search=replace(base.config.search, preranking=base.config.search.retrieval))
    variants = {"cascade": base, "ranking=retrieval_order": swapped(RetrievalOrder()),
                "ranking=oracle": swapped(Oracle()), "preranking=off": swapped(config=everything),
                "relevance=off": swapped(relevance=NoRelevance())}
    # The trained retrieval, pre-ranking and relevance stages, each swapped for its baseline (when the export has one)
    methods = base.stage_methods()
    for label, stage, key, baseline in (("retrieval", "feed_retrieval", "feed_retrieval", "geo_nearest_popular"),
                                        ("preranking", "preranking", "preranker", "retrieval_score_truncation"),
                                        ("relevance", "relevance", "relevance", "lexical")):
        if not methods[stage]["baseline"]:
            swapped_config = replace(base.config, **{key: baseline})
            variants[f"{label}={baseline}"] = Cascade.load(args.run, args.world, swapped_config)
    k = args.k
    scores: dict[str, dict[str, list[float]]] = {v: {"feed": [], "search": []} for v in variants}
    recalls: dict[str, dict[str, list[float]]] = {v: {"feed": [], "search": []} for v in variants}
    retrieval_recall: dict[str, list[float]] = {"feed": [], "search": []}
    preranking_recall: dict[str, list[float]] = {"feed": [], "search": []}
    start = time.perf_counter()
    for row in requests.itertuples():
        current["rid"] = int(row.request_id)
        p_all = truth.click_probability(np.full(n_pois, row.request_id), np.arange(1, n_pois + 1))
        best = np.argsort(-p_all, kind="stable")[:k]
        ideal = dcg(p_all[best])
        lat, lon = to_latlon(np.array(row.x_km), np.array(row.y_km))
        context = Context(lat=float(lat), lon=float(lon), weather=int(row.weather), timestamp=int(row.timestamp))
        kind = "search" if row.query_id else "feed"
        query = queries.get(row.query_id, "")
        budgets = base.config.search if query else base.config.feed
        parsed = base.parser.parse(query) if query else None
        request = base.resolve(int(row.user_id), context, parsed.category_l2 if parsed else -1)
        retrieved = (base.search_retriever if kind == "search" else base.retriever).retrieve(
            request, parsed, budgets.retrieval)
        survivors = base.preranker.prerank(request, retrieved, budgets.preranking)
        retrieval_recall[kind].append(len(set(best) & set(retrieved.pois.tolist())) / k)
        preranking_recall[kind].append(len(set(best) & set(survivors.pois.tolist())) / k)
        for name, cascade in variants.items():
            if name.startswith("relevance=") and kind == "feed":
                continue
            answer = (cascade.search(int(row.user_id), query, context, k) if kind == "search"
                      else cascade.feed(int(row.user_id), context, k))
            listed = np.array([r["poi_id"] - 1 for r in answer["results"]], dtype=np.int64)
            scores[name][kind].append(dcg(p_all[listed]) / ideal)
            recalls[name][kind].append(len(set(best) & set(listed.tolist())) / k)
    summary: dict[str, Any] = {}
    for kind in ("feed", "search"):
        n = len(retrieval_recall[kind])
        if not n:
            continue
        summary[kind] = {"requests": n, f"retrieval_recall@{k}": round(float(np.mean(retrieval_recall[kind])), 4),
                         f"preranking_recall@{k}": round(float(np.mean(preranking_recall[kind])), 4)}
        for name in variants:
            if not scores[name][kind]:
                continue
            summary[kind][name] = {f"ndcg@{k}": round(float(np.mean(scores[name][kind])), 4),
                                   f"recall@{k}": round(float(np.mean(recalls[name][kind])), 4)}
    command = " ".join(["python", *sys.argv])
    row = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run": args.run,
           "ranking_model": base.ranker.name, "bayes_optimal": {f"ndcg@{k}": 1.0, f"recall@{k}": 1.0},
           "seconds": round(time.perf_counter() - start, 1), "results": summary,
           "stages": {name: s["method"] for name, s in base.stage_methods().items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"written to {args.out}\ncommand: {command}")


if __name__ == "__main__":
    main()
