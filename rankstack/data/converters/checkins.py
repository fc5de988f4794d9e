"""Your own check-in log (CSV, TSV or Parquet) → next-POI retrieval or CTR datasets, as `foursquare-nyc` builds them.

One row per check-in: a user, a POI, a time and the POI's coordinates (in the same file, or in a POI table given
by `--option pois=PATH`). Column names are options. Ids may be integers (kept as they are) or strings (numbered
in order of first appearance; `tables/user_ids.parquet` and `tables/poi_ids.parquet` map the numbers back).
Everything after reading (filtering, splits, trajectories, samples, negatives, columns) is
`foursquare.write_checkins`, so the output is the `foursquare-nyc` converter's for the same log.

Times: naive ones (a timestamp without a zone, or an ISO 8601 string without an offset) are local time as
written. Times with a zone (a zoned timestamp, an ISO string ending in `Z` or `+hh:mm`, a `time_format` with `%z`)
and numbers (Unix epoch seconds) are UTC: local time adds `utc_offset_h` hours, or the row's `offset_column`
minutes (Foursquare's TSMC files carry one, `timezoneOffset`). Minute 0 of the output is the earliest local
check-in time, so `hour` and `weekday` are local.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.common import Converter, Option, read_table
from rankstack.data.converters.foursquare import (
    SAMPLE_OPTIONS,
    SUBSET_OPTIONS,
    TASK_OPTION,
    Checkins,
    check_options,
    write_checkins,
)
from rankstack.errors import DataError

NAME = "checkins"
COLUMN_FIX = ("Name the columns with --option user_column=, poi_column=, time_column=, lat_column=, lon_column= "
              "(docs/converters.md, `checkins`).")


def encode_ids(columns: list[pa.ChunkedArray], files: list[Path], name: str) -> tuple[list[np.ndarray], pa.Table | None]:
    """Integer ids of one kind of entity from several columns: non-negative integers as they are; otherwise
    (strings, or integer and string columns mixed) the text numbered in order of first appearance, with the
    table `(name, raw)` that maps the numbers back."""
    if all(pa.types.is_integer(c.type) for c in columns):
        values = [c.to_numpy().astype(np.int64) for c in columns]
        for array, file in zip(values, files):
            if (array < 0).any():
                row = int(np.flatnonzero(array < 0)[0])
                raise DataError(f"{file}: column `{name}` has {array[row]} at row {row}; integer ids must be "
                                "non-negative (or give them as text).")
        return values, None
    text = pa.chunked_array([chunk for c in columns for chunk in c.cast(pa.string()).chunks], type=pa.string())
    encoded = pc.dictionary_encode(text).combine_chunks()
    codes = encoded.indices.to_numpy().astype(np.int64)
    bounds = np.cumsum([0, *(len(c) for c in columns)])
    mapping = pa.table({name: np.arange(len(encoded.dictionary), dtype=np.int64), "raw": encoded.dictionary})
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])], mapping


def local_seconds(column: pa.ChunkedArray, file: Path, name: str, time_format: str, utc_offset_h: float,
                  offsets_min: np.ndarray | None) -> np.ndarray:
    """Local time of each row in whole seconds since 1970-01-01 (see the module docstring for the rules)."""
    times = column.combine_chunks()
    zoned = True
    if pa.types.is_integer(times.type) or pa.types.is_floating(times.type):
        seconds = times.to_numpy().astype(np.float64)
        if not np.isfinite(seconds).all():
            row = int(np.flatnonzero(~np.isfinite(seconds))[0])
            raise DataError(f"{file}: column `{name}` has {seconds[row]} at row {row}; epoch seconds must be finite.")
        seconds = np.floor(seconds).astype(np.int64)
    else:
        if time_format:
            if not pa.types.is_string(times.type):
                times = times.cast(pa.string())
            parsed = pc.strptime(times, format=time_format, unit="s", error_is_null=True)
            if parsed.null_count:
                row = int(pc.index(pc.is_null(parsed), True).as_py())
                raise DataError(f"{file}: column `{name}` has {times[row].as_py()!r} at row {row}, which does not "
                                f"match time_format {time_format!r}; fix the row or the format.")
            times = parsed
        elif pa.types.is_string(times.type):
            times = _parse_iso(times, file, name)
        if not pa.types.is_timestamp(times.type):
            raise DataError(f"{file}: column `{name}` is {times.type}; give times as ISO 8601 text, timestamps, epoch "
                            "seconds, or text with --option time_format= (strptime).")
        zoned = times.type.tz is not None
        seconds = times.cast(pa.timestamp("s", tz=times.type.tz)).cast(pa.int64()).to_numpy()
    if not zoned:
        return seconds
    if offsets_min is not None:
        return seconds + np.round(offsets_min * 60).astype(np.int64)
    return seconds + int(round(utc_offset_h * 3600))


def _parse_iso(times: pa.Array, file: Path, name: str) -> pa.Array:
    """ISO 8601 text: naive when no value carries an offset, else every value must (read as UTC)."""
    problem = ""
    for kind in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):
        try:
            return pc.cast(times, kind)
        except pa.ArrowInvalid as err:
            problem = problem or str(err).split(" as a scalar")[0]  # the naive reading's complaint names the value
    raise DataError(f"{file}: column `{name}` cannot be read as times ({problem}); give ISO 8601 text such as "
                    "2012-04-03 18:00:00 (all with or all without an offset), epoch seconds, or "
                    "--option time_format= (strptime, e.g. '%a %b %d %H:%M:%S %z %Y' for Foursquare's TSMC files).")


def convert_checkins(input: Path, out: Path, task: str, user_column: str, poi_column: str, time_column: str,
                     lat_column: str, lon_column: str, pois: str, time_format: str, utc_offset_h: float,
                     offset_column: str, min_checkins: int, history_len: int, trajectory_gap_h: float, negatives: int,
                     pool_size: int, seq_len: int, realtime_len: int, grid_m: float, max_users: int,
                     sample_requests: dict[str, str], seed: int) -> Path:
    """Convert a check-in table into next-POI samples (`task=next_poi`) or CTR requests (`task=ctr`).

    task, min_checkins, history_len, trajectory_gap_h, negatives, pool_size, seq_len, realtime_len, grid_m,
    max_users, sample_requests and seed are `foursquare-nyc`'s options, with the same meaning and output columns.

    Options:
        user_column, poi_column, time_column: the check-in table's columns (default user_id, poi_id, time).
        lat_column, lon_column: coordinate columns (default lat, lon), in the POI table if `pois` names one, else
            in the check-in table (a POI's coordinates are then the mean over its check-ins).
        pois: a CSV, TSV or Parquet table of POIs with `poi_column`, `lat_column`, `lon_column` (default: none).
        time_format: a strptime format for text times that are not ISO 8601 (default: ISO 8601).
        utc_offset_h: hours from UTC to local time for zoned times and epoch seconds (default 0).
        offset_column: a per-row column of minutes from UTC to local time; replaces `utc_offset_h` (default none).
    """
    sample = check_options(NAME, task, min_checkins, history_len, negatives, pool_size, seq_len, realtime_len,
                           grid_m, trajectory_gap_h, sample_requests)
    input = Path(input)
    coordinates = [lat_column, lon_column]
    extra = [offset_column] if offset_column else []
    log = read_table(input, [user_column, poi_column, time_column, *extra, *([] if pois else coordinates)],
                     "the check-in table (one row per check-in)", COLUMN_FIX)
    poi_file = Path(pois) if pois else input
    poi_table = (read_table(poi_file, [poi_column, *coordinates], "the POI table (one row per POI)", COLUMN_FIX)
                 if pois else log.select([poi_column, *coordinates]))
    (user,), user_ids = encode_ids([log.column(user_column)], [input], "user_id")
    (poi, listed), poi_ids = encode_ids([log.column(poi_column), poi_table.column(poi_column)], [input, poi_file],
                                        "poi_id")
    lat, lon = (_coordinate(poi_table.column(c), poi_file, c, bound) for c, bound in zip(coordinates, (90, 180)))
    if not pois:  # one row per check-in: the mean position of each POI
        listed, slot = np.unique(listed, return_inverse=True)
        counts = np.bincount(slot)
        lat, lon = (np.bincount(slot, weights=values) / counts for values in (lat, lon))
    elif len(np.unique(listed)) != len(listed):
        raise DataError(f"{poi_file}: column `{poi_column}` lists a POI more than once; keep one row per POI.")
    offsets = (_coordinate(log.column(offset_column), input, offset_column) if offset_column else None)
    seconds = local_seconds(log.column(time_column), input, time_column, time_format, utc_offset_h, offsets)
    start = int(seconds.min()) // 60 * 60
    origin = datetime.fromtimestamp(start, tz=UTC).replace(tzinfo=None).isoformat(timespec="minutes")
    source = Checkins(user, poi, (seconds - start) // 60, listed, lat, lon, input, poi_file,
                      (poi_column, lat_column, lon_column))
    tables = {name: table for name, table in (("user_ids", user_ids), ("poi_ids", poi_ids)) if table is not None}
    return write_checkins(source, out, NAME, task, origin, min_checkins, history_len, trajectory_gap_h, negatives,
                          pool_size, seq_len, realtime_len, grid_m, max_users, sample, seed, tables)


def _coordinate(column: pa.ChunkedArray, file: Path, name: str, bound: float = np.inf) -> np.ndarray:
    """A numeric column as float64; values must be finite and within ±`bound` (latitude 90, longitude 180)."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(f"{file}: column `{name}` is {column.type}; it must hold numbers.")
    values = column.to_numpy().astype(np.float64)
    bad = ~np.isfinite(values) | (np.abs(values) > bound)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: column `{name}` has {float(values[row])} at row {row}; it must be a finite number"
                        + (f" in [-{bound:g}, {bound:g}]" if np.isfinite(bound) else "") + ". Fix the row.")
    return values


CONVERTER = Converter(
    name=NAME,
    description="your own check-in log (CSV, TSV or Parquet: user, POI, time, coordinates) → next-POI samples or "
                "CTR requests with negatives near the previous check-in, as foursquare-nyc",
    options=(
        TASK_OPTION,
        Option("user_column", "user_id", "the check-in table's user column"),
        Option("poi_column", "poi_id", "the POI column (check-in table and POI table)"),
        Option("time_column", "time", "the check-in time column"),
        Option("lat_column", "lat", "the latitude column (POI table, or the check-in table without one)"),
        Option("lon_column", "lon", "the longitude column"),
        Option("pois", "", "a CSV, TSV or Parquet POI table (default: coordinates in the check-in table)"),
        Option("time_format", "", "strptime format of text times that are not ISO 8601"),
        Option("utc_offset_h", 0.0, "hours from UTC to local time, for zoned times and epoch seconds"),
        Option("offset_column", "", "a column of minutes from UTC to local time per check-in (replaces utc_offset_h)"),
        *SAMPLE_OPTIONS,
        *SUBSET_OPTIONS,
    ),
    run=convert_checkins,
)
