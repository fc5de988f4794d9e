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

**The serving API** for the cascade: `RelevanceScorer.from_run(run_dir)` loads a trained relevance run (any stage)
with its prompt settings and its calibrated β (`cumpt.json`, written by `calibrate(...).save_calibration()`), and

    scores = scorer.score(queries, items)        # one forward pass per pair, batched
    scores.probs (N, 4), scores.tiers (CumPT), scores.page_tiers, scores.expected (E[k], the in-tier ranking)

`items` are `RelevanceItem`s (or the records of a relevance dataset, `score_records`). The rationale is decoded only
on request: `scorer.explain(query, item)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankstack.errors import ConfigError
from rankstack.metrics import accuracy, macro_f1, per_class_f1
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message
from rankstack.relevance.format import LABELS, label_distribution, label_token_ids

PAGE_TIERS = ("Good", "Mid", "Bad")
_PAGE_OF_TIER = {4: "Good", 3: "Good", 2: "Mid", 1: "Bad"}
#: The default β grid: 0.30, 0.31, …, 0.80.
BETA_GRID = tuple(round(0.30 + 0.01 * i, 2) for i in range(51))
# Sums of float probabilities that should equal β can land a few ulps below it.
_EPS = 1e-9
#: The calibration file `from_run` reads next to a run's model folder.
CALIBRATION_FILE = "cumpt.json"
#: The tier rules every pair is judged by; a caller without the pair's atomic rules gets these.
TIER_RULES = ("R1", "R2", "R3", "R4")


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
    # The tail from tier 1 is 1 by definition, though a float32 softmax can sum a few 1e-8 below it.
    reaches[:, 0] = True
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


@dataclass(frozen=True)
class RelevanceItem:
    """An item as the relevance prompt shows it (a POI of the city, or a product)."""

    id: str
    title: str
    category: str
    brand: str = ""
    price_level: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RelevanceScores:
    """The scorer's output for N pairs: p(k | x), the CumPT tier, its page tier and E[k]."""

    probs: np.ndarray
    tiers: np.ndarray
    page_tiers: np.ndarray
    expected: np.ndarray
    beta: float


class RelevanceScorer:
    """Batched single-forward-pass scoring of pairs into the 4-way label distribution and CumPT tiers.

    Prompts are sorted by token length and cut into batches of `batch_size`, so each batch pads little;
    the result is returned in input order.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 32, max_length: int | None = None,
                 beta: float = 0.5, variant: str = "label_first", rule_text: bool = True,
                 rule_table: dict[str, str] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_ids = label_token_ids(tokenizer)
        self.beta = beta
        self.variant = variant
        self.rule_text = rule_text
        self.rule_table = rule_table or {}
        self.run_dir: Path | None = None
        self.meta: dict[str, Any] = {}

    @classmethod
    def from_run(cls, run_dir: str | Path, batch_size: int = 32, device: str | torch.device | None = None,
                 generate_only: bool = False, dtype: str = "auto") -> RelevanceScorer:
        """The scorer of a trained relevance run (a run folder or its `model/`), with the β of its `cumpt.json`
        when calibrated (else 0.5, the ordinal median). `generate_only` also loads a think-first run, whose
        prompts and model serve for decoding only (`score_prompts` refuses it). `dtype`: "auto" serves in bf16 on a
        CUDA device that supports it and in fp32 elsewhere; "fp32" or "bf16" choose."""
        # sft and stage import this module, so they are imported here, late.
        from rankstack.relevance.data import load_rule_table
        from rankstack.relevance.sft import load_checkpoint
        from rankstack.relevance.stage import checkpoint_dir

        checkpoint = checkpoint_dir(run_dir)
        model, tokenizer, meta = load_checkpoint(checkpoint)
        if meta["variant"] == "think_first" and not generate_only:
            raise ConfigError(f"{checkpoint} is a think-first model: its first token is no label, so it cannot be "
                              "served from one forward pass; serve a label-first or label-only run.")
        if device is not None:
            model = model.to(device)
        if dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dtype {dtype!r} is not one of auto, fp32, bf16.")
        cuda = next(model.parameters()).device.type == "cuda"
        if dtype == "bf16" or (dtype == "auto" and cuda and torch.cuda.is_bf16_supported()):
            model = model.to(torch.bfloat16)
        calibration = checkpoint.parent / CALIBRATION_FILE
        beta = json.loads(calibration.read_text())["beta"] if calibration.is_file() else 0.5
        rule_table = load_rule_table(meta["dataset"]) if Path(meta["dataset"]).is_dir() else {}
        scorer = cls(model, tokenizer, batch_size, beta=beta, variant=meta["variant"],
                     rule_text=bool(meta["rule_text"]), rule_table=rule_table)
        scorer.run_dir, scorer.meta = checkpoint.parent, meta
        return scorer

    def score_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """p(k | prompt) for k = 1..4, shape (N, 4); prompts have the chat template applied already."""
        if self.variant == "think_first":
            raise ConfigError("a think-first model's first token is no label: it has no single-pass distribution; "
                              "decode its answer instead (`rankstack bench relevance` does).")
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

    def prompts(self, records: Sequence[RelevanceRecord], rule_table: dict[str, str] | None = None,
                variant: str | None = None, rule_text: bool | None = None) -> list[str]:
        """The chat prompts of `records` (the scorer's own settings unless given)."""
        table = self.rule_table if rule_table is None else rule_table
        variant = self.variant if variant is None else variant
        rule_text = self.rule_text if rule_text is None else rule_text
        return [chat_prompt(self.tokenizer, prompt_message(r, table, variant, rule_text)) for r in records]

    def score_records(self, records: Sequence[RelevanceRecord], rule_table: dict[str, str] | None = None,
                      variant: str | None = None, rule_text: bool | None = None) -> np.ndarray:
        """p(k | x) for each record's prompt."""
        return self.score_prompts(self.prompts(records, rule_table, variant, rule_text))

    def score(self, queries: Sequence[str], items: Sequence[RelevanceItem],
              rules: Sequence[Sequence[str]] | None = None) -> RelevanceScores:
        """Score N (query, item) pairs: one forward pass each, batched. `rules` are each pair's atomic rule ids
        (default: the tier rules R1-R4 only)."""
        return self.tiers_of(self.score_records(self.records(queries, items, rules)))

    def tiers_of(self, probs: np.ndarray) -> RelevanceScores:
        """CumPT tiers (the scorer's β), page tiers and E[k] of a batch of distributions."""
        tiers = cumpt_tiers(probs, self.beta)
        return RelevanceScores(probs, tiers, page_tiers(tiers), expected_tier(probs), self.beta)

    def explain(self, query: str, item: RelevanceItem, rules: Sequence[str] | None = None,
                max_new_tokens: int = 160) -> str:
        """The full answer (label and rationale), decoded greedily: for a person asking why, never on the hot path."""
        from rankstack.relevance.evaluate import generate_completions

        prompt = self.prompts(self.records([query], [item], None if rules is None else [rules]))
        return generate_completions(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens)[0][0]

    def calibrate(self, records: Sequence[RelevanceRecord], grid: Sequence[float] = BETA_GRID) -> float:
        """Tune β on labelled (dev) records for 4-class macro-F1 and keep it; returns β."""
        self.beta, _ = tune_beta(self.score_records(records), [r.label for r in records], grid)
        return self.beta

    def save_calibration(self, run_dir: str | Path | None = None) -> Path:
        """Write β to `<run>/cumpt.json`, where `from_run` finds it."""
        target = Path(run_dir) if run_dir is not None else self.run_dir
        if target is None:
            raise ConfigError("save_calibration needs the run folder (this scorer was not made by from_run).")
        path = target / CALIBRATION_FILE
        path.write_text(json.dumps({"beta": self.beta}))
        return path

    @staticmethod
    def records(queries: Sequence[str], items: Sequence[RelevanceItem],
                rules: Sequence[Sequence[str]] | None = None) -> list[RelevanceRecord]:
        """Unlabelled records of (query, item) pairs, as the prompt builder reads them."""
        if len(queries) != len(items) or (rules is not None and len(rules) != len(items)):
            raise ValueError(f"score() needs one query (and one rule list) per item; got {len(queries)} queries, "
                             f"{len(items)} items" + (f", {len(rules)} rule lists." if rules is not None else "."))
        return [RelevanceRecord(pair_id=f"serve-{i}", query_id=f"serve-{i}", query=q, query_type="unknown",
                                is_hard=False, item_id=it.id, item_title=it.title, item_category=it.category,
                                item_brand=it.brand, item_price_level=float(it.price_level), attrs=dict(it.attrs),
                                rules=tuple(rules[i]) if rules is not None else TIER_RULES, label=0, gold=None)
                for i, (q, it) in enumerate(zip(queries, items))]


__all__ = ["PAGE_TIERS", "BETA_GRID", "cumpt_tiers", "argmax_tiers", "expected_tier", "page_tiers", "tier_report",
           "tune_beta", "CALIBRATION_FILE", "TIER_RULES", "RelevanceItem", "RelevanceScores", "RelevanceScorer"]
