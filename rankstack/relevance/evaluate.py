"""Batched sampling from a relevance policy, and evaluation of what it writes (relevance.md §3.2 pass@N, §6 metrics).

`generate_completions` is the one sampler every stage uses: greedy decoding for evaluation, N samples per prompt
at temperature T for DPO's pass@N (§3.2) and for GRPO's difficulty estimate (§3.3). Prompts are sorted by length,
left-padded in batches and decoded without special tokens, so the strict parser reads them as they were trained.

`generation_report` scores decoded completions against the records (§6):

- label metrics (per-class F1, macro-F1, accuracy, 3-page-tier macro-F1) of the parsed label; an output without a
  readable label counts as wrong (prediction 0);
- `format_failure_rate`: outputs with any parser error; `correct_rate`: well-formed with the gold label;
  `mean_reward`: the GRPO reward averaged over the outputs (correct_rate − format_failure_rate);
- `hallucination_rate`: the discriminative-hallucination rate, the share of outputs whose label and own category
  and constraint verdicts can both be read in which the label differs from the rule engine applied to those
  verdicts (`format.discriminative_hallucination`); None when no output can be judged;
- `step_accuracy/<step>` (verifier, pairs with gold steps) and `rule_adherence` (well-formed outputs with gold);
- `macro_f1/<query type>` and `macro_f1/hard`.

`evaluate_policy` runs both readings of a policy on a set of records: the first-token distribution (single pass,
CumPT's input) and, when asked, greedy decoding of the full completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rankstack.metrics import macro_f1
from rankstack.relevance.cumpt import RelevanceScorer, argmax_tiers, tier_report
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message
from rankstack.relevance.format import LABELS, STEPS, ParsedOutput, discriminative_hallucination, parse_output
from rankstack.relevance.rules import rule_adherence, verify_steps


def generate_completions(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], num_samples: int = 1,
                         do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                         max_new_tokens: int = 160, batch_size: int = 16, seed: int | None = None) -> list[list[str]]:
    """`num_samples` completions per prompt (greedy when `do_sample` is False), decoded without special tokens.

    Prompts have the chat template applied already. `batch_size` counts prompts per `generate` call. Sampling is
    seeded by `seed` (when given) once, before the first batch, so a run is reproducible on CPU.
    """
    if not do_sample and num_samples != 1:
        raise ValueError("greedy decoding gives one completion per prompt; set do_sample=True for num_samples > 1.")
    texts, _ = generate_batched(model, tokenizer, prompts, num_samples, do_sample, temperature, top_k, max_new_tokens,
                                batch_size, seed, with_entropy=False)
    return texts


def generate_batched(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], num_samples: int,
                     do_sample: bool, temperature: float, top_k: int, max_new_tokens: int, batch_size: int,
                     seed: int | None, with_entropy: bool) -> tuple[list[list[str]], list[list[float]]]:
    """The one generation loop: prompts sorted by length, left-padded batches, `num_samples` completions each; with
    `with_entropy`, also each completion's mean token entropy of the policy (raw logits, up to the first eos; empty
    lists otherwise)."""
    if seed is not None:
        torch.manual_seed(seed)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    texts: list[list[str]] = [[] for _ in encoded]
    entropies: list[list[float]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": 1.0} if do_sample \
        else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding=True, padding_side="left",
                                  return_tensors="pt").to(device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                     return_dict_in_generate=True, output_logits=with_entropy, **sampling)
            new = out.sequences[:, batch["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            if with_entropy:
                logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # (B·K, T, V)
                token_entropy = -(logp.exp() * logp).sum(-1)
                is_eos = new == tokenizer.eos_token_id
                alive = (is_eos.cumsum(1) - is_eos.long()) == 0  # up to and including the first eos
                mean_entropy = ((token_entropy * alive).sum(1) / alive.sum(1).clamp(min=1)).tolist()
            for j, row in enumerate(rows):
                texts[row] = decoded[j * num_samples:(j + 1) * num_samples]
                if with_entropy:
                    entropies[row] = mean_entropy[j * num_samples:(j + 1) * num_samples]
    finally:
        model.train(was_training)
    return texts, entropies


def is_correct(parsed: ParsedOutput, label: int) -> bool:
    """A correct answer: well-formed (no parser error) and the gold label. The one notion of "correct" shared by
    pass@N pairs, the GRPO reward and the difficulty filter."""
    return parsed.ok and parsed.label == label


def generation_report(records: Sequence[RelevanceRecord], completions: Sequence[str],
                      variant: str = "label_first") -> dict[str, float | None]:
    """The §6 metrics of one decoded completion per record (see the module docstring)."""
    if len(records) != len(completions):
        raise ValueError(f"{len(records)} records but {len(completions)} completions.")
    parsed = [parse_output(text, variant) for text in completions]
    labels = np.array([r.label for r in records], dtype=np.int64)
    preds = np.array([p.label or 0 for p in parsed], dtype=np.int64)
    report = tier_report(labels, preds)
    report["format_failure_rate"] = float(np.mean([not p.ok for p in parsed])) if parsed else 0.0
    report["correct_rate"] = float(np.mean([is_correct(p, r.label) for p, r in zip(parsed, records)])) \
        if parsed else 0.0
    # The GRPO reward (1 correct / 0 wrong / −1 malformed, grpo.CorrectnessReward) averaged over the outputs.
    report["mean_reward"] = report["correct_rate"] - report["format_failure_rate"]
    if variant != "label_only":
        verdicts = [discriminative_hallucination(p) for p in parsed]
        judged = [v for v in verdicts if v is not None]
        report["hallucination_rate"] = float(np.mean(judged)) if judged else None
        report["hallucination_judged"] = len(judged)
        with_gold = [(p, r) for p, r in zip(parsed, records) if r.gold is not None]
        if with_gold:
            scores = [verify_steps(p, r) for p, r in with_gold]
            for step in STEPS:
                report[f"step_accuracy/{step}"] = float(np.mean([s[step] > 0 for s in scores]))
            adherent = [rule_adherence(p, r) for p, r in with_gold if p.ok]
            report["rule_adherence"] = float(np.mean(adherent)) if adherent else 0.0
    report.update(query_type_report(records, preds))
    return report


def query_type_report(records: Sequence[RelevanceRecord], preds: Any) -> dict[str, float]:
    """4-class macro-F1 per query type (`macro_f1/<type>`) and on the hard types (`macro_f1/hard`) (§6)."""
    labels = np.array([r.label for r in records], dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    types = np.array([r.query_type for r in records])
    report = {f"macro_f1/{t}": macro_f1(labels[types == t], preds[types == t], LABELS) for t in sorted(set(types))}
    hard = np.array([r.is_hard for r in records], dtype=bool)
    if hard.any():
        report["macro_f1/hard"] = macro_f1(labels[hard], preds[hard], LABELS)
    return report


def evaluate_policy(model: torch.nn.Module, tokenizer: Any, records: Sequence[RelevanceRecord],
                    rule_table: dict[str, str], variant: str, rule_text: bool, generate: bool = True,
                    max_new_tokens: int = 160, batch_size: int = 16) -> dict[str, Any]:
    """`first_token`: tier metrics of the argmax of the 4-way first-token distribution (not for think-first, whose
    first token is no label); `generation`: `generation_report` of greedy decoding (when `generate`)."""
    prompts = [chat_prompt(tokenizer, prompt_message(r, rule_table, variant, rule_text)) for r in records]
    labels = np.array([r.label for r in records], dtype=np.int64)
    report: dict[str, Any] = {}
    if variant != "think_first":
        probs = RelevanceScorer(model, tokenizer, batch_size=batch_size).score_prompts(prompts)
        report["first_token"] = {**tier_report(labels, argmax_tiers(probs)),
                                 **query_type_report(records, argmax_tiers(probs))}
        report["first_token"]["label_log_loss"] = float(-np.log(probs[np.arange(len(labels)), labels - 1]
                                                                + 1e-12).mean())
    if generate:
        texts = [c[0] for c in generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                    batch_size=batch_size)]
        report["generation"] = generation_report(records, texts, variant)
    return report


__all__ = ["generate_completions", "is_correct", "generation_report", "query_type_report", "evaluate_policy"]
