"""Non-generative retrieval baselines over next-POI datasets (geogr.md §6), scored by `retrieval.evaluate`.

- **Popularity**: every request gets the POIs with the most train check-ins.
- **Geo-nearest popular**: score(p) = log(1 + n_p) - dist(user, p) / h, with n_p the train check-in count and
  dist the haversine from where the user is at the request (the city's `user_lat/lon`, Foursquare's previous
  check-in); the bandwidth h is chosen on the valid split among `bandwidths_km`.

Both use the train check-in log only (`RetrievalData.train_checkins`). SASRec-style and TIGER-style baselines
are not implemented yet (docs/retrieval.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rankstack.retrieval.data import PoiCatalog, RetrievalData, haversine_km
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
    """

    width: int = 20
    bandwidths_km: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    tune_metric: str = "acc@5"
    batch_size: int = 2048

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}.")
        if not self.bandwidths_km or min(self.bandwidths_km) <= 0:
            raise ValueError(f"bandwidths_km must be positive numbers, got {self.bandwidths_km}.")


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


def run_baselines(data: RetrievalData, config: BaselineConfig | None = None) -> dict[str, Any]:
    """Valid and test metrics of every baseline the dataset supports, plus the oracle when `truth/` exists.

    Returns ``{"popularity": {"valid": {...}, "test": {...}}, "geo_nearest_popular": {"bandwidth_km": h,
    "tuning": {h: valid metric}, "valid": {...}, "test": {...}}, "oracle": {...}}``; geo-nearest popular is left
    out for data without coordinates, the oracle for data without truth.
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
    if data.catalogue.lat is not None and valid.lat is not None and test.lat is not None:
        def geo(split_lat: np.ndarray, split_lon: np.ndarray, h: float) -> np.ndarray:
            return geo_popular_topk(popularity, data.catalogue, split_lat, split_lon, h, config.width,
                                    config.batch_size)

        tuning = {h: evaluate_topk(geo(valid.lat, valid.lon, h), valid.target, n_pois)
                  for h in config.bandwidths_km}
        if config.tune_metric not in next(iter(tuning.values())):
            raise ValueError(f"tune_metric {config.tune_metric!r} is not an evaluator metric; use one of "
                             f"{sorted(next(iter(tuning.values())))}.")
        best = max(config.bandwidths_km, key=lambda h: tuning[h][config.tune_metric])
        report["geo_nearest_popular"] = {
            "bandwidth_km": best,
            "tuning": {h: m[config.tune_metric] for h, m in tuning.items()},
            "valid": tuning[best],
            "test": evaluate_topk(geo(test.lat, test.lon, best), test.target, n_pois),
        }
    if data.oracle_path is not None:
        report["oracle"] = oracle_metrics(data.oracle_path)
    return report
