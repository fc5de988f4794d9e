"""Serving the relevance model from its first token: the single-pass scorer and CumPT tiering (relevance.md §3.4, §6).

The label comes first, so serving needs prefill only: `RelevanceScorer` left-pads a batch of prompts (bucketed by
length), runs one forward pass and reads the four label logits at the last position → p(k | x), k = 1..4. The
rationale is never decoded.

**CumPT** replaces per-tier thresholds with one β: accumulate p from the top tier down and stop where the sum
first reaches β,

    tier(x) = max{ k ∈ {1..4} : Σ_{j ≥ k} p_j ≥ β }

so β = 0.5 is the ordinal median and a larger β is more conservative. `tune_beta` picks β on dev over 0.30…0.80
(step 0.01) for 4-class macro-F1. Page tiers: Good = {4, 3}, Mid = {2}, Bad = {1}; within a tier, rank by
E[k] = Σ k·p_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rankstack.metrics import accuracy, macro_f1, per_class_f1
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message
from rankstack.relevance.format import LABELS, label_distribution, label_token_ids

PAGE_TIERS = ("Good", "Mid", "Bad")
_PAGE_OF_TIER = {4: "Good", 3: "Good", 2: "Mid", 1: "Bad"}
#: The default β grid: 0.30, 0.31, …, 0.80.
BETA_GRID = tuple(round(0.30 + 0.01 * i, 2) for i in range(51))
# Sums of float probabilities that should equal β can land a few ulps below it.
_EPS = 1e-9


def _probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(LABELS):
        raise ValueError(f"`probs` must have shape (N, 4), one distribution over tiers 1..4 per row; got {p.shape}.")
    return p


def cumpt_tiers(probs: Any, beta: float = 0.5) -> np.ndarray:
    """Tier 1..4 per row: the highest k whose upper tail Σ_{j ≥ k} p_j reaches β."""
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"`beta` must be in (0, 1], got {beta}.")
    p = _probs(probs)
    upper_tail = np.cumsum(p[:, ::-1], axis=1)[:, ::-1]  # column k-1 holds Σ_{j ≥ k} p_j
    reaches = upper_tail >= beta - _EPS
    # The highest such k: reaches[:, 0] always holds (the tail from tier 1 is 1).
    return (len(LABELS) - np.argmax(reaches[:, ::-1], axis=1)).astype(np.int64)


def argmax_tiers(probs: Any) -> np.ndarray:
    """The most probable tier per row (the offline reading CumPT is compared with)."""
    return np.argmax(_probs(probs), axis=1).astype(np.int64) + 1


def expected_tier(probs: Any) -> np.ndarray:
    """E[k] = Σ k·p_k per row: the ranking score within a tier."""
    return _probs(probs) @ np.asarray(LABELS, dtype=np.float64)


def page_tiers(tiers: Any) -> np.ndarray:
    """Good (tiers 4, 3), Mid (2) or Bad (1) per row."""
    return np.array([_PAGE_OF_TIER[int(t)] for t in np.asarray(tiers)])


def tier_report(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Per-class F1, 4-class macro-F1, accuracy and 3-page-tier macro-F1 (§6). Predictions of 0 count as wrong
    (use 0 for an unparseable output)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    report = {f"f1_{k}": v for k, v in per_class_f1(y_true, y_pred, LABELS).items()}
    report["macro_f1"] = macro_f1(y_true, y_pred, LABELS)
    report["accuracy"] = accuracy(y_true, y_pred)
    page = {0: "none", **_PAGE_OF_TIER}
    report["page_macro_f1"] = macro_f1(np.array([page[int(t)] for t in y_true]),
                                       np.array([page[int(t)] for t in y_pred]), PAGE_TIERS)
    return report


def tune_beta(probs: Any, labels: Any, grid: Sequence[float] = BETA_GRID) -> tuple[float, dict[float, float]]:
    """The β of `grid` with the best dev macro-F1, and the macro-F1 of every β. Ties go to the β closest to 0.5
    (the ordinal median), then to the smaller β."""
    p = _probs(probs)
    labels = np.asarray(labels, dtype=np.int64)
    scores = {float(b): macro_f1(labels, cumpt_tiers(p, b), LABELS) for b in grid}
    best = max(scores.values())
    beta = min((b for b, s in scores.items() if s == best), key=lambda b: (abs(b - 0.5), b))
    return beta, scores


class RelevanceScorer:
    """Batched single-forward-pass scoring of prompts into the 4-way label distribution.

    Prompts are sorted by token length and cut into batches of `batch_size`, so each batch pads little;
    the result is returned in input order.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 32, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_ids = label_token_ids(tokenizer)

    def score_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """p(k | prompt) for k = 1..4, shape (N, 4); prompts have the chat template applied already."""
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        if self.max_length is not None:
            encoded = [ids[-self.max_length:] for ids in encoded]  # keep the end, where the answer starts
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.zeros((len(encoded), len(LABELS)), dtype=np.float64)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding=True,
                                           padding_side="left", return_tensors="pt")
                probs = label_distribution(self.model, self.label_ids, batch["input_ids"].to(device),
                                           batch["attention_mask"].to(device))
                out[rows] = probs.cpu().double().numpy()
        finally:
            self.model.train(was_training)
        return out

    def score_records(self, records: Sequence[RelevanceRecord], rule_table: dict[str, str],
                      variant: str = "label_first", rule_text: bool = True) -> np.ndarray:
        """p(k | x) for each record's prompt."""
        return self.score_prompts([chat_prompt(self.tokenizer, prompt_message(r, rule_table, variant, rule_text))
                                   for r in records])


__all__ = ["PAGE_TIERS", "BETA_GRID", "cumpt_tiers", "argmax_tiers", "expected_tier", "page_tiers", "tier_report",
           "tune_beta", "RelevanceScorer"]
