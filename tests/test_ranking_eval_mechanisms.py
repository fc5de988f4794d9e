"""`mechanism_report`: which of the world's planted click mechanisms a model's scores follow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from rankstack.ranking.evaluate import mechanism_report


def true_terms(dataset) -> tuple[list[str], np.ndarray]:
    truth = pq.read_table(dataset.truth_path("test"))
    names = [c for c in truth.column_names if c.startswith("logit_") and np.std(truth.column(c).to_numpy()) > 1e-9]
    return [n[len("logit_"):] for n in names], np.stack([truth.column(c).to_numpy() for c in names], axis=1)


def clicks(dataset) -> np.ndarray:
    return pq.read_table(dataset.split_file("test"), columns=["click"]).column("click").to_numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_the_true_probabilities_follow_every_mechanism_at_scale_one(tiny_world):
    names, terms = true_terms(tiny_world)
    report = mechanism_report(tiny_world, "test", clicks(tiny_world), sigmoid(terms.sum(axis=1)))
    assert list(report["terms"]) == names and "realtime_intent" in names
    assert report["r2"] > 0.999
    for name, entry in report["terms"].items():
        assert abs(entry["coefficient"] - 1) < 1e-3, name
    worth = {name: report["bayes_auc"] - entry["auc_without"] for name, entry in report["terms"].items()}
    assert max(worth, key=worth.get) == "realtime_intent", "the world's largest click term (world.md §2.3)"


def test_a_model_blind_to_one_mechanism_gets_coefficient_zero_there(tiny_world):
    names, terms = true_terms(tiny_world)
    rng = np.random.default_rng(0)
    scale = np.where(np.array(names) == "realtime_intent", 0.0, 0.5)
    logit = terms @ scale + 0.3 * rng.standard_normal(len(terms))
    report = mechanism_report(tiny_world, "test", clicks(tiny_world), sigmoid(logit))
    coefficients = {name: entry["coefficient"] for name, entry in report["terms"].items()}
    assert abs(coefficients["realtime_intent"]) < 0.05
    assert all(abs(b - 0.5) < 0.1 for name, b in coefficients.items() if name != "realtime_intent"), coefficients
    assert 0.2 < report["r2"] < 0.95, "the added noise is not explained by the terms"


def test_real_data_without_a_truth_gives_no_report(datasets):
    dataset = datasets["two"]
    assert mechanism_report(dataset, "test", np.zeros(10), np.full(10, 0.5)) == {}
