"""Evaluation metrics: binary (AUC, GAUC, log loss), ranking (HR, NDCG, MRR, recall), multi-class (F1).

Everything is vectorised NumPy and takes NumPy arrays or torch tensors (any device, any float dtype). Inputs
are checked: a wrong shape, mismatched lengths or out-of-range values raise a `ValueError` that says what was
passed and what is expected.

Conventions:
- Binary labels are 0/1 (bool, int or float).
- A metric that is undefined on its input returns `nan` rather than raising: AUC with one class, GAUC with no
  group holding both classes, a mean over zero samples, graded NDCG of a query with no positive gain. Averages
  over evaluation slices can then drop it with `np.nanmean` and the choice stays visible.
- Ranks are 1-based positions of the true item; `np.inf` marks an item that is not in the list at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from numbers import Integral
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "auc",
    "bayes_optimal",
    "binary_report",
    "gauc",
    "hit_rate_at_k",
    "log_loss",
    "macro_f1",
    "mrr",
    "ndcg_at_k",
    "ndcg_graded",
    "per_class_f1",
    "recall_at_k",
    "target_ranks",
]


# ------------------------------------------------------------------------------------------------------------
# Input checking


def _to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):
        # A torch tensor: it may sit on a GPU or carry a grad, and NumPy has no bfloat16; metrics run in
        # float64 anyway, so widen floating tensors on the way out.
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _vector(x: Any, name: str, dtype: Any = None) -> np.ndarray:
    arr = _to_numpy(x, dtype)
    if arr.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D with one entry per sample, got shape {arr.shape}; "
            f"flatten it first (e.g. `{name}.reshape(-1)`)."
        )
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    (first, a), *rest = arrays.items()
    for name, b in rest:
        if len(a) != len(b):
            raise ValueError(
                f"`{first}` has {len(a)} elements but `{name}` has {len(b)}; "
                "they must hold one entry per sample, in the same order."
            )


def _binary_labels(labels: Any) -> np.ndarray:
    y = _vector(labels, "labels")
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(
            f"`labels` must be 0 or 1, got other values such as {bad.tolist()}; binarise them first."
        )
    return y.astype(np.int64)


def _finite_scores(scores: Any, name: str) -> np.ndarray:
    s = _vector(scores, name, np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(
            f"`{name}` holds {int(np.sum(~np.isfinite(s)))} NaN or infinite values; remove or fix them."
        )
    return s


def _probabilities(probs: Any, name: str = "probs") -> np.ndarray:
    p = _finite_scores(probs, name)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]; "
            "if these are logits, apply a sigmoid first."
        )
    return p


def _items(x: Iterable[Hashable]) -> list[Hashable]:
    # NumPy arrays and tensors become Python scalars: a 0-d tensor hashes by identity, so sets of them would
    # never match.
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")


def _mean(x: np.ndarray) -> float:
    # np.mean of an empty array warns and returns nan; the nan is what we want, the warning is noise.
    return float(x.mean()) if x.size else math.nan


# ------------------------------------------------------------------------------------------------------------
# Binary classification


def _auc_per_group(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (AUC, positives, negatives) from one sort; AUC is nan where a group lacks a class.

    AUC is the Mann-Whitney statistic: the share of (positive, negative) pairs where the positive scores
    higher, a tie counting one half. Sort by (group, score) and cut the order into blocks of equal (group,
    score): each positive in a block beats every negative in earlier blocks of its group and ties with the
    block's own negatives. Pair counts are kept as integers (twice the count, so half-ties stay whole) to be
    exact.
    """
    n = len(y)
    if n == 0:
        return np.full(n_groups, np.nan), np.zeros(n_groups, np.int64), np.zeros(n_groups, np.int64)
    order = np.lexsort((s, codes))
    y_sorted, s_sorted, g_sorted = y[order], s[order], codes[order]
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    new_block[1:] = (s_sorted[1:] != s_sorted[:-1]) | (g_sorted[1:] != g_sorted[:-1])
    starts = np.flatnonzero(new_block)
    block_pos = np.add.reduceat(y_sorted, starts)
    block_neg = np.diff(np.append(starts, n)) - block_pos
    block_group = g_sorted[starts]

    # Negatives before each block within its own group: an exclusive running sum over all blocks, less its
    # value at the first block of the group.
    neg_before = np.cumsum(block_neg) - block_neg
    first_of_group = np.empty(len(starts), dtype=bool)
    first_of_group[0] = True
    first_of_group[1:] = block_group[1:] != block_group[:-1]
    group_offset = neg_before[first_of_group][np.cumsum(first_of_group) - 1]
    neg_before -= group_offset

    twice_wins = block_pos * (2 * neg_before + block_neg)
    wins = np.bincount(block_group, weights=twice_wins, minlength=n_groups) / 2
    pos = np.bincount(codes, weights=y, minlength=n_groups).astype(np.int64)
    neg = np.bincount(codes, minlength=n_groups) - pos
    pairs = pos * neg
    with np.errstate(invalid="ignore", divide="ignore"):
        group_auc = np.where(pairs > 0, wins / pairs, np.nan)
    return group_auc, pos, neg


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC of `scores` for 0/1 `labels`; tied scores count one half (average ranks), nan for one class."""
    y = _binary_labels(labels)
    s = _finite_scores(scores, "scores")
    _same_length(labels=y, scores=s)
    group_auc, _, _ = _auc_per_group(y, s, np.zeros(len(y), dtype=np.int64), 1)
    return float(group_auc[0])


def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group AUC: the AUC within each group (user, query, session), averaged with weight = the group's size.

    This is the usual industrial GAUC, the impression-weighted mean of per-group AUCs. Groups with only one
    class have no AUC and are left out of both the sum and the weights; nan if no group has both classes.
    `groups` holds any sortable ids (ints, strings). One sort of all rows does every group at once, so 1e6
    rows in 1e5 groups take well under a second.
    """
    y = _binary_labels(labels)
    s = _finite_scores(scores, "scores")
    g = _vector(groups, "groups")
    _same_length(labels=y, scores=s, groups=g)
    uniques, codes = np.unique(g, return_inverse=True)
    group_auc, pos, neg = _auc_per_group(y, s, codes.reshape(-1), len(uniques))
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return math.nan
    size = (pos + neg)[valid]
    return float(np.sum(group_auc[valid] * size) / np.sum(size))


def log_loss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log); `probs` are clipped to [eps, 1 - eps] to keep it finite."""
    y = _binary_labels(labels)
    p = _probabilities(probs)
    _same_length(labels=y, probs=p)
    p = np.clip(p, eps, 1 - eps)
    return _mean(-np.where(y == 1, np.log(p), np.log1p(-p)))


def bayes_optimal(labels: Any, true_probs: Any, groups: Any = None) -> dict[str, float]:
    """The metrics of the true click probabilities on these labels: the ceiling for any model on this split.

    When labels are drawn from known probabilities (a simulated world), no model can beat, in expectation, the
    AUC, GAUC and log loss of those probabilities themselves; a model's gap to these figures is what is left
    to learn. On a finite split a model may land slightly above them by chance. Keys: `auc`, `logloss`, and
    `gauc` when `groups` is given.
    """
    report = {"auc": auc(labels, true_probs), "logloss": log_loss(labels, true_probs)}
    if groups is not None:
        report["gauc"] = gauc(labels, true_probs, groups)
    return report


def binary_report(labels: Any, probs: Any, groups: Any = None, prefix: str = "") -> dict[str, float]:
    """AUC, GAUC (if `groups`), log loss, count and positive rate of binary predictions, in one dict.

    Keys take `prefix` verbatim: prefix="click_" gives `click_auc`, `click_gauc`, `click_logloss`,
    `click_count` and `click_pos_rate`.
    """
    y = _binary_labels(labels)
    report = {"auc": auc(y, probs)}
    if groups is not None:
        report["gauc"] = gauc(y, probs, groups)
    report["logloss"] = log_loss(y, probs)
    report["count"] = float(len(y))
    report["pos_rate"] = _mean(y)
    return {prefix + key: value for key, value in report.items()}


# ------------------------------------------------------------------------------------------------------------
# Ranking


def target_ranks(scores: Any, targets: Any) -> np.ndarray:
    """1-based rank of each row's target among its C candidates, from [N, C] scores and [N] target indices.

    Ties are counted pessimistically: rank = 1 + #(score > target's) + #(other candidates with an equal
    score), so a model that gives every candidate the same score ranks the target last, not first, and cannot
    score well by being indifferent.
    """
    s = _to_numpy(scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"`scores` must be a [N, C] matrix of candidate scores, got shape {s.shape}.")
    t = _vector(targets, "targets")
    if len(t) != len(s):
        raise ValueError(
            f"`scores` has {len(s)} rows but `targets` has {len(t)} elements; they need one target per row."
        )
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"`targets` must hold integer column indices, got dtype {t.dtype}.")
    n_candidates = s.shape[1]
    if t.size and (t.min() < 0 or t.max() >= n_candidates):
        raise ValueError(
            f"`targets` must be column indices in [0, {n_candidates}), got values in [{t.min()}, {t.max()}]."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(
            "`scores` holds NaN or infinite values; a rank against them is meaningless, fix them first."
        )
    target_score = s[np.arange(len(t)), t]
    # The target itself is among the ">=" candidates, which supplies the "1 +".
    return np.sum(s >= target_score[:, None], axis=1)


def _ranks(ranks: Any) -> np.ndarray:
    r = _vector(ranks, "ranks", np.float64)
    invalid = ~(r >= 1)
    if invalid.any():
        raise ValueError(
            f"`ranks` must be 1-based positions (>= 1, or inf for an item not in the list), but "
            f"{int(invalid.sum())} of them are below 1 or NaN, e.g. {r[invalid][0]}; add 1 to 0-based ranks."
        )
    return r


def hit_rate_at_k(ranks: Any, k: int) -> float:
    """Share of targets ranked in the top k: HR@K, also Acc@K and Recall@K with one target each."""
    _check_k(k)
    return _mean(_ranks(ranks) <= k)


def ndcg_at_k(ranks: Any, k: int) -> float:
    """Mean NDCG@k for one relevant item per query: 1 / log2(rank + 1) if rank <= k, else 0 (ideal DCG 1)."""
    _check_k(k)
    r = _ranks(ranks)
    return _mean(np.where(r <= k, 1.0 / np.log2(r + 1), 0.0))


def mrr(ranks: Any, k: int | None = None) -> float:
    """Mean reciprocal rank; with `k`, MRR@k, where a target ranked below k counts 0."""
    r = _ranks(ranks)
    reciprocal = 1.0 / r
    if k is not None:
        _check_k(k)
        reciprocal = np.where(r <= k, reciprocal, 0.0)
    return _mean(reciprocal)


def recall_at_k(
    ranked_lists: Iterable[Sequence[Hashable]], relevant_sets: Iterable[Collection[Hashable]], k: int
) -> float:
    """Mean over queries of |top k of the list ∩ relevant| / |relevant|, for several relevant items per query.

    Queries with no relevant item have no recall and are skipped; nan if every query is skipped. A repeated
    item in a list counts once.
    """
    _check_k(k)
    lists, relevants = list(ranked_lists), list(relevant_sets)
    if len(lists) != len(relevants):
        raise ValueError(
            f"`ranked_lists` has {len(lists)} queries but `relevant_sets` has {len(relevants)}; "
            "they need one relevant set per ranked list."
        )
    recalls = [
        len(set(_items(ranked)[:k]) & relevant) / len(relevant)
        for ranked, relevant in zip(lists, (set(_items(r)) for r in relevants), strict=True)
        if relevant
    ]
    return _mean(np.asarray(recalls, dtype=np.float64))


def ndcg_graded(gains_in_system_order: Any, all_gains: Any | None, k: int) -> float:
    """NDCG@k of one ranked list under graded relevance: DCG of the list over the ideal DCG.

    `gains_in_system_order` are the true gains of the items the system returned, in its order; `all_gains` are
    the gains of every candidate the system could have returned (None: the returned items only, which scores
    the order alone). DCG uses the plain gain (not 2^g - 1) and the discount log2(i + 1) for 1-based position
    i; the ideal DCG takes the top k of `all_gains` in descending order. nan when the ideal DCG is 0 (no
    candidate has a positive gain): such a query cannot tell systems apart.
    """
    _check_k(k)
    system = _finite_scores(gains_in_system_order, "gains_in_system_order")
    pool = system if all_gains is None else _finite_scores(all_gains, "all_gains")
    if (system.size and system.min() < 0) or (pool.size and pool.min() < 0):
        raise ValueError("Gains must be non-negative; shift or clip them before computing NDCG.")
    ideal = np.sort(pool)[::-1]
    # Every returned item is one of the candidates, so its i-th best gain cannot beat the pool's i-th best;
    # a violation means the two arrays do not describe the same candidates and NDCG would exceed 1.
    if len(system) > len(ideal) or np.any(np.sort(system)[::-1] > ideal[: len(system)]):
        raise ValueError(
            "`gains_in_system_order` is not a subset of `all_gains`: pass in `all_gains` the gains of every "
            "candidate, including those the system returned."
        )
    system, ideal = system[:k], ideal[:k]
    ideal_dcg = np.sum(ideal / np.log2(np.arange(2, len(ideal) + 2)))
    if ideal_dcg == 0:
        return math.nan
    return float(np.sum(system / np.log2(np.arange(2, len(system) + 2))) / ideal_dcg)


# ------------------------------------------------------------------------------------------------------------
# Multi-class classification


def _label_codes(values: np.ndarray, label_array: np.ndarray) -> np.ndarray:
    """Index of each value in `label_array`, -1 for values not listed."""
    sorter = np.argsort(label_array)
    sorted_labels = label_array[sorter]
    pos = np.clip(np.searchsorted(sorted_labels, values), 0, len(sorted_labels) - 1)
    return np.where(sorted_labels[pos] == values, sorter[pos], -1)


def per_class_f1(y_true: Any, y_pred: Any, labels: Sequence[Hashable]) -> dict[Hashable, float]:
    """F1 of each label in `labels`, one-vs-rest; 0.0 where undefined (a label neither true nor predicted).

    Matches scikit-learn's `f1_score(average=None, labels=labels, zero_division=0)`. Classes in the data but
    not in `labels` still count as wrong answers for the listed ones.
    """
    t = _vector(y_true, "y_true")
    p = _vector(y_pred, "y_pred")
    _same_length(y_true=t, y_pred=p)
    label_array = _to_numpy(labels)
    if label_array.ndim != 1 or label_array.size == 0:
        raise ValueError(f"`labels` must be a non-empty list of class labels, got {labels!r}.")
    if len(np.unique(label_array)) != len(label_array):
        raise ValueError(
            f"`labels` lists a class more than once: {label_array.tolist()}; list each class once."
        )
    m = len(label_array)
    true_code, pred_code = _label_codes(t, label_array), _label_codes(p, label_array)
    true_count = np.bincount(true_code[true_code >= 0], minlength=m)
    pred_count = np.bincount(pred_code[pred_code >= 0], minlength=m)
    tp = np.bincount(true_code[(true_code == pred_code) & (true_code >= 0)], minlength=m)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (#true + #predicted).
    denom = true_count + pred_count
    f1 = np.divide(2 * tp, denom, out=np.zeros(m), where=denom > 0)
    return dict(zip(label_array.tolist(), f1.tolist(), strict=True))


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[Hashable]) -> float:
    """Unweighted mean of the per-class F1 over `labels` (scikit-learn's average="macro", zero_division=0)."""
    return float(np.mean(list(per_class_f1(y_true, y_pred, labels).values())))


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of samples where the prediction equals the true label; nan on empty input."""
    t = _vector(y_true, "y_true")
    p = _vector(y_pred, "y_pred")
    _same_length(y_true=t, y_pred=p)
    return _mean(t == p)
