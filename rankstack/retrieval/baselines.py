"""Non-generative retrieval baselines over next-POI datasets (geogr.md §6), scored by `retrieval.evaluate`.

- **Popularity**: every request gets the POIs with the most train check-ins.
- **Geo-nearest popular**: score(p) = log(1 + n_p) - dist(user, p) / h, with n_p the train check-in count and
  dist the haversine from where the user is at the request (the city's `user_lat/lon`, Foursquare's previous
  check-in); the bandwidth h is chosen on the valid split among `bandwidths_km`.
- **User history**: the user's own earlier POIs, score(p) = Σ decay^age over the request's history positions that
  hold p (age 0: the latest check-in), the rest of the list by popularity; the decay is chosen on the valid split
  among `history_decays`. Not in geogr.md: added because real users revisit (68 % of Foursquare NYC's test targets
  are among their last 20 check-ins), so a method that does not copy from the history well shows it here.

Popularity and geo-nearest use the train check-in log only (`RetrievalData.train_checkins`); user history reads
each request's own history. SASRec-style and TIGER-style baselines live in `sasrec.py` and the LM pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankstack.retrieval.data import NextPoiSamples, PoiCatalog, RetrievalData, haversine_km
from rankstack.retrieval.evaluate import evaluate_topk, oracle_metrics


@dataclass
class BaselineConfig:
    """Configuration of `run_baselines`.

    Parameters:
        width (`int`, defaults to `20`): W, the length of every returned list (geogr.md §4.4: 20 offline).
        bandwidths_km (`tuple[float, ...]`, defaults to `(0.25, 0.5, 1, 2, 4)`): candidate h of geo-nearest
            popular.
        tune_metric (`str`, defaults to `"acc@5"`): the valid metric that picks h (a key of `evaluate_topk`).
        batch_size (`int`, defaults to `2048`): requests scored at once against the whole catalogue.
        history_decays (`tuple[float, ...]`, defaults to `(0.5, 0.8, 0.9, 1.0)`): candidate decays of user history
            (1.0: visit counts).
    """

    width: int = 20
    bandwidths_km: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    tune_metric: str = "acc@5"
    batch_size: int = 2048
    history_decays: tuple[float, ...] = (0.5, 0.8, 0.9, 1.0)

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}.")
        if not self.bandwidths_km or min(self.bandwidths_km) <= 0:
            raise ValueError(f"bandwidths_km must be positive numbers, got {self.bandwidths_km}.")
        if not self.history_decays or not all(0 < d <= 1 for d in self.history_decays):
            raise ValueError(f"history_decays must lie in (0, 1], got {self.history_decays}.")


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row [N, k], best first; ties within the list go to the lower
    index (which of several POIs tied at the k-th score gets in is left to `np.argpartition`)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def popularity_topk(popularity: np.ndarray, n_requests: int, width: int) -> np.ndarray:
    """The `width` most popular POIs, the same list for each of `n_requests` requests [N, W]."""
    top = topk_indices(popularity[None, :].astype(np.float64), width)
    return np.repeat(top, n_requests, axis=0)


def geo_popular_topk(popularity: np.ndarray, catalogue: PoiCatalog, lat: np.ndarray, lon: np.ndarray,
                     bandwidth_km: float, width: int, batch_size: int = 2048) -> np.ndarray:
    """Top-`width` POIs by log(1 + n_p) - haversine(request, p) / h for requests at (`lat`, `lon`) [N, W]."""
    if catalogue.lat is None or catalogue.lon is None:
        raise ValueError("the catalogue has no lat/lon; geo-nearest popular needs coordinates.")
    log_pop = np.log1p(popularity.astype(np.float64))
    out = []
    for lo in range(0, len(lat), batch_size):
        dist = haversine_km(lat[lo:lo + batch_size, None], lon[lo:lo + batch_size, None],
                            catalogue.lat[None, :], catalogue.lon[None, :])
        out.append(topk_indices(log_pop[None, :] - dist / bandwidth_km, width))
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.int64)


def history_topk(history: np.ndarray, popularity: np.ndarray, width: int, decay: float,
                 batch_size: int = 2048) -> np.ndarray:
    """Top-`width` POIs of each request's own history [N, W]: score(p) = Σ decay^age over the positions of
    `history` ([N, H], oldest first, -1 padded) that hold p, age 0 the latest; POIs the user never visited follow,
    by popularity."""
    fill = np.log1p(popularity.astype(np.float64))
    fill = fill / (fill.max(initial=0.0) + 1.0)  # in [0, 1): below every visited POI's 1 + score
    out = []
    for lo in range(0, len(history), batch_size):
        rows_history = history[lo:lo + batch_size]
        age = (rows_history >= 0).sum(axis=1, keepdims=True) - 1 - np.arange(rows_history.shape[1])[None, :]
        rows, cols = np.nonzero(rows_history >= 0)
        scores = np.zeros((len(rows_history), len(popularity)))
        np.add.at(scores, (rows, rows_history[rows, cols]), decay ** age[rows, cols])
        out.append(topk_indices(np.where(scores > 0, 1.0 + scores, fill[None, :]), width))
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.int64)


def run_baselines(data: RetrievalData, config: BaselineConfig | None = None) -> dict[str, Any]:
    """Valid and test metrics of every baseline the dataset supports, plus the oracle when `truth/` exists.

    Returns ``{"popularity": {"valid": {...}, "test": {...}}, "geo_nearest_popular": {"bandwidth_km": h,
    "tuning": {h: valid metric}, "valid": {...}, "test": {...}}, "user_history": {"decay": d, "tuning": ...,
    "valid": ..., "test": ...}, "oracle": {...}}``; geo-nearest popular is left out for data without coordinates,
    the oracle for data without truth.
    """
    config = config or BaselineConfig()
    n_pois = len(data.catalogue)
    popularity = data.train_checkins.popularity(n_pois)
    report: dict[str, Any] = {"popularity": {
        split: evaluate_topk(popularity_topk(popularity, len(data.splits[split]), config.width),
                             data.splits[split].target, n_pois)
        for split in ("valid", "test")
    }}
    valid, test = data.splits["valid"], data.splits["test"]

    def tuned(candidates: Sequence[float], ranked: Callable[[NextPoiSamples, float], np.ndarray]
              ) -> tuple[float, dict[str, Any]]:
        """Each candidate setting scored on valid, the best by `tune_metric`, and that one scored on test."""
        tuning = {c: evaluate_topk(ranked(valid, c), valid.target, n_pois) for c in candidates}
        if config.tune_metric not in next(iter(tuning.values())):
            raise ValueError(f"tune_metric {config.tune_metric!r} is not an evaluator metric; use one of "
                             f"{sorted(next(iter(tuning.values())))}.")
        best = max(candidates, key=lambda c: tuning[c][config.tune_metric])
        return best, {"tuning": {c: m[config.tune_metric] for c, m in tuning.items()}, "valid": tuning[best],
                      "test": evaluate_topk(ranked(test, best), test.target, n_pois)}

    if data.catalogue.lat is not None and valid.lat is not None and test.lat is not None:
        bandwidth, geo = tuned(config.bandwidths_km, lambda split, h: geo_popular_topk(
            popularity, data.catalogue, split.lat, split.lon, h, config.width, config.batch_size))
        report["geo_nearest_popular"] = {"bandwidth_km": bandwidth, **geo}
    decay, history = tuned(config.history_decays, lambda split, d: history_topk(
        split.history, popularity, config.width, d, config.batch_size))
    report["user_history"] = {"decay": decay, **history}
    if data.oracle_path is not None:
        report["oracle"] = oracle_metrics(data.oracle_path)
    return report
