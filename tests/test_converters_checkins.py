"""The `checkins` converter (your own check-in log): the same log given as a CSV, as string ids with a POI table
and zoned times, or as epoch seconds converts to exactly what `foursquare-nyc` makes of the STAN arrays; bad
input names the file, the column and the fix."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from rankstack.data.converters import convert
from rankstack.data.dataset import Dataset
from rankstack.errors import DataError
from tests._converters import assert_no_output, real, rows
from tests.test_converters_behavior import stan  # noqa: F401 (the fixture: a hand-made STAN log)

ORIGIN = datetime(2012, 4, 3, 14, 0)  # the foursquare-nyc converter's default minute 0
SPLITS = ("train", "valid", "test")
OPTIONS = {
    "next_poi": {"min_checkins": 1},
    "ctr": {"task": "ctr", "min_checkins": 1, "negatives": 2, "pool_size": 3, "seq_len": 6, "realtime_len": 2},
}


def stan_log(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "TOY.npy").astype(np.int64), np.load(folder / "TOY_POI.npy")


def local(minute: int) -> datetime:
    return ORIGIN + timedelta(minutes=int(minute))


def assert_same_dataset(ours: Path, reference: Path, user_ids: dict | None = None, poi_ids: dict | None = None,
                        ) -> None:
    """Every split row for row, and the POI table, equal; ids read back through the id tables when given."""
    assert Dataset.open(ours).schema.columns == Dataset.open(reference).schema.columns
    poi_columns = {"poi_id", "target_poi_id", "prev_poi_id", "history_poi_id", "longterm_poi_id", "realtime_poi_id"}

    def raw(row: dict) -> dict:
        out = dict(row)
        if user_ids is not None:
            out["user_id"] = user_ids[row["user_id"]]
        for key in poi_columns & set(row) if poi_ids is not None else ():
            value = row[key]
            out[key] = [poi_ids[v] for v in value] if isinstance(value, list) else poi_ids[value]
        return out

    for split in SPLITS:
        assert [raw(r) for r in rows(ours, split)] == rows(reference, split), split
    pois = pq.read_table(ours / "tables" / "pois.parquet").to_pylist()
    expected = pq.read_table(reference / "tables" / "pois.parquet").to_pylist()
    if poi_ids is not None:
        pois = sorted(({**p, "poi_id": poi_ids[p["poi_id"]]} for p in pois), key=lambda p: p["poi_id"])
    assert [(p["poi_id"], p["grid_cell"]) for p in pois] == [(p["poi_id"], p["grid_cell"]) for p in expected]
    for key in ("lat", "lon"):
        assert [p[key] for p in pois] == pytest.approx([p[key] for p in expected], abs=1e-9)


@pytest.mark.parametrize("task", ["next_poi", "ctr"])
def test_a_csv_log_converts_like_the_stan_arrays(task, stan, tmp_path):  # noqa: F811
    checkins, pois = stan_log(stan)
    where = {int(p): (lat, lon) for p, lat, lon in pois}
    table = pa.table({
        "user_id": checkins[:, 0], "poi_id": checkins[:, 1],
        "time": [local(m).isoformat(sep=" ") for m in checkins[:, 2]],
        "lat": [where[p][0] for p in checkins[:, 1]], "lon": [where[p][1] for p in checkins[:, 1]],
    })
    pa_csv.write_csv(table, tmp_path / "log.csv")
    ours = convert("checkins", tmp_path / "log.csv", tmp_path / "ours", OPTIONS[task])
    reference = convert("foursquare-nyc", stan, tmp_path / "reference", OPTIONS[task])
    assert_same_dataset(ours, reference)
    assert not (ours / "tables" / "poi_ids.parquet").exists()  # integer ids are kept as they are


def test_string_ids_a_poi_table_and_zoned_times_with_a_per_row_offset(stan, tmp_path):  # noqa: F811
    """Foursquare's TSMC layout: venue ids as text, UTC times in its own format, a per-row timezone offset."""
    checkins, pois = stan_log(stan)
    offsets = np.where(checkins[:, 0] == 1, -240, 120)  # minutes from UTC, per check-in
    utc = [local(m) - timedelta(minutes=int(o)) for m, o in zip(checkins[:, 2], offsets)]
    pa_csv.write_csv(pa.table({
        "userId": [f"u{u}" for u in checkins[:, 0]], "venueId": [f"v{p:03d}" for p in checkins[:, 1]],
        "utcTimestamp": [t.strftime("%a %b %d %H:%M:%S +0000 %Y") for t in utc], "timezoneOffset": offsets,
    }), tmp_path / "tsmc.tsv", pa_csv.WriteOptions(delimiter="\t"))
    pq.write_table(pa.table({"venueId": [f"v{int(p):03d}" for p in pois[::-1, 0]], "latitude": pois[::-1, 1],
                             "longitude": pois[::-1, 2]}), tmp_path / "venues.parquet")
    ours = convert("checkins", tmp_path / "tsmc.tsv", tmp_path / "ours", {
        "min_checkins": 1, "user_column": "userId", "poi_column": "venueId", "time_column": "utcTimestamp",
        "time_format": "%a %b %d %H:%M:%S %z %Y", "offset_column": "timezoneOffset",
        "pois": str(tmp_path / "venues.parquet"), "lat_column": "latitude", "lon_column": "longitude"})
    users = {r["user_id"]: int(r["raw"][1:]) for r in pq.read_table(ours / "tables" / "user_ids.parquet").to_pylist()}
    venues = {r["poi_id"]: int(r["raw"][1:]) for r in pq.read_table(ours / "tables" / "poi_ids.parquet").to_pylist()}
    reference = convert("foursquare-nyc", stan, tmp_path / "reference", {"min_checkins": 1})
    assert_same_dataset(ours, reference, users, venues)


def test_epoch_seconds_with_a_fixed_utc_offset(stan, tmp_path):  # noqa: F811
    checkins, pois = stan_log(stan)
    where = {int(p): (lat, lon) for p, lat, lon in pois}
    epoch = [int((local(m) - timedelta(hours=5) - datetime(1970, 1, 1)).total_seconds()) for m in checkins[:, 2]]
    pq.write_table(pa.table({"user_id": checkins[:, 0], "poi_id": checkins[:, 1], "time": epoch,
                             "lat": [where[p][0] for p in checkins[:, 1]], "lon": [where[p][1] for p in checkins[:, 1]]}),
                   tmp_path / "log.parquet")
    ours = convert("checkins", tmp_path / "log.parquet", tmp_path / "ours", {"min_checkins": 1, "utc_offset_h": 5})
    assert_same_dataset(ours, convert("foursquare-nyc", stan, tmp_path / "reference", {"min_checkins": 1}))


def write_log(path: Path, **columns) -> Path:
    base = {"user_id": [1, 1, 2], "poi_id": ["a", "b", "a"], "time": ["2024-01-01 08:00", "2024-01-01 09:00",
                                                                       "2024-01-02 10:00"],
            "lat": [40.70, 40.71, 40.70], "lon": [-74.0, -74.0, -74.0]}
    pa_csv.write_csv(pa.table({k: v for k, v in {**base, **columns}.items() if v is not None}), path)
    return path


@pytest.mark.parametrize(("columns", "options", "message"), [
    ({"time": None}, {}, r"log\.csv; its columns are user_id, poi_id, lat, lon\. Name the columns with --option "
                         r"user_column="),
    ({"time": ["2024-01-01 08:00", "yesterday", "2024-01-02 10:00"]}, {}, r"log\.csv: column `time` cannot be read "
                                                                           r"as times .*yesterday.*time_format="),
    ({"time": ["01/01/2024", "02/01/2024", "bad"]}, {"time_format": "%d/%m/%Y"},
     r"column `time` has 'bad' at row 2, which does not match time_format"),
    ({"lat": [40.70, None, 40.70]}, {}, r"log\.csv: column `lat` is empty at row 1"),
    ({"lat": [40.70, 95.0, 40.70]}, {}, r"log\.csv: column `lat` has 95\.0 at row 1; it must be a finite number in "
                                        r"\[-90, 90\]"),
    ({"user_id": [1, -1, 2]}, {}, r"log\.csv: column `user_id` has -1 at row 1; integer ids must be non-negative"),
])
def test_bad_logs_name_the_file_the_column_and_the_fix(columns, options, message, tmp_path):
    path = write_log(tmp_path / "log.csv", **columns)
    with pytest.raises(DataError, match=message):
        convert("checkins", path, tmp_path / "out", {"min_checkins": 1, **options})
    assert_no_output(tmp_path / "out")


def test_a_poi_table_must_cover_every_checkin_once(tmp_path):
    path = write_log(tmp_path / "log.csv", lat=None, lon=None)
    pa_csv.write_csv(pa.table({"poi_id": ["a", "a"], "lat": [40.7, 40.7], "lon": [-74.0, -74.0]}), tmp_path / "p.csv")
    with pytest.raises(DataError, match=r"p\.csv: column `poi_id` lists a POI more than once"):
        convert("checkins", path, tmp_path / "out", {"min_checkins": 1, "pois": str(tmp_path / "p.csv")})
    pa_csv.write_csv(pa.table({"poi_id": ["a"], "lat": [40.7], "lon": [-74.0]}), tmp_path / "p.csv")
    with pytest.raises(DataError, match=r"log\.csv: column `poi_id` has 1 check-ins at POIs without coordinates in "
                                        r".*p\.csv"):
        convert("checkins", path, tmp_path / "out", {"min_checkins": 1, "pois": str(tmp_path / "p.csv")})
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(DataError, match=r"unknown file type `\.json`"):
        convert("checkins", tmp_path / "log.json", tmp_path / "out", {})
    assert_no_output(tmp_path / "out")


def test_the_real_nyc_log_as_a_csv_converts_like_its_stan_arrays(tmp_path):
    folder = real("foursquare-nyc")
    checkins, pois = np.load(folder / "NYC.npy").astype(np.int64), np.load(folder / "NYC_POI.npy")
    start = int(checkins[:, 2].min())
    pa_csv.write_csv(pa.table({"user_id": checkins[:, 0], "poi_id": checkins[:, 1],
                               "time": [local(m).isoformat(sep=" ") for m in checkins[:, 2]]}), tmp_path / "nyc.csv")
    pa_csv.write_csv(pa.table({"poi_id": pois[:, 0].astype(np.int64), "lat": pois[:, 1], "lon": pois[:, 2]}),
                     tmp_path / "pois.csv")
    options = {"max_users": 40}
    ours = convert("checkins", tmp_path / "nyc.csv", tmp_path / "ours", {**options, "pois": str(tmp_path / "pois.csv")})
    reference = convert("foursquare-nyc", folder, tmp_path / "reference", options)
    if start:  # minute 0 of ours is the first check-in; shift the reference's meta column to compare
        for split in SPLITS:
            table = pq.read_table(reference / f"{split}.parquet")
            minute = pa.array(table.column("minute").to_numpy() - start)
            pq.write_table(table.set_column(table.column_names.index("minute"), "minute", minute),
                           reference / f"{split}.parquet")
    assert_same_dataset(ours, reference)
