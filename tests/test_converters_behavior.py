"""Behaviour-log converters: the shared CTR/next-item builder, Amazon (S3Rec), Foursquare (STAN) and Taobao
UserBehavior, on hand-made logs with hand-checked answers and on the real files in ../shared/data/."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rankstack.data.converters import convert
from rankstack.data.converters.behavior import (
    EventLog,
    SeenItems,
    ctr_requests,
    sample_from_pools,
    sample_uniform,
)
from rankstack.data.converters.foursquare import filter_checkins
from rankstack.data.dataset import Dataset
from rankstack.errors import DataError
from tests._converters import assert_no_output, real, rows


def requests(table: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for row in table:
        grouped[row["request_id"]].append(row)
    return grouped


# ---- the shared builder --------------------------------------------------------------------------------


def test_history_holds_only_strictly_earlier_events_and_splits_into_longterm_and_realtime() -> None:
    # user 7: items 1..5 at times 10, 20, 20, 30, 40; user 8: items 6, 7 (given out of order)
    log = EventLog.from_events(np.array([8, 7, 7, 7, 7, 7, 8]), np.array([7, 1, 2, 3, 4, 5, 6]),
                               np.array([9, 10, 20, 20, 30, 40, 5]), {"item_id": np.array([7, 1, 2, 3, 4, 5, 6])})
    assert log.item.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert log.rank_from_end.tolist() == [4, 3, 2, 1, 0, 1, 0]
    assert [list(h) for h in log.history("item_id", np.arange(7), 10).to_pylist()] == [
        [], [1], [1], [1, 2, 3], [1, 2, 3, 4], [], [6]]  # items 2 and 3 share time 20: neither sees the other
    rows_ = ctr_requests(log, np.array([4, 2]), np.array([[6, 7], [6, 7]]), {"item_id": np.arange(8)}, seq_len=3,
                         realtime_len=2)
    assert rows_.columns["item_id"].tolist() == [5, 6, 7, 3, 6, 7]
    assert rows_.columns["click"].tolist() == [1, 0, 0, 1, 0, 0]
    assert rows_.columns["realtime_item_id"].to_pylist() == [[3, 4]] * 3 + [[1]] * 3
    assert rows_.columns["longterm_item_id"].to_pylist() == [[2]] * 3 + [[]] * 3


def test_negatives_are_unseen_and_distinct() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 8)
    items = rng.integers(0, 12, size=len(users))
    seen = SeenItems(users, items)
    negatives = sample_uniform(rng, np.arange(50), 3, np.arange(12), seen)
    for user, row in enumerate(negatives):
        assert not set(row) & set(items[users == user])
        assert len(set(row)) == 3
    pools = np.tile(np.arange(12), (50, 1))
    pools[:, 6:] = -1  # padding
    picked, ok = sample_from_pools(rng, np.arange(50), 2, pools, seen)
    for user in range(50):
        eligible = set(range(6)) - set(items[users == user])
        assert ok[user] == (len(eligible) >= 2)
        if ok[user]:
            assert set(picked[user]) <= eligible and len(set(picked[user])) == 2


def test_a_user_who_saw_every_item_gets_a_data_error() -> None:
    seen = SeenItems(np.zeros(4, dtype=np.int64), np.arange(4))
    with pytest.raises(DataError, match="negatives"):
        sample_uniform(np.random.default_rng(0), np.zeros(1, dtype=np.int64), 1, np.arange(4), seen)


# ---- Amazon (S3Rec) ------------------------------------------------------------------------------------


@pytest.fixture
def s3rec(tmp_path: Path) -> Path:
    """A hand-made S3Rec pair: brands 100 and 101 only ever come first; 1, 2, 3 are categories."""
    (tmp_path / "Toy.txt").write_text("1 10 11 12 13 14\n2 20 21 10\n3 30 31\n")
    (tmp_path / "Toy_item2attributes.json").write_text(json.dumps(
        {"10": [100, 1, 2], "11": [1, 3], "12": [101, 1, 2], "13": [], "20": [100, 1], "21": [2, 1],
         "30": [101, 2], "31": [1]}))
    return tmp_path / "Toy.txt"


def test_amazon_ctr_leave_last_out_by_hand(s3rec: Path, tmp_path: Path) -> None:
    out = convert("amazon-s3rec", s3rec, tmp_path / "ctr", {"negatives": "2", "seq_len": "3", "realtime_len": "2"})
    ds = Dataset.open(out)
    assert ds.schema.group_key == "user_id" and ds.schema.request_key == "request_id"
    assert ds.schema.column("longterm_item_id").embedding_group == "item_id"
    assert ds.schema.column("realtime_brand_id").embedding_group == "brand_id"
    positives = {s: [(r["user_id"], r["item_id"], r["longterm_item_id"], r["realtime_item_id"])
                     for r in rows(out, s) if r["click"] == 1] for s in ("train", "valid", "test")}
    assert positives["test"] == [(1, 14, [11], [12, 13]), (2, 10, [], [20, 21]), (3, 31, [], [30])]
    assert positives["valid"] == [(1, 13, [10], [11, 12]), (2, 21, [], [20]), (3, 30, [], [])]
    assert positives["train"] == [(1, 10, [], []), (1, 11, [], [10]), (1, 12, [], [10, 11]), (2, 20, [], [])]
    items_of = {1: {10, 11, 12, 13, 14}, 2: {20, 21, 10}, 3: {30, 31}}
    for split in ("train", "valid", "test"):
        for request in requests(rows(out, split)).values():
            assert [r["click"] for r in request] == [1, 0, 0]
            negatives = [r["item_id"] for r in request[1:]]
            assert len(set(negatives)) == 2 and not set(negatives) & items_of[request[0]["user_id"]]
            assert all(r["realtime_item_id"] == request[0]["realtime_item_id"] for r in request)
    brand = {r["item_id"]: (r["brand_id"], r["category_id"]) for r in rows(out, "train")}
    assert brand[10] == (100, 2) and brand[11] == (0, 3) and brand[12] == (101, 2) and brand[20] == (100, 1)
    items = pq.read_table(out / "tables" / "items.parquet").to_pylist()
    assert {r["item_id"]: r["attribute_ids"] for r in items}[21] == [2, 1]
    assert {r["item_id"]: (r["brand_id"], r["category_id"]) for r in items}[13] == (0, 0)


def test_amazon_ctr_caps_train_positives_and_is_deterministic(s3rec: Path, tmp_path: Path) -> None:
    a = convert("amazon-s3rec", s3rec, tmp_path / "a", {"max_train_per_user": 1, "seed": 3})
    b = convert("amazon-s3rec", s3rec, tmp_path / "b", {"max_train_per_user": 1, "seed": 3})
    c = convert("amazon-s3rec", s3rec, tmp_path / "c", {"max_train_per_user": 1, "seed": 4, "negatives": 3})
    assert [(r["user_id"], r["item_id"]) for r in rows(a, "train") if r["click"]] == [(1, 12), (2, 20)]
    assert pq.read_table(a / "train.parquet").equals(pq.read_table(b / "train.parquet"))
    assert len(rows(c, "train")) == 2 * 4


def test_amazon_sequential_tiger_protocol_by_hand(s3rec: Path, tmp_path: Path) -> None:
    out = convert("amazon-s3rec", s3rec, tmp_path / "seq", {"task": "sequential", "max_history": 2})
    Dataset.open(out)
    samples = {s: [(r["user_id"], r["history_item_id"], r["target_item_id"]) for r in rows(out, s)]
               for s in ("train", "valid", "test")}
    assert samples["test"] == [(1, [12, 13], 14), (2, [20, 21], 10), (3, [30], 31)]
    assert samples["valid"] == [(1, [11, 12], 13), (2, [20], 21), (3, [], 30)]
    assert samples["train"] == [(1, [10], 11), (1, [10, 11], 12)]
    per_user = convert("amazon-s3rec", s3rec, tmp_path / "per_user", {"task": "sequential",
                                                                       "train_samples": "per_user"})
    assert [(r["user_id"], r["target_item_id"]) for r in rows(per_user, "train")] == [(1, 12)]


def test_amazon_beauty_ctr_real_histories_and_negatives(tmp_path: Path) -> None:
    source = real("amazon-s3rec/Beauty.txt")
    sequences = {}
    with open(source) as handle:
        for line in handle:
            user, *items = map(int, line.split())
            sequences[user] = items
            if len(sequences) == 400:
                break
    out = convert("amazon-s3rec", source, tmp_path / "beauty", {"max_users": 400})
    ds = Dataset.open(out)
    assert sum(ds.num_rows(s) for s in ds.schema.splits) == 5 * sum(map(len, sequences.values()))
    assert ds.num_rows("test") == ds.num_rows("valid") == 5 * 400
    for split, first, last in (("train", 0, -2), ("valid", -2, -1), ("test", -1, None)):
        by_user: dict[int, list[dict]] = defaultdict(list)
        for _, request in sorted(requests(rows(out, split)).items()):
            user = request[0]["user_id"]
            items = sequences[user]
            assert [r["click"] for r in request] == [1, 0, 0, 0, 0]
            assert not {r["item_id"] for r in request[1:]} & set(items)
            by_user[user].append(request[0])
        for user, positives in by_user.items():
            items = sequences[user]
            positions = list(range(len(items)))[first:last]
            assert [p["item_id"] for p in positives] == [items[t] for t in positions]
            for p, t in zip(positives, positions):
                history = items[max(0, t - 50):t]
                assert p["realtime_item_id"] == history[-10:]
                assert p["longterm_item_id"] == history[:-10]


def test_amazon_errors_name_the_file_and_leave_no_output(s3rec: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Bad.txt"
    bad.write_text("1 10 11\n2 20 x21\n")
    (tmp_path / "Bad_item2attributes.json").write_text("{}")
    with pytest.raises(DataError, match=r"Bad\.txt, line 2: `x21` in the item list"):
        convert("amazon-s3rec", bad, tmp_path / "out")
    assert_no_output(tmp_path / "out")
    (tmp_path / "Toy_item2attributes.json").unlink()
    with pytest.raises(DataError, match=r"Toy_item2attributes\.json.*--option attributes="):
        convert("amazon-s3rec", s3rec, tmp_path / "out")
    assert_no_output(tmp_path / "out")
    empty = tmp_path / "Empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        convert("amazon-s3rec", empty, tmp_path / "out", {"attributes": str(bad.with_name("Bad_item2attributes.json"))})
    assert_no_output(tmp_path / "out")


# ---- Foursquare (STAN arrays) --------------------------------------------------------------------------

# user 1: 20 check-ins (minute, poi); trajectories start at positions 0, 4, 7, 14, 18 (gaps over 24 h)
USER1 = [(0, 1), (60, 2), (60, 3), (120, 4), (3000, 5), (3060, 6), (3120, 1), (6000, 2), (6010, 3), (6020, 4),
         (6030, 5), (6040, 6), (6050, 7), (6060, 8), (9000, 9), (9010, 10), (9020, 1), (9030, 2), (12000, 3),
         (12010, 4)]
# user 2: 10 check-ins in one trajectory; its valid/test POIs 11 and 12 never occur in train
USER2 = [(100 * i, poi) for i, poi in enumerate([1, 2, 1, 2, 1, 2, 1, 2, 11, 12])]


@pytest.fixture
def stan(tmp_path: Path) -> Path:
    rows_ = [(1, p, m) for m, p in USER1] + [(2, p, m) for m, p in USER2]
    order = np.random.default_rng(0).permutation(len(rows_))
    order = [i for i in order if i != 2]
    order.insert(order.index(1) + 1, 2)  # the two minute-60 check-ins keep their input order
    np.save(tmp_path / "TOY.npy", np.array([rows_[i] for i in order], dtype=np.int32))
    pois = [(i, 40.70 + 0.001 * i, -74.0) for i in range(1, 13)]  # on a line, about 111 m apart
    np.save(tmp_path / "TOY_POI.npy", np.array(pois, dtype=np.float64))
    return tmp_path


def test_filter_drops_users_and_pois_until_stable() -> None:
    # POI 9 has one check-in; dropping it leaves user 3 with one check-in, which then drops POI 8 to one too
    user = np.array([1, 1, 2, 2, 3, 3, 1, 2])
    poi = np.array([5, 5, 5, 5, 8, 9, 8, 6])
    assert filter_checkins(user, poi, 2).tolist() == [True, True, True, True, False, False, False, False]


def test_foursquare_next_poi_by_hand(stan: Path, tmp_path: Path) -> None:
    out = convert("foursquare-nyc", stan, tmp_path / "next", {"min_checkins": 1})
    ds = Dataset.open(out)
    assert ds.schema.column("history_poi_id").embedding_group == ds.schema.column("target_poi_id").embedding_group
    train = rows(out, "train")
    user1 = [r for r in train if r["user_id"] == 1]
    assert [r["minute"] for r in user1] == [USER1[p][0] for p in (1, 2, 3, 5, 6, 8, 9, 10, 11, 12, 13, 15)]
    assert [r["history_poi_id"] for r in user1[:3]] == [[1], [1], [1, 2, 3]]  # same-minute check-ins excluded
    assert user1[0]["history_time_gap"] == [0] and user1[2]["history_time_gap"] == [0, 4, 1]
    assert len([r for r in train if r["user_id"] == 2]) == 7
    (valid,) = rows(out, "valid")
    assert (valid["user_id"], valid["target_poi_id"], valid["minute"]) == (1, 2, 9030)
    assert valid["history_poi_id"] == [p for _, p in USER1[:17]]
    assert (valid["hour"], valid["weekday"]) == (20, 0)  # minute 9030 after Tue 14:00 is Monday 20:30
    assert valid["prev_lat"] == pytest.approx(40.701)
    (test,) = rows(out, "test")  # user 2's test target, POI 12, never occurs in train: dropped
    assert (test["user_id"], test["target_poi_id"], test["history_poi_id"][-1]) == (1, 4, 3)
    pois = pq.read_table(out / "tables" / "pois.parquet").to_pylist()
    assert [p["poi_id"] for p in pois] == list(range(1, 13))
    assert pois[0]["grid_cell"] == pois[3]["grid_cell"] != pois[5]["grid_cell"]  # 500 m cells along the line


def test_foursquare_ctr_negatives_come_from_nearby_unseen_pois(stan: Path, tmp_path: Path) -> None:
    out = convert("foursquare-nyc", stan, tmp_path / "ctr",
                  {"task": "ctr", "min_checkins": 1, "negatives": 2, "pool_size": 3, "seq_len": 6,
                   "realtime_len": 2})
    ds = Dataset.open(out)
    assert ds.schema.column("realtime_action").embedding_group == "action"
    assert ds.schema.column("distance_km").cost_ms > 0 and ds.schema.column("distance_km").level == "candidate"
    seen = {1: {p for _, p in USER1}, 2: {p for _, p in USER2}}
    for split in ("train", "valid", "test"):
        for request in requests(rows(out, split)).values():
            user = request[0]["user_id"]
            negatives = {r["poi_id"] for r in request[1:]}
            assert len(negatives) == 2 and not negatives & seen[user]
            if user == 1:
                assert negatives == {11, 12}  # the only POIs user 1 never visited
            else:  # POIs 1-2's three nearest are all seen: the pool widens to the nearest unseen ones
                assert negatives <= {3, 4, 5, 6, 7, 8, 9, 10}
    (first,) = [r for r in rows(out, "train") if r["minute"] == 3120 and r["click"] == 1]
    assert first["realtime_poi_id"] == [5, 6] and first["longterm_poi_id"] == [1, 2, 3, 4]
    assert first["prev_poi_id"] == 6 and first["distance_km"] == pytest.approx(5 * 0.11119, rel=1e-3)
    assert first["distance_bucket"] == 3  # 0.56 km: bucket 0 is < 0.1 km, 3 is 0.5-1 km
    assert first["user_cell_visits"] == 5  # the cell of POI 1 holds POIs 1-5, all visited before minute 3120
    valid_users = {r["user_id"] for r in rows(out, "valid")}
    assert valid_users == {1}  # user 2's valid check-in is at POI 11, unseen in train


def test_foursquare_nyc_real_histories(tmp_path: Path) -> None:
    folder = real("foursquare-nyc")
    checkins = np.load(folder / "NYC.npy").astype(np.int64)
    keep = filter_checkins(checkins[:, 0], checkins[:, 1], 10)
    users = np.unique(checkins[keep, 0])[:40]
    stream = {}
    for user in users:
        mine = checkins[keep & (checkins[:, 0] == user)]
        stream[user] = mine[np.argsort(mine[:, 2], kind="stable")]
    out = convert("foursquare-nyc", folder, tmp_path / "nyc", {"max_users": 40})
    Dataset.open(out)
    for split in ("train", "valid", "test"):
        for sample in rows(out, split):
            mine = stream[sample["user_id"]]
            earlier = mine[mine[:, 2] < sample["minute"]]
            assert sample["history_poi_id"] == earlier[-50:, 1].tolist()
    ctr = convert("foursquare-nyc", folder, tmp_path / "nyc-ctr", {"task": "ctr", "max_users": 15})
    Dataset.open(ctr)
    raw_pois = {u: set(checkins[checkins[:, 0] == u, 1].tolist()) for u in users[:15]}
    for request in requests(rows(ctr, "test")).values():
        positive = request[0]
        mine = stream[positive["user_id"]]
        history = mine[mine[:, 2] < positive["minute"]][-100:, 1].tolist()
        assert positive["longterm_poi_id"] + positive["realtime_poi_id"] == history
        assert len(positive["realtime_poi_id"]) == min(20, len(history))
        assert not {r["poi_id"] for r in request[1:]} & raw_pois[positive["user_id"]]


def test_foursquare_errors(stan: Path, tmp_path: Path) -> None:
    np.save(stan / "TOY.npy", np.array([[1, 99, 0], [1, 1, 5]], dtype=np.int32))
    with pytest.raises(DataError, match=r"TOY\.npy: column `poi_id`.*POI 99"):
        convert("foursquare-nyc", stan, tmp_path / "out", {"min_checkins": 1})
    assert_no_output(tmp_path / "out")
    np.save(stan / "TOY.npy", np.array([[1, 1, -5]], dtype=np.int32))
    with pytest.raises(DataError, match=r"TOY\.npy: column `minute`"):
        convert("foursquare-nyc", stan, tmp_path / "out")
    (stan / "TOY_POI.npy").unlink()
    with pytest.raises(DataError, match="POI arrays"):
        convert("foursquare-nyc", stan, tmp_path / "out")
    assert_no_output(tmp_path / "out")


# ---- Taobao UserBehavior -------------------------------------------------------------------------------


def test_taobao_real_sample_histories_negatives_and_time_split(tmp_path: Path) -> None:
    source = real("taobao-userbehavior-sample/UserBehavior.csv")
    with open(source) as handle:
        events = [(int(u), int(i), int(c), b, int(t)) for u, i, c, b, t in csv.reader(handle)]
    out = convert("taobao-userbehavior", source, tmp_path / "tb", {"block_rows": 700})
    ds = Dataset.open(out)
    assert sum(ds.num_rows(s) for s in ds.schema.splits) == 5 * len(events)
    actions = {"pv": 1, "fav": 2, "cart": 3, "buy": 4}
    items_of = defaultdict(set)
    for u, i, *_ in events:
        items_of[u].add(i)
    times = {}
    for split in ("train", "valid", "test"):
        times[split] = []
        for request_id, request in requests(rows(out, split)).items():
            user, item, category, _, ts = events[request_id]
            positive = request[0]
            assert (positive["click"], positive["user_id"], positive["item_id"], positive["category_id"],
                    positive["timestamp"]) == (1, user, item, category, ts)
            assert not {r["item_id"] for r in request[1:]} & items_of[user]
            earlier = sorted((e for e in events if e[0] == user and e[4] < ts), key=lambda e: e[4])[-100:]
            assert positive["longterm_item_id"] + positive["realtime_item_id"] == [e[1] for e in earlier]
            assert positive["longterm_action"] + positive["realtime_action"] == [actions[e[3]] for e in earlier]
            assert len(positive["realtime_item_id"]) == min(20, len(earlier))
            times[split].append(ts)
    assert max(times["train"]) < min(times["valid"]) <= max(times["valid"]) < min(times["test"])
    one_block = convert("taobao-userbehavior", source, tmp_path / "one-block")
    assert {s: Dataset.open(one_block).num_rows(s) for s in ds.schema.splits} == {
        s: ds.num_rows(s) for s in ds.schema.splits}


def test_taobao_errors(tmp_path: Path) -> None:
    bad = tmp_path / "UserBehavior.csv"
    bad.write_text("1,10,100,pv,1511544070\n1,11,100,like,1511544071\n")
    with pytest.raises(DataError, match=r"UserBehavior\.csv: column `behavior` has `like` at data row 2"):
        convert("taobao-userbehavior", bad, tmp_path / "out")
    assert_no_output(tmp_path / "out")
    bad.write_text("1,10,100,pv,1511544070\n2,11,100,pv,1511544071\n1,12,100,pv,1511544072\n")
    with pytest.raises(DataError, match="not grouped.*sort"):
        convert("taobao-userbehavior", bad, tmp_path / "out")
    bad.write_text("1,10,abc,pv,1511544070\n")
    with pytest.raises(DataError, match="column `category_id`"):
        convert("taobao-userbehavior", bad, tmp_path / "out")
    bad.write_text("")
    with pytest.raises(DataError, match="is empty"):
        convert("taobao-userbehavior", bad, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_taobao_header_line_is_skipped(tmp_path: Path) -> None:
    source = tmp_path / "UserBehavior.csv"
    events = [f"7,{100 + i},5,{'buy' if i == 9 else 'pv'},{1511544000 + 60 * i}" for i in range(10)]
    source.write_text("user_id,item_id,category_id,behavior,timestamp\n" + "\n".join(events) + "\n")
    for i in range(20):  # other items, so that negatives exist
        source.write_text(source.read_text() + f"8,{200 + i},6,pv,{1511544000 + 60 * (i % 10)}\n")
    out = convert("taobao-userbehavior", source, tmp_path / "out", {"negatives": 2})
    (last,) = [r for r in rows(out, "test") if r["user_id"] == 7 and r["click"] == 1]
    assert (last["item_id"], last["hour"], last["weekday"]) == (109, 1, 5)  # 2017-11-25 01:09 China time: Sat
    assert last["realtime_action"] == [1] * 9 and last["longterm_item_id"] == []
    assert Dataset.open(out).num_rows("train") == 3 * 8 * 3  # minutes 0-7 of both users, 1 + 2 rows each
