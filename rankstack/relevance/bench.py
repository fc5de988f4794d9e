"""`rankstack bench relevance`: trained relevance runs side by side on one split (relevance.md §10.1, §10.3).

For each run (any stage's output folder), in one process, on the same pairs and batch size:

1. **CumPT**: β is tuned on the dev split (`calibrate`), then on the test split the single-pass scorer's CumPT
   tiers and its argmax tiers are scored (per-class F1, macro-F1, accuracy, page-tier macro-F1, per query type).
2. **Full decode**: greedy decoding of the whole completion; the parsed labels are scored the same way, with the
   format-failure, discriminative-hallucination, step-accuracy and rule-adherence rates (`generation_report`).
3. **Throughput**: pairs/s of the single forward pass vs pairs/s of the full decode, timed on the same pairs, and
   their ratio (§10.3 asks ≥ 10×).

The Bayes-optimal figure on the city is macro-F1 = 1: the tier is a deterministic function of the pair (the rule
engine), so the reference numbers are the class prior (always the majority tier) and the per-class chance level.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankstack.relevance.cumpt import RelevanceScorer, argmax_tiers, tier_report
from rankstack.relevance.data import load_split
from rankstack.relevance.evaluate import generate_completions, generation_report, query_type_report


def majority_baseline(train_labels: Sequence[int], test_labels: Sequence[int]) -> dict[str, float]:
    """Always the most frequent train tier: the floor every model must clear."""
    majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64)).argmax())
    return tier_report(test_labels, np.full(len(test_labels), majority))


def bench_run(run: str | Path, split: str = "test", dev_split: str = "valid", max_examples: int | None = 256,
              batch_size: int = 16, max_new_tokens: int = 160, decode: bool = True,
              device: str | None = None, dtype: str = "auto") -> dict[str, Any]:
    """The CumPT, argmax and full-decode metrics of one run, and its single-pass vs decode throughput, both with
    the model in `dtype` (`RelevanceScorer.from_run`: bf16 on a GPU by default, as a server would run it).

    A think-first run has no single-pass distribution (its first token is no label): only its full decode is
    scored, and `cumpt`, `argmax` and the throughput ratio are None."""
    scorer = RelevanceScorer.from_run(run, batch_size=batch_size, device=device, generate_only=True, dtype=dtype)
    meta = scorer.meta
    test = load_split(meta["dataset"], split, max_examples)
    labels = np.array([r.label for r in test])
    prompts = scorer.prompts(test)
    report: dict[str, Any] = {"run": str(run), "stage": meta.get("stage"), "variant": meta.get("variant"),
                              "split": split, "pairs": len(test), "beta": None, "cumpt": None, "argmax": None,
                              "single_pass_pairs_per_s": None,
                              "dtype": str(next(scorer.model.parameters()).dtype).removeprefix("torch.")}
    single_pass_s = None
    if scorer.variant != "think_first":
        report["beta"] = scorer.calibrate(load_split(meta["dataset"], dev_split, max_examples))
        start = time.perf_counter()
        probs = scorer.score_prompts(prompts)
        single_pass_s = time.perf_counter() - start
        cumpt = scorer.tiers_of(probs).tiers
        report.update(cumpt={**tier_report(labels, cumpt), **query_type_report(test, cumpt)},
                      argmax={**tier_report(labels, argmax_tiers(probs)),
                              **query_type_report(test, argmax_tiers(probs))},
                      single_pass_pairs_per_s=len(test) / single_pass_s)
    if decode or single_pass_s is None:
        start = time.perf_counter()
        texts = [c[0] for c in generate_completions(scorer.model, scorer.tokenizer, prompts,
                                                    max_new_tokens=max_new_tokens, batch_size=batch_size)]
        decode_s = time.perf_counter() - start
        report["decode"] = generation_report(test, texts, scorer.variant)
        report["decode_pairs_per_s"] = len(test) / decode_s
        if single_pass_s is not None:
            report["speedup"] = decode_s / single_pass_s
            report["cumpt_minus_decode_macro_f1"] = report["cumpt"]["macro_f1"] - report["decode"]["macro_f1"]
    train = load_split(meta["dataset"], "train")
    report["majority_baseline"] = majority_baseline([r.label for r in train], labels)
    return report


__all__ = ["majority_baseline", "bench_run"]
