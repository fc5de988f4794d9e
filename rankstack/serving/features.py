"""Online features: the ranking columns of (user, context, candidate POIs) computed at request time.

A serving request is not a logged impression, so its features must be computed the way the training rows were:
this module builds a one-request `Requests` and a candidate `Impressions`, runs the world's own
`rankstack.world.features.FeatureBuilder` over the user's logged behaviour before the request time, and encodes
the columns with the dataset's vocabulary through `rankstack.data.loader.encode_columns` — the same code the
training loader uses, so training and serving features cannot drift apart.

Only observable tables are read (`world.yaml`, `tables/pois.parquet`, `tables/users.parquet`,
`tables/visits.parquet`); never `truth/`. District centres are the city's public map: they are recomputed from the
world's seed with `rankstack.world.places.make_districts`, exactly as the generator drew them.

A cold-start user (an id the user table does not hold) gets out-of-vocabulary profile fields and empty behaviour
sequences; the request still ranks, on context and item features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rankstack.config import from_dict, read_yaml
from rankstack.data.dataset import arrow_schema
from rankstack.data.loader import encode_columns
from rankstack.data.schema import Schema
from rankstack.data.vocab import Vocabulary
from rankstack.errors import DataError
from rankstack.world import city
from rankstack.world.behaviour import SESSION_GAP_S, Events, Impressions, Requests, World, sort_events
from rankstack.world.config import WorldConfig
from rankstack.world.features import FeatureBuilder
from rankstack.world.places import KM_PER_DEG_LAT, KM_PER_DEG_LON, LAT0, LON0, Pois, Users, make_districts

#: A raw value no vocabulary holds: encodes to the out-of-vocabulary id (a cold user's profile bands).
UNKNOWN_VALUE = 1 << 30
#: Request ids of served requests start here, far above the logged ones (which key the noise fields' draws).
SERVED_REQUEST_ID_BASE = 1 << 40


def from_latlon(lat: np.ndarray | float, lon: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `rankstack.world.places.to_latlon`: degrees → km on the city plane (x, y)."""
    return (np.asarray(lon) - LON0) * KM_PER_DEG_LON, (np.asarray(lat) - LAT0) * KM_PER_DEG_LAT


def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path} is missing; serving reads the world's observable tables. Point --world at a folder "
                        "written by `rankstack world generate`.")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        raise DataError(f"{path} cannot be read ({err}); it is truncated or corrupt: regenerate the world.") from None


@dataclass
class WorldTables:
    """The observable world a server answers from, loaded once: POIs, users, the behaviour log."""

    root: Path
    config: WorldConfig
    seed: int
    world: World  # places and people as the generator's `World`, latent fields zeroed
    n_users: int
    poi_lat: np.ndarray
    poi_lon: np.ndarray
    poi_table: pa.Table  # tables/pois.parquet (names, categories, attributes, for responses and the demo map)
    events: Events  # the whole behaviour log, sorted by (user, time)
    user_start: np.ndarray  # events of user index u are events[user_start[u]:user_start[u + 1]]

    @classmethod
    def load(cls, world_dir: str | Path) -> WorldTables:
        root = Path(world_dir)
        meta_path = root / "world.yaml"
        if not meta_path.is_file():
            raise DataError(f"{root} has no world.yaml; pass --world a folder written by `rankstack world generate` "
                            "(e.g. runs/demo/world).")
        meta = read_yaml(meta_path)
        config = from_dict(WorldConfig, meta["config"], where=str(meta_path))
        seed = int(meta["seed"])
        pois_table = _read(root / "tables" / "pois.parquet")
        users_table = _read(root / "tables" / "users.parquet")
        visits = _read(root / "tables" / "visits.parquet",
                       ["user_id", "poi_id", "timestamp", "action_id", "x_km", "y_km", "session_id", "request_id"])
        p = {name: pois_table.column(name).to_numpy() for name in
             ("x_km", "y_km", "category_l2_id", "brand_id", "price_level", "rating", "review_count", "district_id",
              "open_hour", "close_hour", "lat", "lon")}
        n_pois = len(p["x_km"])
        stated = np.zeros((n_pois, len(city.ATTRIBUTES)), dtype=bool)
        recorded = np.ones_like(stated)
        for i, (names, unstated) in enumerate(zip(pois_table.column("attributes").to_pylist(),
                                                  pois_table.column("attributes_unstated").to_pylist())):
            stated[i, [city.ATTR_INDEX[a] for a in names]] = True
            recorded[i, [city.ATTR_INDEX[a] for a in unstated]] = False
        zeros = np.zeros(n_pois)
        # Features read the stated attributes (attrs & recorded), and the relevance record says which attributes the
        # record is silent on (`recorded`); the truth behind them is not loaded.
        pois = Pois(p["x_km"], p["y_km"], p["category_l2_id"] - 1, p["brand_id"], p["price_level"], p["rating"], zeros,
                    p["review_count"].astype(np.float64), p["district_id"] - 1, p["open_hour"], p["close_hour"],
                    stated, recorded, pois_table.column("name").to_pylist(), [])
        u = {name: users_table.column(name).to_numpy() for name in
             ("home_x_km", "home_y_km", "work_x_km", "work_y_km", "income_band", "loyalty_band")}
        age = np.array([city.AGE_BANDS.index(a) for a in users_table.column("age_band").to_pylist()], dtype=np.int64)
        n_users = len(age)
        # One extra row, index n_users, stands for every cold-start user: profile values no vocabulary holds.
        cold = np.array([UNKNOWN_VALUE])
        users = Users(np.r_[u["home_x_km"], 0.0], np.r_[u["home_y_km"], 0.0], np.r_[u["work_x_km"], 0.0],
                      np.r_[u["work_y_km"], 0.0], np.r_[age, cold], np.r_[u["income_band"], cold],
                      np.r_[u["loyalty_band"], cold], np.zeros((n_users + 1, len(city.CATEGORIES))),
                      np.zeros((n_users + 1, len(city.BRANDS) + 1)), *(np.zeros(n_users + 1) for _ in range(4)))
        districts = make_districts(config, np.random.default_rng(np.random.SeedSequence([seed, 1])))
        v = {name: visits.column(name).to_numpy() for name in visits.column_names}
        events = sort_events(Events(v["user_id"] - 1, v["timestamp"], v["poi_id"] - 1, v["action_id"], v["x_km"],
                                    v["y_km"], v["session_id"], v["request_id"]))
        user_start = np.searchsorted(events.user, np.arange(n_users + 2))
        return cls(root, config, seed, World(config, seed, districts, pois, users, []), n_users, p["lat"], p["lon"],
                   pois_table, events, user_start)

    @property
    def n_pois(self) -> int:
        return len(self.poi_lat)

    @property
    def log_end_s(self) -> int:
        """The end of the behaviour log: served requests happen after it unless they name a timestamp."""
        return self.config.days * 86400

    def user_index(self, user_id: int) -> int | None:
        """Index of a known user id (1-based in the tables), None for a cold-start user."""
        return user_id - 1 if 1 <= user_id <= self.n_users else None

    def user_events(self, user: int | None, before_s: int) -> Events:
        """The user's logged events strictly before `before_s` (none for a cold-start user)."""
        if user is None:
            return self.events.take(np.zeros(0, dtype=np.int64))
        lo, hi = self.user_start[user], self.user_start[user + 1]
        end = lo + int(np.searchsorted(self.events.time[lo:hi], before_s, "left"))
        return self.events.take(np.arange(lo, end))

    def home(self, user: int) -> tuple[float, float]:
        """(x, y) km of a known user's home."""
        users = self.world.users
        return float(users.home_x[user]), float(users.home_y[user])


@dataclass(frozen=True)
class RequestContext:
    """One served request, resolved: who, where (km), when, and the search query's category if any."""

    user_id: int
    user: int | None  # index in the user table; None = cold start
    x: float
    y: float
    time_s: int
    hour: int
    weekday: int
    weather: int
    query_category: int = -1  # category_l2 index of the query, -1 for feed or an unparsed query

    @property
    def cold_start(self) -> bool:
        return self.user is None


class OnlineFeatures:
    """Encodes ranking features of (request, candidate POIs) with a dataset's schema and vocabulary."""

    def __init__(self, tables: WorldTables, schema: Schema, vocab: Vocabulary) -> None:
        self.tables = tables
        self.schema = schema
        self.vocab = vocab
        self.columns = [c for c in schema.columns if c.kind != "text"]
        self._arrow = arrow_schema(schema)

    def table(self, request: RequestContext, pois: np.ndarray, request_number: int = 0) -> pa.Table:
        """The ranking columns of one request × candidate POI indices, as the world generator writes them."""
        tables, world = self.tables, self.tables.world
        user = tables.n_users if request.user is None else request.user  # the cold-start row
        events = tables.user_events(request.user, request.time_s)
        if request.user is None:
            session_events = 0
        else:
            recent = events.time[events.time >= request.time_s - SESSION_GAP_S]
            session_events = len(recent)
        # The feature builder indexes a chunk's events; one event of a sentinel user (outside every request) keeps
        # its arrays non-empty when this user has no history, without adding to the user's own history.
        sentinel = tables.n_users + 1
        events = Events.concat([Events(**{**events.__dict__, "user": np.full(len(events.time), user, dtype=np.int64)}),
                                Events(*(np.array([v]) for v in (sentinel, 0, 0, city.VIEW, 0.0, 0.0, 0, 0)))])
        one = np.array
        req = Requests(request_id=one([SERVED_REQUEST_ID_BASE + request_number]), user=one([user]),
                       time=one([request.time_s]), hour=one([request.hour]), weekday=one([request.weekday]),
                       weather=one([request.weather]), x=one([request.x]), y=one([request.y]), intent=one([-1]),
                       sid=one([0]), session_events=one([session_events]), query_id=one([0]),
                       query_cat=one([request.query_category]))
        n = len(pois)
        zeros = np.zeros(n)
        # Position 1 for every candidate: serving scores each candidate as if shown first (no position bias).
        imp = Impressions(np.zeros(n, dtype=np.int64), np.asarray(pois, dtype=np.int64), np.ones(n, dtype=np.int64),
                          {}, zeros, zeros, zeros, zeros)
        columns = FeatureBuilder(world, np.array([user, sentinel]), events).rows(req, imp)
        return pa.table([_as_array(columns[f.name]).cast(f.type) for f in self._arrow], schema=self._arrow)

    def encode(self, request: RequestContext, pois: np.ndarray, request_number: int = 0) -> dict[str, torch.Tensor]:
        """Tensors of the candidates `[C]` (request-level fields repeated per row), as a training batch holds."""
        window = encode_columns(self.columns, self.vocab, self.table(request, pois, request_number))
        return window.gather(np.arange(len(pois)))


def _as_array(values: object) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(values)
