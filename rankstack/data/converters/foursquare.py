"""Foursquare check-ins in the STAN array layout (NYC, TKY) → next-POI retrieval or CTR datasets.

Spec: geogr.md §2 (preprocessing, splits, history 50), hemix.md §7 (CTR: 4 negatives among the 50 POIs nearest
the previous check-in; hour, weekday, distance bucket; POI id + ≈500 m grid cell; time-gap bucket as the action;
L_s = 100, L_r = 20), autofas.md §8 (request-, item- and cross-level fields with fetch costs).

Input: `NYC.npy`, int rows `[user_id, poi_id, minute]` (unsorted), and `NYC_POI.npy`, float rows
`[poi_id, latitude, longitude]`. The arrays count minutes from an undocumented origin. Check-ins per hour of
`minute // 60 mod 24` are fewest at hour 14, which is 04:00 local time if minute 0 is 2012-04-03 14:00 New York
time, the first day of the TSMC 2014 NYC release; `time_origin` (default that) fixes hour and weekday.

Preprocessing (both tasks): drop users and POIs with fewer than `min_checkins` check-ins, repeating until
stable; sort each user's check-ins by time; split each user's check-ins by time 80/10/10 (the first
floor(0.8 n) → train, up to floor(0.9 n) → valid, the rest → test); drop valid/test targets whose POI never
occurs in a train check-in. A target's history is its user's check-ins strictly earlier in time (a check-in in
the same minute is not history); a target needs at least one, and its *previous check-in* is the newest of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankstack.data.converters.behavior import (
    EventLog,
    SeenItems,
    ctr_requests,
    sample_from_pools,
    sequence_columns,
)
from rankstack.data.converters.common import SPLITS, Converter, Option, require_file, require_positive
from rankstack.data.dataset import DatasetWriter
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import DataError, RankstackError

NAME = "foursquare-nyc"
#: time-gap buckets: 0 = the user's first check-in, then gaps below each bound (minutes), the last is longer
GAP_BOUNDS_MIN = np.array([10, 30, 60, 180, 360, 720, 1440, 4320, 10080])
#: distance buckets (km) between the previous check-in and a candidate
DISTANCE_BOUNDS_KM = np.array([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0])
KM_PER_DEGREE = 111.32
_POOL_TIERS = (200, 1000)  # wider nearest-POI pools for requests whose 50 nearest are all seen by the user
_CHUNK_TARGETS = 8_000
#: illustrative fetch costs (ms) inside autofas.md §8's ranges: request-level per request, others per candidate
COSTS = {"context": 0.1, "longterm_seq": 0.4, "realtime_seq": 0.2, "item": 0.001, "cross": 0.005}


def locate_arrays(input: Path, city: str) -> tuple[Path, Path]:
    """(check-ins, POIs) files from a folder or from the check-ins file itself."""
    if input.is_dir():
        if not city:
            found = sorted(p.name[: -len("_POI.npy")] for p in input.glob("*_POI.npy"))
            if len(found) != 1:
                raise DataError(f"{input} holds {len(found)} POI arrays ({', '.join(found) or 'none'}); expected "
                                "one `X_POI.npy` beside `X.npy`, or name it with `--option city=X`.")
            city = found[0]
        return (require_file(input / f"{city}.npy", "the STAN check-in array `[user_id, poi_id, minute]`"),
                require_file(input / f"{city}_POI.npy", "the STAN POI array `[poi_id, latitude, longitude]`"))
    require_file(input, "the STAN check-in array `X.npy` or the folder holding it")
    return input, require_file(input.with_name(f"{input.stem}_POI.npy"),
                               "the STAN POI array `[poi_id, latitude, longitude]` beside the check-ins")


def _load(file: Path, columns: tuple[str, ...]) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{file} is not a readable NumPy array ({err}); re-download it.") from None
    if array.ndim != 2 or array.shape[1] != len(columns) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{file} has shape {array.shape} and dtype {array.dtype}; expected numeric rows "
                        f"[{', '.join(columns)}] (STAN layout).")
    if not len(array):
        raise DataError(f"{file} is empty; expected rows [{', '.join(columns)}].")
    return array


def _integers(values: np.ndarray, file: Path, column: str) -> np.ndarray:
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: column `{column}` has {values[row]!r} at row {row}; it must be a non-negative "
                        "integer. Fix or drop the row.")
    return values.astype(np.int64)


def filter_checkins(user: np.ndarray, poi: np.ndarray, min_checkins: int) -> np.ndarray:
    """Mask of the check-ins left after dropping users and POIs with < `min_checkins`, repeated until stable."""
    keep = np.ones(len(user), dtype=bool)
    while True:
        user_counts = np.bincount(user[keep], minlength=int(user.max()) + 1)
        poi_counts = np.bincount(poi[keep], minlength=int(poi.max()) + 1)
        new_keep = keep & (user_counts[user] >= min_checkins) & (poi_counts[poi] >= min_checkins)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def grid_cells(lat: np.ndarray, lon: np.ndarray, grid_m: float) -> np.ndarray:
    """Ids of square cells of about `grid_m` metres (equirectangular, anchored at the south-west corner)."""
    dlat = grid_m / 1000.0 / KM_PER_DEGREE
    dlon = dlat / np.cos(np.radians(lat.mean()))
    rows = np.floor((lat - lat.min()) / dlat).astype(np.int64)
    cols = np.floor((lon - lon.min()) / dlon).astype(np.int64)
    return rows * (int(cols.max()) + 1) + cols


def distances_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Equirectangular distance, accurate to well under 1 % at city scale."""
    x = np.radians(lon2 - lon1) * np.cos(np.radians((lat1 + lat2) / 2))
    y = np.radians(lat2 - lat1)
    return 6371.0 * np.hypot(x, y)


def nearest_pois(lat: np.ndarray, lon: np.ndarray, size: int, block: int = 512) -> np.ndarray:
    """[n_pois, size] positions of each POI's nearest POIs (itself first), nearest first."""
    size = min(size, len(lat))
    out = np.empty((len(lat), size), dtype=np.int64)
    for begin in range(0, len(lat), block):
        d = distances_km(lat[begin:begin + block, None], lon[begin:begin + block, None], lat[None], lon[None])
        part = np.argpartition(d, size - 1, axis=1)[:, :size] if size < len(lat) else np.tile(
            np.arange(len(lat)), (len(d), 1))
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        out[begin:begin + block] = np.take_along_axis(part, order, axis=1)
    return out


def count_before(group: np.ndarray, time: np.ndarray, query_group: np.ndarray, query_time: np.ndarray) -> np.ndarray:
    """For each query, the events of the same group strictly before `query_time`."""
    span = int(max(time.max(), query_time.max())) + 1
    keys = np.sort(group * span + time)
    return (np.searchsorted(keys, query_group * span + query_time, side="left")
            - np.searchsorted(keys, query_group * span, side="left"))


def _local_time(minutes: np.ndarray, time_origin: str, converter: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        origin = datetime.fromisoformat(time_origin)
    except ValueError:
        raise RankstackError(f"converter `{converter}`: option `time_origin` must be an ISO date-time such as "
                             f"2012-04-03T14:00, got {time_origin!r}.") from None
    origin_minute = origin.hour * 60 + origin.minute
    local = minutes + origin_minute
    hour = (local // 60) % 24
    weekday = (local // 1440 + origin.weekday()) % 7  # 0 = Monday
    return hour, weekday


def check_options(converter: str, task: str, min_checkins: int, history_len: int, negatives: int, pool_size: int,
                  seq_len: int, realtime_len: int, grid_m: float, trajectory_gap_h: float,
                  sample_requests: dict[str, str]) -> dict[str, int]:
    """Check the options every check-in converter shares; returns `sample_requests` as split → count."""
    if task not in ("next_poi", "ctr"):
        raise RankstackError(f"converter `{converter}`: option `task` must be next_poi or ctr, got {task!r}.")
    for option, value in (("min_checkins", min_checkins), ("history_len", history_len), ("negatives", negatives),
                          ("pool_size", pool_size), ("realtime_len", realtime_len), ("grid_m", grid_m),
                          ("trajectory_gap_h", trajectory_gap_h)):
        require_positive(value, option, converter)
    if seq_len <= realtime_len:
        raise RankstackError(f"converter `{converter}`: `seq_len` ({seq_len}) must exceed `realtime_len` "
                             f"({realtime_len}).")
    sample = {}
    for name, value in sample_requests.items():
        if name not in SPLITS or not value.isdigit() or int(value) < 1:
            raise RankstackError(f"converter `{converter}`: option `sample_requests` takes split:count pairs with splits "
                                 f"among {', '.join(SPLITS)} and positive counts, got {name}:{value}.")
        sample[name] = int(value)
    if sample and task != "ctr":
        raise RankstackError(f"converter `{converter}`: option `sample_requests` applies to task=ctr only.")
    if pool_size < negatives:
        raise RankstackError(f"converter `{converter}`: `pool_size` ({pool_size}) must be at least `negatives` "
                             f"({negatives}).")
    return sample


def convert_foursquare(input: Path, out: Path, task: str, city: str, min_checkins: int, history_len: int,
                       negatives: int, pool_size: int, seq_len: int, realtime_len: int, grid_m: float,
                       trajectory_gap_h: float, time_origin: str, max_users: int, sample_requests: dict[str, str],
                       seed: int) -> Path:
    """Convert STAN check-in arrays into next-POI samples (`task=next_poi`) or CTR requests (`task=ctr`).

    Options:
        task: `next_poi` (default) or `ctr`.
        city: the array name when the input folder holds several (`NYC` for NYC.npy + NYC_POI.npy).
        min_checkins: drop users and POIs with fewer check-ins, repeatedly (default 10).
        grid_m: grid cell side in metres (default 500).
        time_origin: local date-time of minute 0 (default 2012-04-03T14:00, see the module docstring).
        max_users: keep only the N lowest user ids after filtering (0 = all), for quick runs.
        sample_requests: ctr only, requests kept per split, e.g. `train:1000,valid:200,test:400` (a split not
            named keeps all). The sample is drawn after every feature is computed over the whole log, so a
            sampled request's rows equal those of the full conversion (up to its negatives): the pre-ranking view
            of autofas.md §8 (`negatives=199`) is a sample of the ordinary conversion.
        seed: seed of the negative sampler and of `sample_requests` (ctr).

    `task=next_poi` (geogr.md §2): each user's stream is cut into trajectories at gaps over `trajectory_gap_h`
    hours (default 24). Train targets: every train check-in that is not the first of its trajectory; valid/test
    targets: the last check-in of each trajectory of two or more check-ins that lies in that split. Columns:
    request_id, user_id (keys); history_poi_id (group poi_id), history_time_gap (group time_gap: bucket of the
    gap to the user's check-in before it), history_hour (group hour) — at most `history_len` (default 50),
    oldest first; context hour, weekday (target time), prev_grid_cell (group grid_cell), prev_lat, prev_lon
    (the previous check-in); target_poi_id (item, group poi_id); minute (meta: the target's time in array
    minutes). No label: the target is the answer.

    `task=ctr` (hemix.md §7): every check-in with a history is a positive (split 80/10/10 as above), plus
    `negatives` (default 4) POIs drawn among the `pool_size` (default 50) POIs nearest the previous check-in
    that the user **never** checked into (widened to the nearest 200, then 1000, for the rare requests without
    enough). Columns: request_id, user_id (keys); minute (meta: the request time); hour, weekday, prev_poi_id,
    prev_grid_cell (context); poi_id, grid_cell, poi_popularity (check-ins at the POI by anyone strictly before the request) (item); distance_km,
    distance_bucket, user_cell_visits (the user's earlier check-ins in the candidate's cell) (cross); click
    (label); longterm_/realtime_ poi_id, grid_cell, action (the time-gap bucket), at most `seq_len` (default
    100) events, the newest `realtime_len` (default 20) real-time. Every feature has an illustrative fetch
    `cost_ms` (autofas.md §8).

    Both write `tables/pois.parquet` (poi_id, lat, lon, grid_cell) for the POIs kept.
    """
    sample = check_options(NAME, task, min_checkins, history_len, negatives, pool_size, seq_len, realtime_len, grid_m,
                           trajectory_gap_h, sample_requests)
    checkin_file, poi_file = locate_arrays(input, city)
    checkins = _load(checkin_file, ("user_id", "poi_id", "minute"))
    poi_rows = _load(poi_file, ("poi_id", "latitude", "longitude"))
    user = _integers(checkins[:, 0], checkin_file, "user_id")
    poi = _integers(checkins[:, 1], checkin_file, "poi_id")
    minute = _integers(checkins[:, 2], checkin_file, "minute")
    poi_ids = _integers(poi_rows[:, 0], poi_file, "poi_id")
    source = Checkins(user, poi, minute, poi_ids, poi_rows[:, 1].astype(np.float64),
                      poi_rows[:, 2].astype(np.float64), checkin_file, poi_file)
    return write_checkins(source, out, NAME, task, time_origin, min_checkins, history_len, trajectory_gap_h, negatives,
                          pool_size, seq_len, realtime_len, grid_m, max_users, sample, seed)


@dataclass(frozen=True)
class Checkins:
    """A check-in log as arrays (ids non-negative integers, `minute` counted from the converter's time origin) and
    the POIs' coordinates, with the files they came from (for error messages)."""

    user: np.ndarray
    poi: np.ndarray
    minute: np.ndarray
    poi_ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    checkin_file: Path
    poi_file: Path
    columns: tuple[str, str, str] = ("poi_id", "latitude", "longitude")  # POI, latitude, longitude, in messages


def write_checkins(source: Checkins, out: Path, converter: str, task: str, time_origin: str, min_checkins: int,
                   history_len: int, trajectory_gap_h: float, negatives: int, pool_size: int, seq_len: int,
                   realtime_len: int, grid_m: float, max_users: int, sample: dict[str, int], seed: int,
                   tables: dict[str, pa.Table] | None = None) -> Path:
    """The dataset of `convert_foursquare`'s docstring from a check-in log; `tables` are written beside
    `tables/pois.parquet` as `tables/<name>.parquet`."""
    user, poi, minute, poi_ids = source.user, source.poi, source.minute, source.poi_ids
    lat_all, lon_all, checkin_file, poi_file = source.lat, source.lon, source.checkin_file, source.poi_file
    poi_column, lat_column, lon_column = source.columns
    for column, values, bound in ((lat_column, lat_all, 90), (lon_column, lon_all, 180)):
        bad = ~np.isfinite(values) | (np.abs(values) > bound)
        if bad.any():
            raise DataError(f"{poi_file}: column `{column}` has {float(values[bad][0])} at row {np.flatnonzero(bad)[0]};"
                            f" it must be a finite number in [-{bound}, {bound}]. Fix the row.")
    position_of = np.full(max(int(poi_ids.max()), int(poi.max())) + 1, -1, dtype=np.int64)
    position_of[poi_ids] = np.arange(len(poi_ids))
    missing = position_of[poi] < 0
    if missing.any():
        raise DataError(f"{checkin_file}: column `{poi_column}` has {int(missing.sum())} check-ins at POIs without "
                        f"coordinates in {poi_file} (first: POI {poi[missing][0]}); add the POIs or drop the rows.")

    keep = filter_checkins(user, poi, min_checkins)
    if max_users:
        keep &= np.isin(user, np.unique(user[keep])[:max_users])
    if not keep.any():
        raise DataError(f"{checkin_file}: no check-ins left after dropping users and POIs with fewer than "
                        f"{min_checkins}; lower `--option min_checkins=`.")
    kept_pois = np.unique(poi[keep])
    lat, lon = lat_all[position_of[kept_pois]], lon_all[position_of[kept_pois]]
    cells = grid_cells(lat, lon, grid_m)
    cell_of = np.zeros(int(kept_pois.max()) + 1, dtype=np.int64)
    cell_of[kept_pois] = cells
    slot_of = np.full(int(kept_pois.max()) + 1, -1, dtype=np.int64)  # POI id → row in the kept-POI arrays
    slot_of[kept_pois] = np.arange(len(kept_pois))

    log = EventLog.from_events(user[keep], poi[keep], minute[keep])
    gap = np.diff(log.time, prepend=0)
    first = log.position == 0
    gap_bucket = np.where(first, 0, 1 + np.searchsorted(GAP_BOUNDS_MIN, gap, side="right"))
    hour, weekday = _local_time(log.time, time_origin, converter)
    n_user = log.position + log.rank_from_end + 1
    split = np.where(log.position < (8 * n_user) // 10, "train",
                     np.where(log.position < (9 * n_user) // 10, "valid", "test"))
    has_history = log.history_end > log.user_start
    in_train = np.zeros(len(cell_of), dtype=bool)
    in_train[log.item[split == "train"]] = True
    eligible = has_history & ((split == "train") | in_train[log.item])
    prev = log.history_end - 1  # the previous check-in, for targets with a history

    if task == "next_poi":
        log.fields.update(poi_id=log.item, time_gap=gap_bucket, hour=hour)
        starts = first | (gap > trajectory_gap_h * 60)
        last_of_trajectory = np.append(starts[1:], True)
        targets = {"train": np.flatnonzero(eligible & (split == "train") & ~starts)}
        for name in ("valid", "test"):
            targets[name] = np.flatnonzero(eligible & (split == name) & last_of_trajectory & ~starts)
        schema = _next_poi_schema(history_len)
        with DatasetWriter(out, schema) as writer:
            for name in SPLITS:
                t = targets[name]
                p = prev[t]
                writer.write(name, {
                    "request_id": t, "user_id": log.user[t],
                    "history_poi_id": log.history("poi_id", t, history_len),
                    "history_time_gap": log.history("time_gap", t, history_len),
                    "history_hour": log.history("hour", t, history_len),
                    "hour": hour[t], "weekday": weekday[t], "prev_grid_cell": cell_of[log.item[p]],
                    "prev_lat": lat[slot_of[log.item[p]]], "prev_lon": lon[slot_of[log.item[p]]],
                    "target_poi_id": log.item[t], "minute": log.time[t],
                })
            _write_pois(writer, kept_pois, lat, lon, cells, tables)
        return out

    log.fields.update(poi_id=log.item, grid_cell=cell_of[log.item], action=gap_bucket)
    pools = nearest_pois(lat, lon, max(pool_size, *_POOL_TIERS))
    pools = kept_pois[pools]  # POI ids
    seen = SeenItems(log.user, log.item)
    rng = np.random.default_rng(seed)
    lookups = {"poi_id": np.arange(len(cell_of)), "grid_cell": cell_of}
    with DatasetWriter(out, _ctr_schema(seq_len, realtime_len)) as writer:
        for index, name in enumerate(SPLITS):
            targets = np.flatnonzero(eligible & (split == name))
            if name in sample and sample[name] < len(targets):
                pick = np.random.default_rng([seed, index]).choice(len(targets), sample[name], replace=False)
                targets = targets[np.sort(pick)]
            for begin in range(0, len(targets), _CHUNK_TARGETS):
                t = targets[begin:begin + _CHUNK_TARGETS]
                prev_poi = log.item[prev[t]]
                negs = _geo_negatives(rng, log.user[t], negatives, pools[slot_of[prev_poi]], pool_size, seen)
                rows = ctr_requests(log, t, negs, lookups, seq_len, realtime_len)
                r = rows.request
                cand = slot_of[rows.item]
                dist = distances_km(lat[slot_of[prev_poi[r]]], lon[slot_of[prev_poi[r]]], lat[cand], lon[cand])
                request_time = log.time[t][r]
                writer.write(name, {
                    "request_id": t[r], "user_id": log.user[t][r], "minute": request_time,
                    "hour": hour[t][r], "weekday": weekday[t][r],
                    "prev_poi_id": prev_poi[r], "prev_grid_cell": cell_of[prev_poi[r]],
                    **rows.columns,
                    "poi_popularity": count_before(log.item, log.time, rows.item, request_time).astype(np.float32),
                    "distance_km": dist.astype(np.float32),
                    "distance_bucket": np.searchsorted(DISTANCE_BOUNDS_KM, dist, side="right"),
                    "user_cell_visits": count_before(
                        log.user * (int(cells.max()) + 1) + log.fields["grid_cell"], log.time,
                        log.user[t][r] * (int(cells.max()) + 1) + cell_of[rows.item], request_time,
                    ).astype(np.float32),
                })
        _write_pois(writer, kept_pois, lat, lon, cells, tables)
    return out


def _geo_negatives(rng: np.random.Generator, users: np.ndarray, k: int, pools: np.ndarray, pool_size: int,
                   seen: SeenItems) -> np.ndarray:
    """Negatives among the `pool_size` nearest POIs, widening the pool for the requests that lack enough."""
    negs, ok = sample_from_pools(rng, users, k, pools[:, :pool_size], seen)
    for size in _POOL_TIERS:
        if ok.all():
            break
        todo = np.flatnonzero(~ok)
        negs[todo], ok[todo] = sample_from_pools(rng, users[todo], k, pools[todo, :size], seen)
    if not ok.all():
        user = int(users[np.flatnonzero(~ok)[0]])
        raise DataError(f"user {user} checked into almost every POI near its previous check-in, so {k} unseen "
                        "negatives cannot be drawn from the nearest POIs; lower `--option negatives=`.")
    return negs


def _write_pois(writer: DatasetWriter, poi: np.ndarray, lat: np.ndarray, lon: np.ndarray, cells: np.ndarray,
                tables: dict[str, pa.Table] | None) -> None:
    (writer.path / "tables").mkdir()
    pq.write_table(pa.table({"poi_id": poi, "lat": lat, "lon": lon, "grid_cell": cells}),
                   writer.path / "tables" / "pois.parquet")
    for name, table in (tables or {}).items():
        pq.write_table(table, writer.path / "tables" / f"{name}.parquet")


def _next_poi_schema(history_len: int) -> Schema:
    columns = [
        ColumnSpec("request_id", "categorical", "key", description="the target check-in's position in the log"),
        ColumnSpec("user_id", "categorical", "key"),
        ColumnSpec("history_poi_id", "sequence", "history", embedding_group="poi_id", max_len=history_len,
                   description="POIs of the user's strictly earlier check-ins, oldest first"),
        ColumnSpec("history_time_gap", "sequence", "history", embedding_group="time_gap", max_len=history_len,
                   description="bucket of each history check-in's gap to the one before it (0 = first)"),
        ColumnSpec("history_hour", "sequence", "history", embedding_group="hour", max_len=history_len,
                   description="local hour of each history check-in"),
        ColumnSpec("hour", "categorical", "context", description="local hour of the target check-in"),
        ColumnSpec("weekday", "categorical", "context", description="weekday of the target check-in, 0 = Monday"),
        ColumnSpec("prev_grid_cell", "categorical", "context", embedding_group="grid_cell",
                   description="grid cell of the previous check-in (where the user is)"),
        ColumnSpec("prev_lat", "numeric", "context", dtype="float64", description="latitude of the previous check-in"),
        ColumnSpec("prev_lon", "numeric", "context", dtype="float64",
                   description="longitude of the previous check-in"),
        ColumnSpec("target_poi_id", "categorical", "item", embedding_group="poi_id", description="the next POI"),
        ColumnSpec("minute", "numeric", "meta", dtype="int64",
                   description="time of the target check-in (array minutes)"),
    ]
    return Schema(name="foursquare-next-poi", columns=columns, group_key="user_id", request_key="request_id",
                  description="Foursquare next-POI samples (geogr.md §2)")


def _ctr_schema(seq_len: int, realtime_len: int) -> Schema:
    def col(name: str, kind: str, role: str, description: str, **kw) -> ColumnSpec:
        return ColumnSpec(name, kind, role, cost_ms=COSTS.get(role, 0.0), description=description, **kw)

    columns = [
        col("request_id", "categorical", "key", "the positive check-in's position in the log"),
        col("user_id", "categorical", "key", "raw user id (GAUC group)"),
        col("minute", "numeric", "meta", "time of the request (array minutes)", dtype="int64"),
        col("hour", "categorical", "context", "local hour of the request"),
        col("weekday", "categorical", "context", "weekday of the request, 0 = Monday"),
        col("prev_poi_id", "categorical", "context", "POI of the previous check-in", embedding_group="poi_id"),
        col("prev_grid_cell", "categorical", "context", "grid cell of the previous check-in",
            embedding_group="grid_cell"),
        col("poi_id", "categorical", "item", "candidate POI"),
        col("grid_cell", "categorical", "item", "candidate's grid cell"),
        col("poi_popularity", "numeric", "item", "check-ins at the candidate strictly before the request",
            num_buckets=16),
        col("distance_km", "numeric", "cross", "distance from the previous check-in to the candidate",
            num_buckets=16),
        col("distance_bucket", "categorical", "cross",
            f"distance bucket, bounds {DISTANCE_BOUNDS_KM.tolist()} km"),
        col("user_cell_visits", "numeric", "cross", "the user's check-ins in the candidate's cell before the request",
            num_buckets=8),
        col("click", "numeric", "label", "1 for the real check-in, 0 for sampled negatives"),
        *sequence_columns({"poi_id": "poi_id", "grid_cell": "grid_cell", "action": "action"}, seq_len,
                          realtime_len, COSTS),
    ]
    return Schema(name="foursquare-ctr", columns=columns, group_key="user_id", request_key="request_id",
                  description="Foursquare check-ins as CTR requests with geo negatives (hemix.md §7)")


#: the options every check-in converter shares (`check_options`, `write_checkins`), around its own
TASK_OPTION = Option("task", "next_poi", "next_poi (retrieval samples) or ctr (positives + geo negatives)",
                     choices=("next_poi", "ctr"))
SAMPLE_OPTIONS = (
    Option("min_checkins", 10, "drop users and POIs with fewer check-ins, repeatedly"),
    Option("history_len", 50, "next_poi: history check-ins kept"),
    Option("trajectory_gap_h", 24.0, "next_poi: a gap over this many hours starts a new trajectory"),
    Option("negatives", 4, "ctr: negatives per positive"),
    Option("pool_size", 50, "ctr: negatives come from this many POIs nearest the previous check-in"),
    Option("seq_len", 100, "ctr: history events kept in all (L_s)"),
    Option("realtime_len", 20, "ctr: newest history events in the real-time sequence (L_r)"),
    Option("grid_m", 500.0, "grid cell side in metres"),
)
SUBSET_OPTIONS = (
    Option("max_users", 0, "keep only the N lowest user ids after filtering (0 = all)"),
    Option("sample_requests", "", "ctr: requests kept per split, e.g. train:1000,valid:200,test:400 (default all)",
           kind="map"),
    Option("seed", 0, "seed of the negative sampler"),
)

CONVERTER = Converter(
    name=NAME,
    description="Foursquare check-ins in the STAN arrays (NYC.npy + NYC_POI.npy) → next-POI samples or CTR "
                "requests with negatives near the previous check-in",
    options=(
        TASK_OPTION,
        Option("city", "", "array name when the folder holds several (NYC for NYC.npy)"),
        *SAMPLE_OPTIONS,
        Option("time_origin", "2012-04-03T14:00", "local date-time of minute 0 of the arrays"),
        *SUBSET_OPTIONS,
    ),
    run=convert_foursquare,
)
