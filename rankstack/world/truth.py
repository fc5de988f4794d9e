"""The world's truth as a function: true click, conversion and order probabilities of any (request, POI) pair.

Evaluation code (Bayes-optimal figures, distillation targets for pre-ranking, counterfactual candidates) can
score candidates the logged impressions never showed:

    truth = WorldTruth("runs/world")
    p = truth.click_probability(request_ids, poi_ids)              # as if shown at position 1
    p = truth.click_probability(request_ids, poi_ids, positions)   # with position bias

It reads `world.yaml`, `tables/` and the latent state under `truth/` (user traits, POI quality, each request's
intent) and evaluates the same `mechanisms` functions the generator used, so on logged impressions it reproduces
`ranking/truth/*.parquet` exactly. Models must never read this: it is the answer key.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rankstack.config import from_dict, read_yaml
from rankstack.errors import DataError
from rankstack.world import city
from rankstack.world.config import WorldConfig
from rankstack.world.mechanisms import Context, click_logit, cvr_logit, sigmoid
from rankstack.world.places import Pois, Users


class WorldTruth:
    """The latent state of a generated world, loaded once; vectorised truth queries over it."""

    def __init__(self, world_dir: str | Path) -> None:
        root = Path(world_dir)
        meta_path = root / "world.yaml"
        if not meta_path.is_file():
            raise DataError(f"{root} has no world.yaml; point at a folder written by `rankstack world generate`.")
        meta = read_yaml(meta_path)
        self.seed = int(meta["seed"])
        self.config = from_dict(WorldConfig, meta["config"], where=str(meta_path))
        self.pois = _load_pois(root)
        self.users = _load_users(root)
        req = pq.read_table(root / "truth" / "requests.parquet").sort_by("request_id")
        self._request_ids = req.column("request_id").to_numpy()
        self._req = {name: req.column(name).to_numpy() for name in
                     ("user_id", "hour", "weather", "x_km", "y_km", "intent_category_l2_id")}

    def _rows(self, request_ids: np.ndarray) -> np.ndarray:
        request_ids = np.asarray(request_ids, dtype=np.int64)
        rows = np.clip(np.searchsorted(self._request_ids, request_ids), 0, len(self._request_ids) - 1)
        unknown = self._request_ids[rows] != request_ids
        if unknown.any():
            raise DataError(f"request_id {request_ids[unknown][0]} is not a request of this world "
                            "(truth/requests.parquet); pass ids from the ranking dataset's `request_id` column.")
        return rows

    def _inputs(self, request_ids: np.ndarray, poi_ids: np.ndarray) -> tuple[Context, np.ndarray, np.ndarray]:
        rows = self._rows(request_ids)
        poi = np.asarray(poi_ids, dtype=np.int64) - 1
        if len(poi) and (poi.min() < 0 or poi.max() >= len(self.pois)):
            raise DataError(f"poi_id must be between 1 and {len(self.pois)}; got {int(poi.min()) + 1}..."
                            f"{int(poi.max()) + 1}.")
        r = self._req
        ctx = Context(r["user_id"][rows] - 1, r["hour"][rows], r["weather"][rows], r["x_km"][rows], r["y_km"][rows])
        return ctx, poi, r["intent_category_l2_id"][rows] - 1

    def click_terms(self, request_ids: np.ndarray, poi_ids: np.ndarray,
                    positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The click logit's terms (`mechanisms.CLICK_TERMS`) per pair; positions default to 1 (no penalty)."""
        ctx, poi, intent = self._inputs(request_ids, poi_ids)
        pos = np.ones(len(poi)) if positions is None else np.asarray(positions)
        return click_logit(self.config, self.users, self.pois, ctx, poi, intent, pos)

    def click_probability(self, request_ids: np.ndarray, poi_ids: np.ndarray,
                          positions: np.ndarray | None = None) -> np.ndarray:
        return sigmoid(sum(self.click_terms(request_ids, poi_ids, positions).values()))

    def cvr_probability(self, request_ids: np.ndarray, poi_ids: np.ndarray) -> np.ndarray:
        """P(order | click); it does not depend on the position."""
        ctx, poi, intent = self._inputs(request_ids, poi_ids)
        terms = click_logit(self.config, self.users, self.pois, ctx, poi, intent, np.ones(len(poi)))
        return sigmoid(cvr_logit(self.config, self.users, self.pois, ctx, poi, terms))

    def order_probability(self, request_ids: np.ndarray, poi_ids: np.ndarray,
                          positions: np.ndarray | None = None) -> np.ndarray:
        return self.click_probability(request_ids, poi_ids, positions) * self.cvr_probability(request_ids, poi_ids)


@lru_cache(maxsize=4)
def _cached(world_dir: str) -> WorldTruth:
    return WorldTruth(world_dir)


def click_probability(world_dir: str | Path, request_ids: np.ndarray, poi_ids: np.ndarray,
                      positions: np.ndarray | None = None) -> np.ndarray:
    """True click probability of each (request, POI) pair of the world in `world_dir` (cached per folder)."""
    return _cached(str(Path(world_dir).resolve())).click_probability(request_ids, poi_ids, positions)


def order_probability(world_dir: str | Path, request_ids: np.ndarray, poi_ids: np.ndarray,
                      positions: np.ndarray | None = None) -> np.ndarray:
    """True click-and-order probability of each pair (p_click · p_cvr)."""
    return _cached(str(Path(world_dir).resolve())).order_probability(request_ids, poi_ids, positions)


def _load_pois(root: Path) -> Pois:
    t = pq.read_table(root / "tables" / "pois.parquet").to_pydict()
    latent = pq.read_table(root / "truth" / "pois.parquet").to_pydict()
    n = len(t["poi_id"])
    attrs = np.zeros((n, len(city.ATTRIBUTES)), dtype=bool)
    recorded = np.ones((n, len(city.ATTRIBUTES)), dtype=bool)
    for i, (true_attrs, unstated) in enumerate(zip(latent["attributes_true"], t["attributes_unstated"])):
        attrs[i, [city.ATTR_INDEX[a] for a in true_attrs]] = True
        recorded[i, [city.ATTR_INDEX[a] for a in unstated]] = False
    arr = {k: np.asarray(v) for k, v in t.items() if k not in ("attributes", "attributes_unstated", "name",
                                                               "description")}
    return Pois(arr["x_km"], arr["y_km"], arr["category_l2_id"] - 1, arr["brand_id"], arr["price_level"],
                arr["rating"], np.asarray(latent["quality"]), arr["review_count"].astype(np.float64),
                arr["district_id"] - 1, arr["open_hour"], arr["close_hour"], attrs, recorded, t["name"],
                t["description"])


def _load_users(root: Path) -> Users:
    t = pq.read_table(root / "tables" / "users.parquet").to_pydict()
    latent = pq.read_table(root / "truth" / "users.parquet").to_pydict()
    age = np.array([city.AGE_BANDS.index(a) for a in t["age_band"]], dtype=np.int64)
    a = {k: np.asarray(v) for k, v in {**t, **latent}.items()}
    return Users(a["home_x_km"], a["home_y_km"], a["work_x_km"], a["work_y_km"], age, a["income_band"],
                 a["loyalty_band"], a["cat_pref"], a["brand_pref"], a["pref_price"], a["price_sens"], a["bias"],
                 a["activity"])
