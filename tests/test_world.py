"""The synthetic city (world.md): layout, determinism and streaming, every planted mechanism and its knob, the
relevance rule engine, the next-POI oracle and the truth function.

Every world here is the `tiny` preset, generated once per module and cached by (seed, knobs). Mechanism tests
compare a statistic computed from the *data* (features and sequences) with the true click probability, once
with the knob on and once with it off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankstack.data.dataset import Dataset
from rankstack.data.formats import HARD_QUERY_TYPES, relevance_schema
from rankstack.errors import ConfigError, DataError
from rankstack.metrics import auc
from rankstack.world import WorldConfig, city, generate
from rankstack.world.places import make_districts, make_pois
from rankstack.world.relevance import decide, make_queries
from rankstack.world.truth import WorldTruth, click_probability

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`world(seed=0, **knobs)` → the folder of a tiny world, generated once per (seed, knobs)."""
    root = tmp_path_factory.mktemp("worlds")
    cache: dict[tuple, Path] = {}

    def make(seed: int = 0, **knobs: float) -> Path:
        key = (seed, tuple(sorted(knobs.items())))
        if key not in cache:
            cache[key] = generate(WorldConfig.preset("tiny", **knobs), seed=seed, out=root / f"w{len(cache)}")
        return cache[key]

    return make


def ranking(root: Path) -> tuple[pa.Table, pa.Table]:
    """All ranking rows and their truth rows, splits concatenated."""
    rows = pa.concat_tables([pq.read_table(root / "ranking" / f"{s}.parquet") for s in SPLITS])
    truth = pa.concat_tables([pq.read_table(root / "ranking" / "truth" / f"{s}.parquet") for s in SPLITS])
    return rows, truth


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0, 1])


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- config ---------------------------------------------------------------------------------------------------


def test_presets_and_overrides_are_validated() -> None:
    assert WorldConfig.preset("tiny", realtime_intent=0.0).realtime_intent == 0.0
    assert WorldConfig.preset("medium").n_users > WorldConfig.preset("small").n_users
    with pytest.raises(ConfigError, match="unknown world size"):
        WorldConfig.preset("huge")
    with pytest.raises(ConfigError, match="realtime_intnet"):
        WorldConfig.preset("tiny", realtime_intnet=0.0)
    with pytest.raises(ConfigError, match="distance_decay"):
        WorldConfig.preset("tiny", distance_decay=-1.0)
    with pytest.raises(ConfigError, match="hard_query_share"):
        WorldConfig.preset("tiny", hard_query_share=1.5)


def test_existing_output_folder_is_refused(world: Callable[..., Path]) -> None:
    with pytest.raises(DataError, match="already exists"):
        generate(WorldConfig.preset("tiny"), seed=0, out=world())


# ---- layout, determinism, streaming ---------------------------------------------------------------------------


def test_layout_opens_as_datasets(world: Callable[..., Path]) -> None:
    root = world()
    for table in ("pois", "users", "visits", "queries"):
        assert pq.read_metadata(root / "tables" / f"{table}.parquet").num_rows > 0
    pois = pq.read_table(root / "tables" / "pois.parquet")
    for column in ("poi_id", "name", "category_l1", "category_l2", "brand", "price_level", "rating", "lat", "lon",
                   "district", "open_hour", "close_hour", "attributes", "description"):
        assert column in pois.column_names
    visits = pq.read_table(root / "tables" / "visits.parquet")
    assert set(visits.column("action").to_pylist()) == set(city.ACTIONS)
    meta = json.loads((root / "ranking" / "truth" / "fields.json").read_text())
    assert meta["noise"] and meta["duplicates"] and meta["proxies"] and meta["costly_informative"]
    for proxy in meta["proxies"].values():
        assert 0.7 <= proxy["corr"] <= 0.9
    assert (root / "world.yaml").read_text().startswith("seed: 0")

    data = Dataset.open(root / "ranking")
    schema = data.schema
    assert schema.column("user_id").role == "key" and schema.group_key == "user_id"
    assert schema.request_key == "request_id"
    assert {"click", "order"} == set(schema.labels)
    assert schema.column("longterm_poi_id").max_len == 100 and schema.column("realtime_poi_id").max_len == 20
    assert schema.column("realtime_poi_id").embedding_group == "poi_id"
    assert schema.column("longterm_action").embedding_group == "action"
    for col in schema.features:
        assert col.level in ("request", "candidate") and col.cost_ms > 0, col.name
        if col.level == "request":
            assert 0.05 <= col.cost_ms <= 0.5, col.name
        else:
            assert 0.0005 <= col.cost_ms <= 0.008, col.name
    assert sum(c.name.startswith("noise_") for c in schema.features) == WorldConfig.preset("tiny").noise_feature_count

    assert Dataset.open(root / "relevance").schema.names == relevance_schema("world-relevance").names
    next_poi = Dataset.open(root / "next_poi")
    assert next_poi.schema.column("target_poi_id").embedding_group == "poi_id"


def test_truth_is_row_aligned_and_reproduced_by_the_truth_function(world: Callable[..., Path]) -> None:
    root = world()
    for split in SPLITS:
        rows = pq.read_table(root / "ranking" / f"{split}.parquet", columns=["request_id", "poi_id", "position"])
        truth = pq.read_table(root / "ranking" / "truth" / f"{split}.parquet")
        assert rows.num_rows == truth.num_rows > 0
        for name in ("request_id", "poi_id", "position"):
            assert rows.column(name).equals(truth.column(name))
        p_click, p_cvr = truth.column("p_click").to_numpy(), truth.column("p_cvr").to_numpy()
        np.testing.assert_allclose(truth.column("p_order").to_numpy(), p_click * p_cvr)
        assert ((p_click > 0) & (p_click < 1)).all()
    rid, poi, pos = (truth.column(c).to_numpy() for c in ("request_id", "poi_id", "position"))
    np.testing.assert_allclose(click_probability(root, rid, poi, pos), truth.column("p_click").to_numpy(), rtol=1e-12)
    oracle = WorldTruth(root)
    np.testing.assert_allclose(oracle.order_probability(rid, poi, pos), truth.column("p_order").to_numpy(),
                               rtol=1e-12)
    with pytest.raises(DataError, match="request_id"):
        oracle.click_probability(np.array([7]), np.array([1]))


def test_same_seed_is_byte_identical_whatever_the_chunk_size(world: Callable[..., Path]) -> None:
    default = file_digests(world())
    small_chunks = file_digests(world(chunk_users=64))
    assert WorldConfig.preset("tiny").chunk_users >= 4 * 64
    differ = sorted(name for name in default if default[name] != small_chunks.get(name))
    assert differ == ["world.yaml"]  # it records chunk_users; every table and dataset is identical
    other_seed = file_digests(world(seed=1))
    assert other_seed["tables/visits.parquet"] != default["tables/visits.parquet"]
    assert other_seed["ranking/train.parquet"] != default["ranking/train.parquet"]


def test_labels_rates_and_bayes_auc_are_in_range(world: Callable[..., Path]) -> None:
    rows, truth = ranking(world())
    click, order = rows.column("click").to_numpy(), rows.column("order").to_numpy()
    assert 0.05 <= click.mean() <= 0.15
    assert 0.10 <= order[click > 0].mean() <= 0.30
    assert (order <= click).all()
    assert 0.75 <= auc(click, truth.column("p_click").to_numpy()) <= 0.90
    # Labels are Bernoulli draws: calibration of the truth holds on average.
    assert abs(truth.column("p_click").to_numpy().mean() - click.mean()) < 0.01


def test_sequences_hold_only_events_before_the_request(world: Callable[..., Path]) -> None:
    root = world()
    rows = pq.read_table(root / "ranking" / "test.parquet",
                         columns=["request_id", "user_id", "timestamp", "realtime_poi_id", "longterm_poi_id"])
    visits = pq.read_table(root / "tables" / "visits.parquet")
    user, time, poi = (visits.column(c).to_numpy() for c in ("user_id", "timestamp", "poi_id"))
    own = visits.column("request_id").to_numpy()
    key = user * (1 << 24) + time
    assert (np.diff(key) >= 0).all()  # visits are sorted by (user, time)
    for r in range(0, rows.num_rows, 7):
        u, t = rows.column("user_id")[r].as_py(), rows.column("timestamp")[r].as_py()
        end = np.searchsorted(key, u * (1 << 24) + t)
        first = np.searchsorted(key, u * (1 << 24))
        history = poi[first:end].tolist()
        realtime = rows.column("realtime_poi_id")[r].as_py()
        longterm = rows.column("longterm_poi_id")[r].as_py()
        assert realtime == history[-20:]
        assert longterm == history[max(0, len(history) - 120):max(0, len(history) - 20)]
    # A request's own clicks are logged after it, so they never reach its own sequences.
    clicked = own > 0
    request_time = dict(zip(rows.column("request_id").to_pylist(), rows.column("timestamp").to_pylist()))
    for rid, t in zip(own[clicked], time[clicked]):
        if rid in request_time:
            assert t > request_time[rid]


# ---- planted mechanisms and their knobs ------------------------------------------------------------------------


def realtime_match(rows: pa.Table) -> np.ndarray:
    """Whether the candidate's category is among the last 5 real-time events (the visible side of intent)."""
    cand = rows.column("category_l2").to_numpy()
    recent = rows.column("realtime_category_l2").to_pylist()
    return np.array([c in seq[-5:] for c, seq in zip(cand, recent)])


def longterm_share(rows: pa.Table) -> np.ndarray:
    cand = rows.column("category_l2").to_numpy()
    history = rows.column("longterm_category_l2").to_pylist()
    return np.array([np.mean(np.array(seq) == c) if seq else 0.0 for c, seq in zip(cand, history)])


def test_realtime_intent(world: Callable[..., Path]) -> None:
    on_rows, on_truth = ranking(world())
    off_rows, off_truth = ranking(world(realtime_intent=0.0))
    assert corr(logit(on_truth.column("p_click").to_numpy()), realtime_match(on_rows)) > 0.2
    assert abs(corr(logit(off_truth.column("p_click").to_numpy()), realtime_match(off_rows))) < 0.05
    # It matters more than the long history (world.md §2.3).
    assert on_truth.column("logit_realtime_intent").to_numpy().std() > \
        on_truth.column("logit_longterm_category").to_numpy().std()


def test_longterm_interest(world: Callable[..., Path]) -> None:
    on_rows, on_truth = ranking(world())
    off_rows, off_truth = ranking(world(longterm_interest=0.0))
    assert corr(logit(on_truth.column("p_click").to_numpy()), longterm_share(on_rows)) > 0.12
    assert abs(corr(logit(off_truth.column("p_click").to_numpy()), longterm_share(off_rows))) < 0.05


def test_distance_decay(world: Callable[..., Path]) -> None:
    on_rows, on_truth = ranking(world())
    off_rows, off_truth = ranking(world(distance_decay=0.0))
    assert corr(logit(on_truth.column("p_click").to_numpy()), on_rows.column("distance_km").to_numpy()) < -0.15
    assert abs(corr(logit(off_truth.column("p_click").to_numpy()), off_rows.column("distance_km").to_numpy())) < 0.08
    # Steeper for everyday categories: a fast-food place loses more per km than a hotel.
    assert city.DECAY_KM[city.L2_INDEX["Fast food"]] < city.DECAY_KM[city.L2_INDEX["Hotel"]]


def test_hour_x_category_interaction(world: Callable[..., Path]) -> None:
    def hour_effect(root: Path) -> float:
        rows, truth = ranking(root)
        # Without the intent and position terms, which the logging sampler confounds with the hour.
        rest = (logit(truth.column("p_click").to_numpy()) - truth.column("logit_realtime_intent").to_numpy()
                - truth.column("logit_position").to_numpy())
        affinity = city.SLOT_AFFINITY[city.HOUR_SLOT[rows.column("hour").to_numpy()],
                                      rows.column("category_l2").to_numpy() - 1]
        return corr(rest, affinity)

    assert hour_effect(world()) > 0.2
    assert abs(hour_effect(world(interaction_order=0.0))) < 0.05
    _, off_truth = ranking(world(interaction_order=0.0))
    for term in ("hour_x_category", "weather_x_indoor", "distance_x_price_x_income", "rating_x_price",
                 "loyalty_x_brand", "opening_hours"):
        assert not off_truth.column(f"logit_{term}").to_numpy().any(), term


def test_position_bias(world: Callable[..., Path]) -> None:
    for knob, lowers in ((1.0, True), (0.0, False)):
        root = world(position_bias=knob)
        truth = pq.read_table(root / "ranking" / "truth" / "test.parquet")
        rid, poi, pos = (truth.column(c).to_numpy() for c in ("request_id", "poi_id", "position"))
        oracle = WorldTruth(root)
        top, bottom = oracle.click_probability(rid, poi, np.ones(len(rid))), oracle.click_probability(rid, poi, pos)
        below = pos > 1
        assert below.any()
        assert ((bottom[below] < top[below]).all() if lowers else np.allclose(bottom, top))


def test_conversion_has_its_own_weights(world: Callable[..., Path]) -> None:
    def cvr_vs_click(root: Path) -> float:
        _, truth = ranking(root)
        return corr(logit(truth.column("p_cvr").to_numpy()),
                    logit(truth.column("p_click").to_numpy()) - truth.column("logit_position").to_numpy())

    assert cvr_vs_click(world()) < 0.6
    assert cvr_vs_click(world(conversion=0.0)) > 0.98


def test_costly_crosses_are_informative_and_noise_is_not(world: Callable[..., Path]) -> None:
    root = world()
    rows, truth = ranking(root)
    fields = json.loads((root / "ranking" / "truth" / "fields.json").read_text())
    lp = logit(truth.column("p_click").to_numpy())
    for name in ("distance_km", "user_cat_ctr", "user_cat_visits"):
        assert name in fields["costly_informative"]
        assert abs(corr(lp, rows.column(name).to_numpy())) > 0.15, name
    for name in fields["noise"]:
        assert abs(corr(lp, rows.column(name).to_numpy())) < 0.1, name
    for dup, original in fields["duplicates"].items():
        assert abs(corr(rows.column(dup).to_numpy(), rows.column(original).to_numpy())) > 0.8, dup
    noisy_rows, noisy_truth = ranking(world(costly_feature_signal=0.0))
    noisy_lp = logit(noisy_truth.column("p_click").to_numpy())
    for name in ("distance_km", "user_cat_ctr"):
        assert abs(corr(noisy_lp, noisy_rows.column(name).to_numpy())) < 0.05, name


def covisit_pairs(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive physical visits (order / navigate) of one session: (first POI index, second POI index)."""
    visits = pq.read_table(root / "tables" / "visits.parquet")
    organic = (visits.column("request_id").to_numpy() == 0) & (visits.column("action_id").to_numpy() >= city.ORDER)
    sid = visits.column("session_id").to_numpy()[organic]
    poi = visits.column("poi_id").to_numpy()[organic] - 1
    same = sid[1:] == sid[:-1]
    return poi[:-1][same], poi[1:][same]


def test_covisit_chains_pair_close_places_of_different_categories(world: Callable[..., Path]) -> None:
    root = world()
    pois = pq.read_table(root / "tables" / "pois.parquet")
    x, y = pois.column("x_km").to_numpy(), pois.column("y_km").to_numpy()
    cat = pois.column("category_l2_id").to_numpy()
    a, b = covisit_pairs(root)
    assert len(a) > 100
    assert (cat[a] != cat[b]).all()  # chains link different categories (hotel → parking)
    assert all(city.CHAIN_MATRIX[ca - 1, cb - 1] > 0 for ca, cb in zip(cat[a], cat[b]))
    pair_km = np.hypot(x[a] - x[b], y[a] - y[b])
    rng = np.random.default_rng(0)
    random_b = np.array([rng.choice(np.flatnonzero(cat == c)) for c in cat[b]])
    random_km = np.hypot(x[a] - x[random_b], y[a] - y[random_b])
    assert np.median(pair_km) < 1.0 < np.median(random_km)
    names = pois.column("name").to_pylist()
    shared_words = np.mean([bool(set(names[i].lower().split()) & set(names[j].lower().split())) for i, j in zip(a, b)])
    assert shared_words < 0.2  # close together, but their text differs
    off_a, _ = covisit_pairs(world(covisit_chains=0.0))
    assert len(off_a) == 0


# ---- search relevance -------------------------------------------------------------------------------------------


def relevance_rows(root: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(root / "relevance" / f"{s}.parquet") for s in SPLITS]).to_pylist()


def recompute_verdict(constraint: dict, row: dict) -> str:
    """Judge one constraint from the item record alone (the atomic rules of rules.json)."""
    record = json.loads(row["item_attrs"])
    name, op, value = constraint["name"], constraint["op"], constraint["value"]
    if name == "brand":
        holds = row["item_brand"] == value
    elif name == "district":
        holds = record["district"] == value
    elif name == "price_level":
        holds = row["item_price_level"] <= value if op == "le" else row["item_price_level"] < value
    elif name == "rating":
        holds = record["rating"] >= value
    elif name not in record:
        return "unknown"
    else:
        holds = record[name] if op == "has" else not record[name]
    return "satisfied" if holds else "violated"


def test_relevance_tiers_follow_the_rule_engine(world: Callable[..., Path]) -> None:
    root = world()
    rows = relevance_rows(root)
    rules = json.loads((root / "relevance" / "rules.json").read_text())
    truth = {q["query_id"]: q for q in pq.read_table(root / "truth" / "queries.parquet").to_pylist()}
    for row in rows:
        gold = json.loads(row["gold"])
        query = truth[row["query_id"]]
        assert gold["constraints"] == json.loads(query["constraints"])
        assert gold["intent"] == query["intent"]
        intent_l1, intent_l2 = query["intent"].split(" > ")
        item_l1, item_l2 = row["item_category"].split(" > ")
        expected_category = "match" if item_l2 == intent_l2 else ("near_miss" if item_l1 == intent_l1 else "mismatch")
        assert gold["category"] == expected_category
        verdicts = [v["verdict"] for v in gold["attr_verdicts"]]
        assert verdicts == [recompute_verdict(c, row) for c in gold["constraints"]]
        tier, rule = decide(gold["category"], verdicts, [c["hard"] for c in gold["constraints"]])
        assert (row["label"], gold["decisive_rule"]) == (tier, rule)
        assert set(row["rules"]) <= set(rules) and rule in row["rules"]
    labels = np.array([r["label"] for r in rows])
    assert min(np.mean(labels == t) for t in (1, 2, 3, 4)) > 0.1
    # Every tier in most queries that can have all four (a hard constraint exists).
    by_query: dict[str, set] = {}
    for r in rows:
        if any(c["hard"] for c in json.loads(r["gold"])["constraints"]):
            by_query.setdefault(r["query_id"], set()).add(r["label"])
    assert np.mean([len(tiers) == 4 for tiers in by_query.values()]) > 0.7


def test_relevance_splits_hold_out_whole_queries(world: Callable[..., Path]) -> None:
    root = world()
    seen = {s: set(pq.read_table(root / "relevance" / f"{s}.parquet").column("query_id").to_pylist())
            for s in SPLITS}
    assert all(seen.values())
    assert not (seen["train"] & seen["valid"]) and not (seen["train"] & seen["test"])
    assert not (seen["valid"] & seen["test"])


def test_hard_query_share_and_knowledge_queries() -> None:
    config = WorldConfig.preset("tiny", n_queries=2000)
    rng = np.random.default_rng(0)
    districts = make_districts(config, rng)
    pois = make_pois(config, districts, rng)
    for share in (0.3, 0.0, 0.8):
        queries = make_queries(WorldConfig.preset("tiny", n_queries=2000, hard_query_share=share), pois, districts,
                               np.random.default_rng(1))
        hard = np.mean([q.intent_type in HARD_QUERY_TYPES for q in queries])
        assert abs(hard - share) < 0.04, share
    for q in queries:
        if q.intent_type == "knowledge":
            words = {w.lower() for w in city.CATEGORIES[q.cat].words} | {city.CAT_L2[q.cat].lower()}
            assert not any(w in q.text.lower() for w in words), q.text


# ---- next POI ---------------------------------------------------------------------------------------------------


def test_next_poi_split_and_oracle(world: Callable[..., Path]) -> None:
    root = world()
    data = {s: pq.read_table(root / "next_poi" / f"{s}.parquet") for s in SPLITS}
    last_train: dict[int, int] = {}
    for u, t in zip(data["train"].column("user_id").to_pylist(), data["train"].column("timestamp").to_pylist()):
        last_train[u] = max(t, last_train.get(u, 0))
    for u, t in zip(data["test"].column("user_id").to_pylist(), data["test"].column("timestamp").to_pylist()):
        assert t > last_train[u]  # per-user temporal split
    oracle = pq.read_table(root / "next_poi" / "truth" / "test.parquet")
    assert oracle.column("sample_id").equals(data["test"].column("sample_id"))
    assert oracle.column("target_poi_id").equals(data["test"].column("target_poi_id"))
    probs = np.array(oracle.column("oracle_probs").to_pylist())
    ids = np.array(oracle.column("oracle_poi_ids").to_pylist())
    assert probs.shape[1] == 50 and (np.diff(probs, axis=1) <= 0).all() and (probs.sum(axis=1) <= 1 + 1e-9).all()
    target = data["test"].column("target_poi_id").to_numpy()
    oracle_hit = np.mean([t in row for t, row in zip(target, ids)])
    popular = np.bincount(data["train"].column("target_poi_id").to_numpy()).argsort()[::-1][:50]
    popular_hit = np.isin(target, popular).mean()
    assert oracle_hit > popular_hit + 0.1
    assert oracle.column("target_prob").to_numpy().min() > 0
