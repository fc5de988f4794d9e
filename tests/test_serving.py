"""The cascade service on the tiny world with a tiny trained HeMix: answers, bad input, caching, start-up checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstack.cli import build_parser, main
from rankstack.errors import ConfigError
from rankstack.serving.app import create_app
from rankstack.serving.cascade import Cascade, CascadeConfig, Context, StageBudgets, load_cascade_config
from rankstack.serving.features import RequestContext, from_latlon
from tests._serving import write_tiny_autofas_run, write_tiny_geogr_run, write_tiny_run


@pytest.fixture(scope="module")
def run_dir(tiny_world_dir, tmp_path_factory):
    return write_tiny_run(tiny_world_dir, tmp_path_factory.mktemp("serving") / "run")


@pytest.fixture(scope="module")
def cascade(run_dir):
    return Cascade.load(run_dir, config=CascadeConfig(feed=StageBudgets(120, 60), search=StageBudgets(120, 60),
                                                      max_k=50))


@pytest.fixture(scope="module")
def client(cascade):
    return TestClient(create_app(cascade), raise_server_exceptions=False)


def test_feed_runs_every_stage_within_its_budget(client):
    r = client.post("/v1/feed", json={"user_id": 17, "context": {"hour": 12}, "k": 7})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [s["stage"] for s in answer["funnel"]] == ["retrieval", "preranking", "ranking"]
    counts = [(s["candidates_in"], s["candidates_out"]) for s in answer["funnel"]]
    assert counts == [(300, 120), (120, 60), (60, 60)]
    assert all(s["latency_ms"] >= 0 for s in answer["funnel"]) and answer["queue_ms"] >= 0
    retrieval, preranking, ranking = answer["funnel"]
    assert retrieval["baseline"] and preranking["baseline"] and not ranking["baseline"]
    assert ranking["method"] == "hemix"
    scores = [x["score"] for x in answer["results"]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
    assert len({x["poi_id"] for x in answer["results"]}) == 7
    assert not answer["request"]["cold_start"]


def test_search_drops_bad_results_and_puts_good_before_mid(client):
    r = client.post("/v1/search", json={"user_id": 17, "query": "sushi with wifi", "k": 50, "explain": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["query"]["understood"] and answer["query"]["category"] == "Sushi"
    pages = [x["relevance"]["page"] for x in answer["results"]]
    assert "Bad" not in pages
    assert pages == sorted(pages, key=["Good", "Mid"].index), "Mid results are demoted below Good"
    assert all(x["relevance"]["rationale"] for x in answer["results"])
    relevance = answer["funnel"][-1]
    assert relevance["stage"] == "relevance" and relevance["candidates_out"] <= relevance["candidates_in"]


def test_exclusions_and_cold_start(client):
    first = client.post("/v1/feed", json={"user_id": 5}).json()["results"][0]["poi_id"]
    again = client.post("/v1/feed", json={"user_id": 5, "exclude_poi_ids": [first]}).json()
    assert first not in {x["poi_id"] for x in again["results"]}
    cold = client.post("/v1/feed", json={"user_id": 10**9, "context": {"lat": 31.2, "lon": 121.4}})
    assert cold.status_code == 200 and cold.json()["request"]["cold_start"]


BAD_REQUESTS = [
    ("/v1/feed", {}, 422, "user_id: Field required"),
    ("/v1/feed", {"user_id": "17"}, 422, "user_id: Input should be a valid integer"),
    ("/v1/feed", {"user_id": 1, "surprise": 1}, 422, "surprise: Extra inputs are not permitted"),
    ("/v1/feed", {"user_id": 1, "context": {"hour": 24}}, 422, "context.hour"),
    ("/v1/feed", {"user_id": 1, "context": {"weather": "snow"}}, 422, "context.weather"),
    ("/v1/feed", {"user_id": 1, "context": {"lat": 40.0, "lon": 121.4}}, 422, "outside the city"),
    ("/v1/feed", {"user_id": 1, "context": {"lat": 31.2}}, 422, "go together"),
    ("/v1/feed", {"user_id": 10**9}, 422, "cold start"),
    ("/v1/feed", {"user_id": 1, "k": 0}, 422, "k must be between 1 and 50"),
    ("/v1/feed", {"user_id": 1, "k": 10**30}, 422, "k must be between 1 and 50"),
    ("/v1/feed", {"user_id": 1, "exclude_poi_ids": [0]}, 422, "poi_id 0 is not a POI"),
    ("/v1/feed", {"user_id": 1, "exclude_poi_ids": [301]}, 422, "poi_id 301 is not a POI"),
    ("/v1/feed", {"user_id": 1, "context": {"timestamp": 10**12}}, 422, "outside the world's time"),
    ("/v1/feed", {"user_id": 1, "context": {"timestamp": 3600, "hour": 5}}, 422, "hour disagrees"),
    ("/v1/feed", {"user_id": 1, "context": {"timestamp": 3600, "weekday": 5}}, 422, "weekday disagrees"),
    ("/v1/search", {"user_id": 1}, 422, "query: Field required"),
    ("/v1/search", {"user_id": 1, "query": ""}, 422, "query: String should have at least 1 character"),
    ("/v1/search", {"user_id": 1, "query": "   "}, 422, "query is empty"),
    ("/v1/search", {"user_id": 1, "query": 7}, 422, "query: Input should be a valid string"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_message(client, path, body, status, message):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_malformed_json_and_huge_bodies(client):
    r = client.post("/v1/feed", content=b'{"user_id": 1,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
    for body in (b"[" * 30000 + b"]" * 30000, b"\xff\xfe", b"", b"null", b'"x"', b"[]"):
        r = client.post("/v1/feed", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and r.json()["detail"], body[:10]
    big = b'{"user_id": 1, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    r = client.post("/v1/feed", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]

    def chunks():  # no content-length: the limit is enforced while the body streams in
        for _ in range(200):
            yield b"x" * 65536

    r = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_metrics_openapi_and_demo_page(client):
    client.post("/v1/feed", json={"user_id": 3})
    client.post("/v1/feed", json={"user_id": 3, "k": -1})
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["stages"]["preranking"]["baseline"]
    metrics = client.get("/metrics").text
    assert 'rankstack_requests_total{endpoint="/v1/feed",status="200"}' in metrics
    assert 'rankstack_errors_total{endpoint="/v1/feed",kind="4xx"}' in metrics
    assert 'rankstack_stage_latency_seconds_bucket{kind="feed",le="0.001",stage="ranking"}' in metrics
    assert 'rankstack_stage_latency_seconds_count{kind="feed",stage="queue"}' in metrics
    assert "process_resident_memory_bytes" in metrics
    schema = client.get("/openapi.json").json()
    assert {"/v1/feed", "/v1/search", "/healthz", "/metrics"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "<svg" in page.text
    assert len(client.get("/v1/world").json()["pois"]) == 300


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)
CONTEXTS = st.fixed_dictionaries({}, optional={
    "lat": st.floats(31.0, 31.4) | JSON_VALUES, "lon": st.floats(121.2, 121.6) | JSON_VALUES,
    "hour": st.integers(-2, 26) | JSON_VALUES, "weekday": st.integers(-1, 8),
    "weather": st.sampled_from(["sunny", "cloudy", "rain", "snow"]), "timestamp": st.integers(-5, 9_000_000)})
BODIES = st.fixed_dictionaries({}, optional={
    "user_id": st.integers(-3, 400) | st.integers() | JSON_VALUES, "context": CONTEXTS | JSON_VALUES,
    "k": st.integers(-2, 120) | JSON_VALUES, "exclude_poi_ids": st.lists(st.integers(-1, 310), max_size=4),
    "query": st.text(max_size=30) | st.sampled_from(["bar in Harbor", "sushi", "FitLab", "not spicy noodles"]),
    "explain": st.booleans() | JSON_VALUES}) | JSON_VALUES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/feed", "/v1/search"]), body=BODIES)
def test_random_requests_never_get_a_5xx(client, path, body):
    r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    assert r.status_code == 200 or r.json()["detail"]


def test_user_cache_scores_equal_the_reference_path(cascade, run_dir):
    request = cascade.resolve(17, Context(hour=19))
    pois = np.arange(0, 300, 3)
    ranker = cascade.ranker
    cached = ranker.probabilities(request, pois, use_user_cache=True)
    reference = ranker.probabilities(request, pois, use_user_cache=False)
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-6)
    # and through the whole cascade: the same answer with the cache switched off
    uncached = Cascade.load(run_dir, config=CascadeConfig(use_user_cache=False))
    cached_cascade = Cascade.load(run_dir, config=CascadeConfig(use_user_cache=True))
    a = cached_cascade.search(17, "noodles", Context(hour=19), k=20)["results"]
    b = uncached.search(17, "noodles", Context(hour=19), k=20)["results"]
    assert [x["poi_id"] for x in a] == [x["poi_id"] for x in b]
    np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], rtol=1e-5)


def test_online_features_reproduce_the_logged_training_rows(cascade, tiny_world_dir):
    """Train/serve skew check: logged test requests (feed and search), rebuilt online from the tables, get the
    same features as their logged rows."""
    rows = pq.read_table(tiny_world_dir / "ranking" / "test.parquet").slice(0, 400).to_pylist()
    by_request: dict[int, list[dict]] = {}
    for r in rows:
        by_request.setdefault(r["request_id"], []).append(r)
    feeds = [rid for rid, rs in by_request.items() if rs[0]["scene"] == 0][:2]
    searches = [rid for rid, rs in by_request.items() if rs[0]["scene"] == 1][:2]
    assert feeds and searches
    exact = ["hour", "weekday", "weather", "scene", "query_category_l2", "user_district", "user_grid", "age_band",
             "income_band", "loyalty_band", "poi_id", "category_l2", "brand", "attributes", "user_poi_visits",
             "user_cat_visits", "user_brand_visits", "realtime_poi_id", "realtime_action", "longterm_poi_id",
             "longterm_category_l2"]
    close = ["distance_km", "user_cat_ctr", "user_price_gap", "days_since_cat", "district_distance_km",
             "user_cat_ctr_stale"]
    # The logged request's position in km (the dataset stores lat/lon as float32, too coarse for distances).
    positions = pq.read_table(tiny_world_dir / "truth" / "requests.parquet").to_pandas().set_index("request_id")
    for rid in feeds + searches:
        same = by_request[rid]
        row = same[0]
        x, y = positions.loc[rid, "x_km"], positions.loc[rid, "y_km"]
        assert np.allclose(from_latlon(row["user_lat"], row["user_lon"]), (x, y), atol=1e-3)
        request = RequestContext(row["user_id"], row["user_id"] - 1, float(x), float(y), row["timestamp"],
                                 row["hour"], row["weekday"], row["weather"], row["query_category_l2"] - 1)
        online = cascade.ranker.features.table(request, np.array([r["poi_id"] - 1 for r in same])).to_pylist()
        for logged, served in zip(same, online, strict=True):
            for name in exact:
                assert served[name] == logged[name], (rid, name)
            for name in close:
                assert served[name] == pytest.approx(logged[name], rel=1e-4, abs=1e-4), (rid, name)


def _corrupt(run_dir, tmp_path, edit):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    edit(copy / "serving")
    return copy


@pytest.mark.parametrize(("name", "edit"), [
    ("ranking.safetensors", lambda d: (d / "ranking.safetensors").write_bytes(b"\0" * 64)),
    ("ranking.safetensors", lambda d: (d / "ranking.safetensors").unlink()),
    ("vocab/index.json", lambda d: (d / "vocab" / "index.json").write_text("{}")),
    ("manifest.json", lambda d: (d / "manifest.json").unlink()),
    ("manifest.json", lambda d: (d / "manifest.json").write_text("not json")),
])
def test_missing_or_corrupt_artifact_fails_at_start_up_naming_it(run_dir, tmp_path, name, edit):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        Cascade.load(_corrupt(run_dir, tmp_path, edit))


def test_serving_config_from_yaml(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("feed: {retrieval: 200, preranking: 80}\nmax_k: 20\nobjective: {click: 1.0, order: 2.0}\n")
    config = load_cascade_config(path)
    assert (config.feed.retrieval, config.feed.preranking, config.max_k) == (200, 80, 20)
    assert config.objective == {"click": 1.0, "order": 2.0}
    path.write_text("feed: {retrieval: 50, preranking: 80}\n")
    with pytest.raises(ConfigError, match="preranking"):
        load_cascade_config(path)


def test_serve_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve", "--run", "runs/demo/dlrm"])
    assert args.host == "127.0.0.1"


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Optional stages: GeoGR feed retrieval and AutoFAS pre-ranking from exported runs


@pytest.fixture(scope="module")
def geogr_run_dir(run_dir, tiny_world_dir, tmp_path_factory):
    """The tiny ranking run, copied and re-exported with a tiny GeoGR run (`export --retrieval`) and a tiny AutoFAS
    run (`export --preranking`)."""
    root = tmp_path_factory.mktemp("serving-stages")
    geogr = write_tiny_geogr_run(tiny_world_dir, root / "geogr")
    autofas = write_tiny_autofas_run(tiny_world_dir, root / "autofas")
    copy = root / "run"
    shutil.copytree(run_dir, copy)
    assert main(["export", "--run", str(copy), "--retrieval", str(geogr), "--preranking", str(autofas)]) == 0
    return copy


@pytest.fixture(scope="module")
def geogr_cascade(geogr_run_dir):
    return Cascade.load(geogr_run_dir, config=CascadeConfig(feed=StageBudgets(120, 60), search=StageBudgets(120, 60),
                                                            max_k=50))


def test_export_copies_only_unpickled_geogr_files(geogr_run_dir):
    served = geogr_run_dir / "serving" / "geogr"
    manifest = json.loads((geogr_run_dir / "serving" / "manifest.json").read_text())["files"]
    files = sorted(str(p.relative_to(served)) for p in served.rglob("*") if p.is_file())
    assert {"retriever.json", "catalogue.safetensors", "model/model.safetensors", "model/config.json",
            "model/tokenizer.json", "sids/sids.json", "sids/sids.safetensors"} <= set(files)
    assert all(p.endswith((".json", ".safetensors", ".jinja")) for p in files), files
    assert all(f"geogr/{p}" in manifest for p in files)


def test_feed_retrieval_by_geogr_names_it_in_the_funnel(geogr_cascade, cascade):
    answer = geogr_cascade.feed(17, Context(hour=19), k=7)
    retrieval = answer["funnel"][0]
    assert (retrieval["method"], retrieval["baseline"]) == ("geogr", False)
    assert (retrieval["candidates_in"], retrieval["candidates_out"]) == (300, 120)
    preranking = answer["funnel"][1]
    assert (preranking["method"], preranking["baseline"], preranking["candidates_out"]) == ("autofas", False, 60)
    ids = [x["poi_id"] for x in answer["results"]]
    assert len(ids) == len(set(ids)) == 7 and all(1 <= i <= 300 for i in ids)
    assert geogr_cascade.stage_methods()["feed_retrieval"]["method"] == "geogr"
    assert geogr_cascade.stage_methods()["search_retrieval"]["method"] == "lexical_geo"
    # the GeoGR candidates are the retriever's own answer for the user's logged visits, best first
    stage = geogr_cascade.retriever
    request = geogr_cascade.resolve(17, Context(hour=19))
    history = stage.history(request)
    events = geogr_cascade.tables.user_events(request.user, request.time_s)
    assert history and set(history) <= set((events.poi + 1).tolist())
    got = stage.retrieve(request, None, 40)
    where = {"lat": answer["request"]["lat"], "lon": answer["request"]["lon"]}
    direct, _ = stage.retriever.retrieve([history], [{"hour": 19, "weekday": request.weekday, **where}], k=40)
    beams = direct[0][direct[0] >= 1] - 1
    assert (got.pois[:len(beams)] == beams).all() and len(got) == 40 and len(set(got.pois.tolist())) == 40
    # the baseline cascade on the same run still says geo-nearest popular
    assert cascade.feed(17, Context(hour=19), k=7)["funnel"][0]["method"] == "geo_nearest_popular"


def test_geogr_cold_users_get_the_geo_baseline_and_exclusions_hold(geogr_cascade):
    cold = geogr_cascade.feed(10**9, Context(lat=31.2, lon=121.4), k=10)
    retrieval = cold["funnel"][0]
    assert cold["request"]["cold_start"] and len(cold["results"]) == 10
    assert (retrieval["method"], retrieval["baseline"]) == ("geo_nearest_popular", True)
    first = geogr_cascade.feed(5, k=5)["results"][0]["poi_id"]
    again = geogr_cascade.feed(5, k=5, exclude_poi_ids=[first])
    assert again["funnel"][0]["method"] == "geogr" and first not in {x["poi_id"] for x in again["results"]}
    http = TestClient(create_app(geogr_cascade), raise_server_exceptions=False)
    r = http.post("/v1/feed", json={"user_id": 10**9, "context": {"lat": 31.2, "lon": 121.4}, "k": 5})
    assert r.status_code == 200 and [s["method"] for s in r.json()["funnel"]][:2] == ["geo_nearest_popular", "autofas"]
    stages = http.get("/healthz").json()["stages"]
    assert stages["feed_retrieval"]["method"] == "geogr" and stages["preranking"]["method"] == "autofas"


def test_geogr_stage_config_and_start_up_checks(geogr_run_dir, run_dir, tmp_path):
    baseline = Cascade.load(geogr_run_dir, config=CascadeConfig(feed_retrieval="geo_nearest_popular",
                                                                preranker="retrieval_score_truncation"))
    methods = baseline.stage_methods()
    assert methods["feed_retrieval"]["method"] == "geo_nearest_popular" and methods["feed_retrieval"]["baseline"]
    assert methods["preranking"]["method"] == "retrieval_score_truncation" and methods["preranking"]["baseline"]
    with pytest.raises(ConfigError, match=r"geogr/retriever\.json"):
        Cascade.load(run_dir, config=CascadeConfig(feed_retrieval="geogr"))
    with pytest.raises(ConfigError, match=r"autofas.*student\.json"):
        Cascade.load(run_dir, config=CascadeConfig(preranker="autofas"))
    with pytest.raises(ConfigError, match="feed_retrieval"):
        path = tmp_path / "serving.yaml"
        path.write_text("feed_retrieval: sasrec\n")
        load_cascade_config(path)
    corrupt = _corrupt(geogr_run_dir, tmp_path,
                       lambda d: (d / "geogr" / "model" / "model.safetensors").write_bytes(b"\0" * 64))
    with pytest.raises(ConfigError, match=r"geogr/model/model\.safetensors"):
        Cascade.load(corrupt)
    shutil.rmtree(corrupt)
    corrupt = _corrupt(geogr_run_dir, tmp_path, lambda d: (d / "autofas" / "student.safetensors").unlink())
    with pytest.raises(ConfigError, match=r"autofas/student\.safetensors"):
        Cascade.load(corrupt)


def test_autofas_online_fields_equal_the_view_rows(geogr_cascade, geogr_run_dir, tiny_world_dir):
    """Train/serve skew check for the pre-ranker: a view test request rebuilt online gets the same encoded values
    of the student's kept fields as the view rows it was trained on (noise fields are keyed by request id, which a
    served request does not share, so they are left out)."""
    from rankstack.data.dataset import Dataset
    from rankstack.preranking.data import load_split

    stage = geogr_cascade.preranker
    view = Path(json.loads((geogr_run_dir / "serving" / "autofas" / "student.json").read_text())["run"]) / "view"
    split = load_split(Dataset.open(view), "test", stage.model.fields)
    rows = pq.read_table(view / "test.parquet", columns=["request_id", "poi_id", "user_id", "timestamp", "hour",
                                                         "weekday", "weather", "query_category_l2"]).to_pylist()
    positions = pq.read_table(tiny_world_dir / "truth" / "requests.parquet").to_pandas().set_index("request_id")
    n_cand = split.n_cand
    checked = 0
    for r in range(2):
        same = rows[r * n_cand:(r + 1) * n_cand]
        row = same[0]
        assert row["request_id"] == split.request_ids[r]
        x, y = positions.loc[row["request_id"], "x_km"], positions.loc[row["request_id"], "y_km"]
        request = RequestContext(row["user_id"], row["user_id"] - 1, float(x), float(y), row["timestamp"],
                                 row["hour"], row["weekday"], row["weather"], row["query_category_l2"] - 1)
        online = stage.features.encode(request, np.array([x["poi_id"] - 1 for x in same]))
        for f in stage.model.fields:
            if f.name.startswith("noise_"):
                continue
            logged = split.tensors[f.key][r]
            if f.kind == "dense":
                assert torch.allclose(online[f.key].float(), logged.float(), rtol=1e-4, atol=1e-4), f.name
            else:
                assert torch.equal(online[f.key], logged), f.name
            checked += 1
    assert checked > 20
    scores = stage.scores(request, np.array([x["poi_id"] - 1 for x in same]))
    assert scores.shape == (n_cand,) and np.isfinite(scores).all() and scores.std() > 0
