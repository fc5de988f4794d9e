"""Tests for rankstack.metrics: each metric against scikit-learn or a brute-force loop, ties included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from rankstack import metrics as M

SEEDS = [0, 1, 2, 3, 4]


def _binary_data(seed: int, n: int = 500, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels correlated with scores; scores rounded so that many of them tie."""
    rng = np.random.default_rng(seed)
    probs = rng.random(n)
    labels = (rng.random(n) < probs).astype(np.int64)
    return labels, np.round(probs, decimals)


# ------------------------------------------------------------------------------------------------------------
# AUC, GAUC, log loss


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [1, 3])
def test_auc_matches_sklearn_with_ties(seed: int, decimals: int) -> None:
    labels, scores = _binary_data(seed, decimals=decimals)
    assert M.auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=40))
def test_auc_matches_sklearn_property(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([p[0] for p in pairs], dtype=np.int64)
    scores = np.array([p[1] for p in pairs], dtype=np.float64)
    assume(0 < labels.sum() < len(labels))
    assert M.auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_hand_example_with_tie() -> None:
    # Pairs (pos, neg): (0.8 vs 0.3) win, (0.8 vs 0.5) win, (0.5 vs 0.3) win, (0.5 vs 0.5) tie -> 3.5 / 4.
    assert M.auc([1, 0, 1, 0], [0.8, 0.3, 0.5, 0.5]) == pytest.approx(0.875)


def test_auc_is_nan_with_one_class_or_no_samples() -> None:
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))
    assert math.isnan(M.auc([], []))


def test_auc_accepts_torch_tensors() -> None:
    labels, scores = _binary_data(0)
    tensor_scores = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    expected = skm.roc_auc_score(labels, tensor_scores.detach().numpy())
    assert M.auc(torch.tensor(labels, dtype=torch.bool), tensor_scores) == pytest.approx(expected, abs=1e-12)


def _gauc_reference(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    total, weight = 0.0, 0
    for g in np.unique(groups):
        mask = groups == g
        if len(np.unique(labels[mask])) < 2:
            continue
        total += skm.roc_auc_score(labels[mask], scores[mask]) * mask.sum()
        weight += mask.sum()
    return total / weight


@pytest.mark.parametrize("seed", SEEDS)
def test_gauc_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, scores = _binary_data(seed, n=800)
    # Groups of very different sizes, so weighting by size matters; many small ones hold a single class.
    groups = rng.integers(0, 60, len(labels)) ** 2 % 97
    expected = _gauc_reference(labels, scores, groups)
    assert M.gauc(labels, scores, groups) == pytest.approx(expected, abs=1e-12)
    # Row order and the type of the group ids do not matter.
    perm = rng.permutation(len(labels))
    string_groups = np.array([f"user{g}" for g in groups])
    assert M.gauc(labels[perm], scores[perm], string_groups[perm]) == pytest.approx(expected, abs=1e-12)


def test_gauc_skips_single_class_groups_and_weights_by_size() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.9, 0.5, 0.4])
    groups = np.array([0, 0, 1, 1, 1, 1, 2, 2])
    # Group 0: AUC 1 (2 rows); group 1: pos {0.2, 0.9} vs neg {0.8, 0.3}, 2 of 4 pairs won (4 rows);
    # group 2 has no negative and is skipped.
    assert M.gauc(labels, scores, groups) == pytest.approx((1.0 * 2 + 0.5 * 4) / 6)


def test_gauc_equals_auc_for_one_group_and_nan_without_valid_group() -> None:
    labels, scores = _binary_data(7)
    assert M.gauc(labels, scores, np.zeros(len(labels))) == pytest.approx(M.auc(labels, scores))
    assert math.isnan(M.gauc([1, 0, 1], [0.1, 0.2, 0.3], [0, 1, 2]))
    assert math.isnan(M.gauc([], [], []))


@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.01, 0.99, 300)
    labels = (rng.random(300) < probs).astype(np.int64)
    assert M.log_loss(labels, probs) == pytest.approx(skm.log_loss(labels, probs), rel=1e-12)


def test_log_loss_clips_certain_mistakes() -> None:
    eps = 1e-7
    value = M.log_loss([1, 0, 1], [0.0, 1.0, 1.0], eps=eps)
    assert value == pytest.approx((-math.log(eps) * 2 - math.log(1 - eps)) / 3)


# ------------------------------------------------------------------------------------------------------------
# Ranking


def _rank_reference(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    ranks = []
    for row, target in zip(scores, targets, strict=True):
        better = sum(1 for s in row if s > row[target])
        tied_others = sum(1 for j, s in enumerate(row) if s == row[target] and j != target)
        ranks.append(1 + better + tied_others)
    return np.array(ranks)


def test_target_ranks_ties_are_pessimistic() -> None:
    scores = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [0.2, 0.2, 0.2], [0.1, 0.9, 0.5]])
    assert M.target_ranks(scores, np.array([0, 2, 1, 1])).tolist() == [2, 3, 3, 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(200, 12)).astype(np.float64)  # few distinct values: many ties
    targets = rng.integers(0, 12, 200)
    ranks = M.target_ranks(scores, targets)
    np.testing.assert_array_equal(ranks, _rank_reference(scores, targets))
    assert M.target_ranks(torch.from_numpy(scores), torch.from_numpy(targets)).tolist() == ranks.tolist()
    for k in [1, 3, 5, 12]:
        hits = [1.0 if r <= k else 0.0 for r in ranks]
        gains = [1.0 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]
        reciprocal_at_k = [1.0 / r if r <= k else 0.0 for r in ranks]
        assert M.hit_rate_at_k(ranks, k) == pytest.approx(sum(hits) / len(ranks))
        assert M.ndcg_at_k(ranks, k) == pytest.approx(sum(gains) / len(ranks))
        assert M.mrr(ranks, k) == pytest.approx(sum(reciprocal_at_k) / len(ranks))
    assert M.mrr(ranks) == pytest.approx(sum(1.0 / r for r in ranks) / len(ranks))


def test_ranking_metrics_hand_values_and_missing_items() -> None:
    ranks = np.array([1, 2, 4, np.inf])
    assert M.hit_rate_at_k(ranks, 2) == pytest.approx(0.5)
    assert M.ndcg_at_k(ranks, 3) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert M.mrr(ranks) == pytest.approx((1 + 0.5 + 0.25) / 4)
    assert math.isnan(M.hit_rate_at_k(np.array([], dtype=int), 5))


def test_recall_at_k() -> None:
    ranked = [["a", "b", "c", "d"], ["x", "y", "z"], ["p", "q"]]
    relevant = [{"a", "d", "e"}, {"z"}, set()]  # the last query has nothing to recall and is skipped
    assert M.recall_at_k(ranked, relevant, 2) == pytest.approx((1 / 3 + 0) / 2)
    assert M.recall_at_k(ranked, relevant, 4) == pytest.approx((2 / 3 + 1) / 2)
    # Tensors of ids compare by value; an item repeated in a list counts once.
    assert M.recall_at_k([torch.tensor([3, 3, 5])], [torch.tensor([3, 7])], 3) == pytest.approx(0.5)
    assert math.isnan(M.recall_at_k([[1, 2]], [[]], 2))


def test_ndcg_graded_perfect_reversed_and_hand_example() -> None:
    gains = np.array([3.0, 2.0, 1.0, 0.0])
    assert M.ndcg_graded(gains, gains, 4) == pytest.approx(1.0)
    assert M.ndcg_graded(gains[::-1], gains, 4) < 1.0
    # The system returned gains [0, 2, 1] while a gain-3 candidate existed but was not returned:
    # DCG = 0/1 + 2/log2(3) + 1/2, ideal DCG@3 = 3/1 + 2/log2(3) + 1/2.
    dcg = 2 / math.log2(3) + 0.5
    assert M.ndcg_graded([0, 2, 1], [2, 1, 0, 3], 3) == pytest.approx(dcg / (3 + dcg))
    # Without all_gains only the order of the returned items is judged.
    assert M.ndcg_graded([0, 2, 1], None, 3) == pytest.approx(dcg / (2 + 1 / math.log2(3)))
    assert math.isnan(M.ndcg_graded([0, 0], [0, 0, 0], 2))


@pytest.mark.parametrize("seed", SEEDS)
def test_ndcg_graded_matches_sklearn_when_every_item_is_returned(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gains = rng.integers(0, 4, 15).astype(np.float64)
    gains[0] = 3.0  # at least one relevant item, or NDCG is undefined
    scores = rng.permutation(15).astype(np.float64)  # distinct, so the system order is unambiguous
    system_order = gains[np.argsort(-scores)]
    expected = skm.ndcg_score(gains[None, :], scores[None, :], k=5)
    assert M.ndcg_graded(system_order, gains, 5) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Classification


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    # 7 is in neither array (zero division); leaving out 4 keeps its rows as mistakes for the others.
    for labels in ([0, 1, 2, 3, 4], [0, 1, 2, 3, 7], [3, 1]):
        expected = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        per_class = M.per_class_f1(y_true, y_pred, labels)
        assert list(per_class) == labels
        np.testing.assert_allclose(list(per_class.values()), expected, atol=1e-12)
        expected_macro = skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        assert M.macro_f1(y_true, y_pred, labels) == pytest.approx(expected_macro, abs=1e-12)
    assert M.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_per_class_f1_with_string_labels() -> None:
    y_true = ["cat", "dog", "dog", "bird"]
    y_pred = ["cat", "dog", "cat", "cat"]
    expected = skm.f1_score(y_true, y_pred, labels=["dog", "cat", "bird"], average=None, zero_division=0)
    assert list(M.per_class_f1(y_true, y_pred, ["dog", "cat", "bird"]).values()) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------------------
# Reports


def test_bayes_optimal_beats_a_noisy_model() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    true_probs = rng.beta(1, 4, n)
    labels = (rng.random(n) < true_probs).astype(np.int64)
    groups = rng.integers(0, 500, n)
    logits = np.log(true_probs / (1 - true_probs)) + rng.normal(0, 1, n)
    noisy = 1 / (1 + np.exp(-logits))
    bayes = M.bayes_optimal(labels, true_probs, groups)
    assert set(bayes) == {"auc", "logloss", "gauc"}
    assert bayes["auc"] > M.auc(labels, noisy) + 0.02
    assert bayes["gauc"] > M.gauc(labels, noisy, groups) + 0.02
    assert bayes["logloss"] < M.log_loss(labels, noisy)
    assert set(M.bayes_optimal(labels, true_probs)) == {"auc", "logloss"}


def test_binary_report() -> None:
    labels, probs = _binary_data(3)
    groups = np.arange(len(labels)) % 10
    report = M.binary_report(labels, probs, groups, prefix="click_")
    assert report == {
        "click_auc": pytest.approx(M.auc(labels, probs)),
        "click_gauc": pytest.approx(M.gauc(labels, probs, groups)),
        "click_logloss": pytest.approx(M.log_loss(labels, probs)),
        "click_count": len(labels),
        "click_pos_rate": pytest.approx(labels.mean()),
    }
    assert set(M.binary_report(labels, probs)) == {"auc", "logloss", "count", "pos_rate"}


# ------------------------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.auc(np.zeros(5), np.zeros(4)),
        lambda: M.gauc(np.zeros(5), np.zeros(5), np.zeros(4)),
        lambda: M.log_loss(np.zeros(5), np.zeros(4)),
        lambda: M.target_ranks(np.zeros((5, 3)), np.zeros(4, dtype=int)),
        lambda: M.per_class_f1(np.zeros(5), np.zeros(4), [0]),
        lambda: M.accuracy(np.zeros(5), np.zeros(4)),
        lambda: M.recall_at_k([[1]] * 5, [[1]] * 4, 1),
    ],
)
def test_mismatched_lengths_name_both_lengths(call) -> None:
    with pytest.raises(ValueError, match=r"has 5 .* has 4"):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.auc([0, 2], [0.1, 0.2]), "must be 0 or 1"),
        (lambda: M.auc([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: M.auc(np.zeros((2, 2)), np.zeros((2, 2))), "must be 1-D"),
        (lambda: M.log_loss([0, 1], [-0.5, 2.0]), "apply a sigmoid"),
        (lambda: M.target_ranks(np.zeros(3), np.zeros(3, dtype=int)), r"\[N, C\]"),
        (lambda: M.target_ranks(np.zeros((2, 3)), np.array([0, 3])), r"in \[0, 3\)"),
        (lambda: M.target_ranks(np.zeros((2, 3)), np.array([0.0, 1.0])), "integer column indices"),
        (lambda: M.hit_rate_at_k([1, 2], 0), "positive integer"),
        (lambda: M.ndcg_at_k([0, 1], 5), "add 1 to 0-based"),
        (lambda: M.ndcg_graded([3, 1], [1, 1, 0], 2), "not a subset"),
        (lambda: M.ndcg_graded([-1, 1], None, 2), "non-negative"),
        (lambda: M.per_class_f1([0, 1], [0, 1], [0, 0]), "more than once"),
    ],
)
def test_invalid_inputs_are_explained(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
