"""The retrieval evaluator and the non-generative baselines (geogr.md §5, §6): metrics against brute force, the
oracle's expected metrics, reading next-POI datasets, and popularity / geo-nearest popular on the `tiny` city."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankstack.errors import DataError
from rankstack.retrieval.baselines import (
    BaselineConfig,
    geo_popular_topk,
    history_topk,
    popularity_topk,
    run_baselines,
    topk_indices,
)
from rankstack.retrieval.data import haversine_km, load_retrieval_data
from rankstack.retrieval.evaluate import evaluate_topk, oracle_metrics, ranks_in_lists
from rankstack.retrieval.run import bench_baselines, format_baselines, load_run_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "retrieval" / "city_tiny.yaml"


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir


@pytest.fixture(scope="module")
def data(world: Path):
    return load_retrieval_data(world / "next_poi")


# ------------------------------------------------------------------------------------------------------------
# The evaluator


def brute_force_metrics(ranked: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    acc = {k: 0.0 for k in (1, 5, 10)}
    ndcg = {k: 0.0 for k in (5, 10)}
    rr = 0.0
    for row, target in zip(ranked.tolist(), targets.tolist()):
        rank = row.index(target) + 1 if target >= 0 and target in row else None
        if rank is None:
            continue
        for k in acc:
            acc[k] += rank <= k
        for k in ndcg:
            ndcg[k] += 1 / math.log2(rank + 1) if rank <= k else 0.0
        rr += 1 / rank
    n = len(targets)
    return ({f"acc@{k}": v / n for k, v in acc.items()} | {f"ndcg@{k}": v / n for k, v in ndcg.items()}
            | {"mrr": rr / n})


def test_metrics_match_a_brute_force_computation() -> None:
    rng = np.random.default_rng(0)
    n, width, pois = 500, 20, 60
    ranked = np.stack([rng.permutation(pois)[:width] for _ in range(n)])
    ranked[::7, 15:] = -1  # short lists, padded
    targets = rng.integers(-1, pois, n)  # -1: a target outside the catalogue, always a miss
    report = evaluate_topk(ranked, targets, n_pois=pois)
    for key, value in brute_force_metrics(ranked, targets).items():
        assert report[key] == pytest.approx(value), key
    assert report["width"] == width and report["count"] == n
    assert report["coverage"] == pytest.approx(len(np.unique(ranked[ranked >= 0])) / pois)
    ranks = ranks_in_lists(ranked, targets)
    assert np.isinf(ranks[targets == -1]).all()
    with pytest.raises(ValueError, match="one row per target"):
        ranks_in_lists(ranked[:3], targets)


def test_oracle_metrics_are_expectations_over_the_true_distribution(tmp_path: Path) -> None:
    probs = [[0.5, 0.3, 0.2] + [0.0] * 47, [0.9] + [0.1 / 49] * 49]
    table = pa.table({"sample_id": [1, 2], "target_poi_id": [1, 2], "target_prob": [0.5, 0.9],
                      "oracle_poi_ids": [list(range(1, 51))] * 2, "oracle_probs": probs})
    pq.write_table(table, tmp_path / "test.parquet")
    report = oracle_metrics(tmp_path / "test.parquet")
    p = np.asarray(probs)
    assert report["acc@1"] == pytest.approx((0.5 + 0.9) / 2)
    assert report["acc@5"] == pytest.approx((1.0 + 0.9 + 4 * 0.1 / 49) / 2)
    assert report["ndcg@5"] == pytest.approx(np.mean([(r[:5] / np.log2(np.arange(2, 7))).sum() for r in p]))
    assert report["mrr"] == pytest.approx(np.mean([(r / np.arange(1, 51)).sum() for r in p]))
    assert report["width"] == 50


def test_topk_indices_orders_by_score_then_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.0], [3, 2, 1, 0, -1]], dtype=float)
    assert topk_indices(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    rng = np.random.default_rng(1)
    s = rng.normal(size=(50, 200))
    np.testing.assert_array_equal(topk_indices(s, 20), np.argsort(-s, axis=1, kind="stable")[:, :20])


def test_geo_nearest_popular_scores_match_its_formula(data) -> None:
    popularity = data.train_checkins.popularity(len(data.catalogue))
    test = data.splits["test"]
    top = geo_popular_topk(popularity, data.catalogue, test.lat[:25], test.lon[:25], 1.0, 10)
    for row in range(25):
        dist = haversine_km(test.lat[row], test.lon[row], data.catalogue.lat, data.catalogue.lon)
        score = np.log1p(popularity) - dist / 1.0
        np.testing.assert_array_equal(top[row], np.argsort(-score, kind="stable")[:10])


# ------------------------------------------------------------------------------------------------------------
# Reading next-POI datasets


def test_world_dataset_is_read_with_catalogue_indices(world: Path, data) -> None:
    assert data.layout.name == "world" and len(data.catalogue) == 300
    test = pq.read_table(world / "next_poi" / "test.parquet").to_pylist()
    samples = data.splits["test"]
    assert len(samples) == len(test)
    for row in (0, len(test) // 2, len(test) - 1):
        assert data.catalogue.ids[samples.target[row]] == test[row]["target_poi_id"]
        hist = samples.history[row][samples.history[row] >= 0]
        assert data.catalogue.ids[hist].tolist() == test[row]["hist_poi_id"]
        assert data.catalogue.ids[samples.last_poi()[row]] == test[row]["hist_poi_id"][-1]
    # Train check-ins: the train targets plus each user's first visit (never a target).
    n_users = len(np.unique(data.train_checkins.user))
    assert len(data.train_checkins) == len(data.splits["train"]) + n_users
    assert data.oracle_path is not None


def test_missing_split_or_wrong_layout_is_a_clear_error(tmp_path: Path, world: Path) -> None:
    with pytest.raises(DataError, match="train.parquet is missing"):
        load_retrieval_data(tmp_path)
    for split in ("train", "valid", "test"):
        pq.write_table(pa.table({"user_id": [1], "item": [2]}), tmp_path / f"{split}.parquet")
    with pytest.raises(DataError, match="not a next-POI dataset"):
        load_retrieval_data(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Baselines on the tiny city


def test_baselines_beat_random_and_stay_below_the_oracle(data) -> None:
    report = run_baselines(data, BaselineConfig(width=20))
    test = data.splits["test"]
    rng = np.random.default_rng(0)
    random_lists = np.stack([rng.permutation(len(data.catalogue))[:20] for _ in range(len(test))])
    chance = evaluate_topk(random_lists, test.target)
    popularity, geo, oracle = report["popularity"]["test"], report["geo_nearest_popular"]["test"], report["oracle"]
    for metric in ("acc@1", "acc@10", "mrr"):
        assert popularity[metric] > chance[metric], metric
        assert geo[metric] > popularity[metric], metric
        assert oracle[metric] > geo[metric], metric
    assert popularity["acc@10"] > 2 * chance["acc@10"]
    tuning = report["geo_nearest_popular"]["tuning"]
    assert report["geo_nearest_popular"]["bandwidth_km"] == max(tuning, key=tuning.get)
    # Popularity returns one list for everybody: the 20 most visited POIs.
    lists = popularity_topk(data.train_checkins.popularity(300), 3, 20)
    assert popularity["coverage"] == pytest.approx(20 / 300) and (lists == lists[0]).all()


def test_user_history_ranks_recent_and_frequent_visits_first_then_popularity() -> None:
    history = np.array([[3, 1, 3, 2, -1], [-1, -1, -1, -1, -1], [0, 4, 4, 4, 1]])  # oldest first, -1 padded
    popularity = np.array([5.0, 0.0, 1.0, 0.0, 9.0, 7.0])
    # decay 1: visit counts (3 twice), ties broken by the lower index; decay 0.5: the latest visit (2) first.
    assert history_topk(history, popularity, 5, 1.0)[0].tolist() == [3, 1, 2, 4, 5]
    assert history_topk(history, popularity, 5, 0.5)[0].tolist() == [2, 3, 1, 4, 5]
    assert history_topk(history, popularity, 3, 1.0)[1].tolist() == [4, 5, 0]  # no history: popularity
    assert history_topk(history, popularity, 2, 1.0, batch_size=1)[2].tolist() == [4, 0]  # 3 visits > 1 visit
    with pytest.raises(ValueError, match="history_decays"):
        BaselineConfig(history_decays=(0.0,))


def test_user_history_baseline_is_tuned_on_valid(data) -> None:
    report = run_baselines(data, BaselineConfig(width=20, history_decays=(0.5, 1.0)))["user_history"]
    assert report["decay"] == max(report["tuning"], key=report["tuning"].get)
    assert 0.0 <= report["test"]["acc@1"] <= report["test"]["acc@10"] <= 1.0


def test_bench_baselines_writes_results_and_rows(world: Path, tmp_path: Path) -> None:
    config = load_run_config(CONFIG, {"data": str(world / "next_poi"), "baselines.bandwidths_km": [1.0, 2.0],
                                      "sasrec.enabled": False})  # SASRec has its own test (test_retrieval_lm)
    report = bench_baselines(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["popularity"]["test"]["acc@10"] == pytest.approx(report["popularity"]["test"]["acc@10"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["split"]) for r in rows} == {("popularity", "valid"), ("popularity", "test"),
                                                        ("geo_nearest_popular", "valid"),
                                                        ("geo_nearest_popular", "test"), ("user_history", "valid"),
                                                        ("user_history", "test"), ("oracle", "test")}
    table = format_baselines(report)
    assert table.splitlines()[0].split()[:2] == ["method", "acc@1"] and "oracle" in table
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize("path", sorted(CONFIG.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_starter_config_loads(path: Path) -> None:
    config = load_run_config(path)
    assert config.data and config.baselines.width >= 10
    assert config.semantic_ids.quantizer.levels == 3
