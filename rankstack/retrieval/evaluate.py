"""The one evaluator of the retrieval stage: top-W lists against next-POI targets (geogr.md §5).

Every retriever (popularity, geo-nearest popular, the generative GeoGR decoder, later SASRec and TIGER) hands in
its ranked top-W POI indices per sample; `evaluate_topk` turns them into ranks and the metrics through
`rankstack.metrics`. Each sample has one target with 1-based rank r among the W returned POIs (r = inf if
absent): Acc@K = HR@K = 1[r <= K], NDCG@K = 1[r <= K] / log2(r + 1), MRR = 1/r (0 when absent, so truncated at
W). W is always reported beside the metrics: no metric can credit ranks beyond it.

`oracle_metrics` gives the same metrics for the synthetic city's true next-visit distribution
(`next_poi/truth/test.parquet`, its top 50 per sample): the *expected* value of each metric when the oracle's
list is ranked by true probability, e.g. oracle Acc@K = mean over samples of the top-K probabilities' sum. It is
the ceiling of any retriever on that split, up to sampling noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack import metrics

ACC_KS = (1, 5, 10)
NDCG_KS = (5, 10)


def ranks_in_lists(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row of `ranked` [N, W] (-1 pads empty slots); inf when absent.

    A negative target (not in the catalogue) is never found, so it counts as a miss.
    """
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"`ranked` must be [N, W] with one row per target, got shape {ranked.shape} for "
                         f"{len(targets)} targets.")
    hit = (ranked == targets[:, None]) & (targets[:, None] >= 0)
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), first + 1.0, np.inf)


def metrics_from_ranks(ranks: np.ndarray, width: int) -> dict[str, float]:
    """Acc@1/5/10, NDCG@5/10 and MRR of 1-based ranks (inf = absent), with the list width W and count."""
    report = {f"acc@{k}": metrics.hit_rate_at_k(ranks, k) for k in ACC_KS}
    report |= {f"ndcg@{k}": metrics.ndcg_at_k(ranks, k) for k in NDCG_KS}
    report["mrr"] = metrics.mrr(ranks)
    report["width"] = float(width)
    report["count"] = float(len(ranks))
    return report


def evaluate_topk(ranked: np.ndarray, targets: np.ndarray, n_pois: int | None = None) -> dict[str, float]:
    """Metrics of ranked top-W lists [N, W] against `targets` [N]; with `n_pois`, also catalogue coverage (the
    share of POIs that appear in at least one list)."""
    ranked = np.asarray(ranked)
    report = metrics_from_ranks(ranks_in_lists(ranked, targets), ranked.shape[1])
    if n_pois is not None:
        returned = np.unique(ranked[ranked >= 0])
        report["coverage"] = len(returned) / n_pois
    return report


def oracle_probabilities(truth_path: str | Path) -> np.ndarray:
    """`[N, W]`: per request, the true next-visit probabilities of its stored top W POIs, most likely first."""
    table = pq.read_table(truth_path, columns=["oracle_probs"])
    probs_list = table.column("oracle_probs").combine_chunks()
    width = int(pc.max(pc.list_value_length(probs_list)).as_py())
    return np.asarray(probs_list.flatten().to_numpy(), dtype=np.float64).reshape(-1, width)


def oracle_metrics(truth_path: str | Path) -> dict[str, float]:
    """Expected Acc@K, NDCG@K and MRR of the true next-visit distribution's ranking (its stored top 50)."""
    probs = oracle_probabilities(truth_path)
    width = probs.shape[1]
    position = np.arange(1, width + 1)
    report = {f"acc@{k}": float(probs[:, :k].sum(axis=1).mean()) for k in ACC_KS}
    report |= {f"ndcg@{k}": float((probs[:, :k] / np.log2(position[:k] + 1)).sum(axis=1).mean()) for k in NDCG_KS}
    report["mrr"] = float((probs / position).sum(axis=1).mean())
    report["width"] = float(width)
    report["count"] = float(len(probs))
    return report
