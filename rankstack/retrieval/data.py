"""Next-POI data for the retrieval stage: the POI catalogue, the samples and the train-only check-in log.

Implements the data side of geogr.md §2. Three dataset layouts are read, all rankstack datasets:

| layout | written by | history / target | location at the request | time |
|---|---|---|---|---|
| `world` | `rankstack.world.generate` (`<world>/next_poi`) | `hist_poi_id` / `target_poi_id` | `user_lat`, `user_lon` | `timestamp` (s) |
| `foursquare` | converter `foursquare-nyc`, `task=next_poi` | `history_poi_id` / `target_poi_id` | `prev_lat`, `prev_lon` | `minute` |
| `sequential` | converter `amazon-s3rec`, `task=sequential` | `history_item_id` / `target_item_id` | none | none |

The catalogue is the dataset's `tables/pois.parquet` (Foursquare), `tables/items.parquet` (Amazon) or, for the
synthetic city, `<world>/tables/pois.parquet` beside `next_poi/`. POIs are addressed everywhere in this package
by their **index** in the catalogue (0..P-1); `PoiCatalog.index` maps external ids to it.

**Leakage rule** (geogr.md §2): co-visit pairs, Swing, k-means and popularity use `train_checkins` only. In the
city these are the organic physical visits (`order` / `navigate` with `request_id == 0`: impression orders do not
move the user and are not next-POI samples, world.md) up to the user's last train target; elsewhere they are the
train samples' targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack.errors import DataError

EARTH_RADIUS_KM = 6371.0
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class NextPoiLayout:
    """Column names of one next-POI dataset layout (see the module docstring)."""

    name: str
    history: str
    target: str
    lat: str | None
    lon: str | None
    time: str | None
    seconds_per_time_unit: int
    hour: str | None
    weekday: str | None
    catalogue: str
    catalogue_id: str
    history_hour: str | None = None  # the hour of each history event, where the data keeps it


LAYOUTS = (
    NextPoiLayout("world", "hist_poi_id", "target_poi_id", "user_lat", "user_lon", "timestamp", 1, "hour", "weekday",
                  "../tables/pois.parquet", "poi_id", "hist_hour"),
    NextPoiLayout("foursquare", "history_poi_id", "target_poi_id", "prev_lat", "prev_lon", "minute", 60, "hour",
                  "weekday", "tables/pois.parquet", "poi_id", "history_hour"),
    NextPoiLayout("sequential", "history_item_id", "target_item_id", None, None, None, 1, None, None,
                  "tables/items.parquet", "item_id"),
)


def detect_layout(column_names: list[str], where: str) -> NextPoiLayout:
    for layout in LAYOUTS:
        if layout.history in column_names and layout.target in column_names:
            return layout
    known = "; ".join(f"{lay.name}: {lay.history} + {lay.target}" for lay in LAYOUTS)
    raise DataError(f"{where} is not a next-POI dataset: it has none of the history/target column pairs ({known}); "
                    "write one with `rankstack world generate` or `rankstack data convert --option task=next_poi`.")


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between arrays of coordinates in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass
class PoiCatalog:
    """Every POI (or item) that can be retrieved, in a fixed order; its position is the POI *index*.

    Attributes:
        ids: External ids (`poi_id` / `item_id`), int64 [P], ascending.
        lat, lon: Coordinates in degrees [P], or None for data without geography.
        table: The whole catalogue table in `ids` order (names, categories, ... for POI text).
    """

    ids: np.ndarray
    lat: np.ndarray | None
    lon: np.ndarray | None
    table: pa.Table

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue index of each external id; -1 for ids not in the catalogue."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def column(self, name: str) -> np.ndarray | None:
        """A catalogue column as a NumPy array, or None when the catalogue has no such column."""
        if name not in self.table.column_names:
            return None
        return self.table.column(name).to_numpy(zero_copy_only=False)


def load_catalogue(path: Path, id_column: str) -> PoiCatalog:
    if not path.is_file():
        raise DataError(f"the POI catalogue {path} is missing; next-POI datasets need it (the world generator and "
                        "the converters write it under tables/). Regenerate the dataset.")
    table = pq.read_table(path)
    if id_column not in table.column_names:
        raise DataError(f"{path} has no `{id_column}` column; it is not a POI/item catalogue.")
    table = table.sort_by(id_column)
    ids = table.column(id_column).to_numpy().astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{path} lists some `{id_column}` more than once; every POI must appear once.")
    has_geo = "lat" in table.column_names and "lon" in table.column_names
    lat = table.column("lat").to_numpy().astype(np.float64) if has_geo else None
    lon = table.column("lon").to_numpy().astype(np.float64) if has_geo else None
    return PoiCatalog(ids, lat, lon, table)


@dataclass
class NextPoiSamples:
    """One split of next-POI samples, POIs as catalogue indices.

    Attributes:
        user: User id [N]. target: Target POI index [N] (-1: not in the catalogue).
        history: Earlier POIs, oldest first, left-aligned and padded with -1 [N, H].
        lat, lon: Where the user is at the request (degrees) [N], or None.
        time: Request time in seconds [N], or None. hour, weekday: [N] or None.
        history_hour: The hour (0-23) of each history event, aligned with `history` (-1 padding) [N, H], or None.
    """

    user: np.ndarray
    target: np.ndarray
    history: np.ndarray
    lat: np.ndarray | None
    lon: np.ndarray | None
    time: np.ndarray | None
    hour: np.ndarray | None
    weekday: np.ndarray | None
    history_hour: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    def last_poi(self) -> np.ndarray:
        """The most recent history POI of each sample (-1 for an empty history)."""
        length = (self.history >= 0).sum(axis=1)
        return np.where(length > 0, self.history[np.arange(len(self)), np.maximum(length - 1, 0)], -1)


def _samples(table: pa.Table, layout: NextPoiLayout, catalogue: PoiCatalog) -> NextPoiSamples:
    def col(name: str | None, dtype: type) -> np.ndarray | None:
        return None if name is None else table.column(name).to_numpy().astype(dtype)

    def left_aligned(name: str, index: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """A list column as `[N, H]` (-1 padding); `index` maps the flat values (POI ids → catalogue indices)."""
        lists = table.column(name).combine_chunks()
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(lists).to_numpy().astype(np.int64)
        out = np.full((len(lengths), max(1, int(lengths.max(initial=0)))), -1, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        out[np.repeat(np.arange(len(lengths)), lengths), np.arange(len(flat)) - np.repeat(starts, lengths)] = (
            flat if index is None else index(flat))
        return out

    history = left_aligned(layout.history, catalogue.index)
    has_hours = layout.history_hour is not None and layout.history_hour in table.column_names
    time = col(layout.time, np.int64)
    return NextPoiSamples(
        user=col("user_id", np.int64),
        target=catalogue.index(table.column(layout.target).to_numpy()),
        history=history,
        lat=col(layout.lat, np.float64),
        lon=col(layout.lon, np.float64),
        time=None if time is None else time * layout.seconds_per_time_unit,
        hour=col(layout.hour, np.int64),
        weekday=col(layout.weekday, np.int64),
        history_hour=left_aligned(layout.history_hour) if has_hours else None,
    )


@dataclass
class CheckinLog:
    """Train check-ins sorted by (user, time): the only input of co-visit mining, Swing and popularity.

    Attributes: user [E], poi (catalogue index) [E], time in seconds [E], hour [E] and weekday [E] (or None).
    """

    user: np.ndarray
    poi: np.ndarray
    time: np.ndarray
    hour: np.ndarray | None
    weekday: np.ndarray | None

    def __len__(self) -> int:
        return len(self.poi)

    def popularity(self, n_pois: int) -> np.ndarray:
        """Train check-in count of every POI [P]."""
        return np.bincount(self.poi, minlength=n_pois).astype(np.int64)


def _sorted_log(user: np.ndarray, poi: np.ndarray, time: np.ndarray, hour: np.ndarray | None,
                weekday: np.ndarray | None) -> CheckinLog:
    keep = poi >= 0
    order = np.lexsort((time[keep], user[keep]))

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep][order]

    return CheckinLog(take(user), take(poi), take(time), take(hour), take(weekday))


def world_train_checkins(world_dir: Path, train: pa.Table, catalogue: PoiCatalog) -> CheckinLog:
    """The city's organic physical visits of each user up to (and including) their last train target."""
    visits = pq.read_table(world_dir / "tables" / "visits.parquet",
                           columns=["user_id", "poi_id", "timestamp", "action", "request_id"])
    physical = pc.and_(pc.is_in(visits.column("action"), value_set=pa.array(["order", "navigate"])),
                       pc.equal(visits.column("request_id"), 0))
    visits = visits.filter(physical)
    train_user = train.column("user_id").to_numpy()
    train_time = train.column("timestamp").to_numpy()
    users, inverse = np.unique(train_user, return_inverse=True)
    cutoff = np.full(len(users), np.iinfo(np.int64).min)
    np.maximum.at(cutoff, inverse, train_time)
    user = visits.column("user_id").to_numpy()
    time = visits.column("timestamp").to_numpy().astype(np.int64)
    pos = np.clip(np.searchsorted(users, user), 0, len(users) - 1)
    in_train = (users[pos] == user) & (time <= cutoff[pos])
    user, time = user[in_train], time[in_train]
    poi = catalogue.index(visits.column("poi_id").to_numpy()[in_train])
    return _sorted_log(user, poi, time, (time % 86400) // 3600, (time // 86400) % 7)


def sample_train_checkins(train: NextPoiSamples) -> CheckinLog:
    """The train samples' targets as check-ins (datasets without a raw visit log).

    For Foursquare this misses the first check-in of each trajectory (it is never a target); for data without
    time every check-in gets its sample's row number as time, so only order matters.
    """
    time = train.time if train.time is not None else np.arange(len(train), dtype=np.int64)
    return _sorted_log(train.user, train.target, time, train.hour, train.weekday)


@dataclass
class RetrievalData:
    """A next-POI dataset opened for retrieval: catalogue, the three splits, the train check-in log and the
    oracle (`truth/test.parquet`, synthetic city only)."""

    path: Path
    layout: NextPoiLayout
    catalogue: PoiCatalog
    splits: dict[str, NextPoiSamples]
    train_checkins: CheckinLog
    oracle_path: Path | None


def load_retrieval_data(dataset_dir: str | Path) -> RetrievalData:
    """Open a next-POI dataset folder (see the module docstring for the layouts it reads)."""
    path = Path(dataset_dir)
    tables = {}
    for split in SPLITS:
        file = path / f"{split}.parquet"
        if not file.is_file():
            raise DataError(f"{file} is missing; a next-POI dataset needs train, valid and test splits.")
        tables[split] = pq.read_table(file)
    layout = detect_layout(tables["train"].column_names, str(path))
    catalogue = load_catalogue((path / layout.catalogue).resolve(), layout.catalogue_id)
    splits = {name: _samples(table, layout, catalogue) for name, table in tables.items()}
    world_dir = path.parent
    if layout.name == "world" and (world_dir / "tables" / "visits.parquet").is_file():
        checkins = world_train_checkins(world_dir, tables["train"], catalogue)
    else:
        checkins = sample_train_checkins(splits["train"])
    oracle = path / "truth" / "test.parquet"
    return RetrievalData(path, layout, catalogue, splits, checkins, oracle if oracle.is_file() else None)
