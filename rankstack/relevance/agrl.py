"""TaoSR-AGRL: the rule-aware shaped reward with its hard gates, and adaptive guided replay (relevance.md §5).

**Shaped reward** (`reward_components`, `shaped_reward`, `ShapedReward`), parsed against the gold steps:

    gate      = 1 if the output is well-formed (the strict parser finds no error: label first, all five sections,
                known verdict words, nothing truncated or trailing) else 0
    R_label   = 1 if ŷ = y;  0.3 if {ŷ, y} = {3, 4};  else 0
    R_cat     = 1[category verdict = gold]
    R_attr    = (# gold constraints whose stated verdict equals gold's) / (# gold constraints)   (1 if none)
    R_rule    = 1[cited rule = gold decisive rule]
    R_consist = 1[ŷ = f(own verdicts)]
    shaped    = 0.6 R_label + 0.1 R_cat + 0.1 R_attr + 0.1 R_rule + 0.1 R_consist
    R         = gate · (shaped if R_label > 0 else min(shaped, 0.2)) − 0.5 · (1 − gate)

The 0.2 cap is the second gate: no step credit while the label is wrong. Without gold steps (ESCI, WANDS) or for
label-only outputs, only the gate and R_label apply (weights renormalised: shaped = R_label). `gated=False` is the
GRPO-PR baseline: the same shaped terms, no gate and no cap.

**Adaptive guided replay** (`GuidedReplay`), on every scored batch after the rewards:
1. acc_q = share of the G rollouts with a correct label (`evaluate.is_correct`); replay the group if acc_q ≤ τ.
2. Hints, progressively: "Hint: the correct tier is k."; for groups where nothing usable came back, the tier
   plus "The deciding rule is R…: <the rule's text>." (`hint_text`), appended to the user turn.
3. m guided rollouts per group; keep those that are correct, pass the gate, and do not quote the hint (no "hint"
   in the text, no 8-token overlap with the hint's tokens; `quotes_hint`).
4. They replace the group's lowest-reward rollouts (`swap_rows`); rewards and group advantages are recomputed.
5. The swapped rows are scored under the **unguided** prompt (`rescore_rows`): their `ref_per_token_logps` (and
   `old_per_token_logps` when TRL stored them) are recomputed from the unguided prompt ids + the guided completion.
   With `num_iterations=1` TRL takes π_old as the detached current log-probs, so the ratio is 1 and the update on
   these off-policy tokens is a plain policy gradient (option A, LUFFY-style). Option B (the guided sampling
   log-probs as π_old with a ratio cap of 2) is not built.
6. A prompt stops being replayed once its unguided acc_q > τ: the test runs on the fresh rollouts of every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message
from rankstack.relevance.evaluate import generate_completions, is_correct
from rankstack.relevance.format import ParsedOutput, own_tier, parse_output

WEIGHTS = {"label": 0.6, "category": 0.1, "attributes": 0.1, "rule": 0.1, "consistency": 0.1}
WRONG_LABEL_CAP = 0.2
FORMAT_PENALTY = 0.5


# ------------------------------------------------------------------------------------------------------------
# Shaped reward


def label_credit(predicted: int | None, label: int) -> float:
    """R_label: 1 exact, 0.3 for the {3, 4} confusion, else 0."""
    if predicted == label:
        return 1.0
    return 0.3 if {predicted, label} == {3, 4} else 0.0


def reward_components(parsed: ParsedOutput, record: RelevanceRecord) -> dict[str, float]:
    """gate and the R components of one parsed output; only gate and label without gold steps or sections."""
    components = {"gate": float(parsed.ok), "label": label_credit(parsed.label, record.label)}
    gold = record.gold
    if gold is None or parsed.variant == "label_only":
        return components
    stated = {c.key: v for c, v in parsed.attr_verdicts or []}
    matched = sum(stated.get(c.key) == v for c, v in zip(gold.constraints, gold.attr_verdicts))
    components.update(
        category=float(parsed.category == gold.category),
        attributes=matched / len(gold.constraints) if gold.constraints else 1.0,
        rule=float(parsed.cited_rule == gold.decisive_rule),
        consistency=float(parsed.label is not None and own_tier(parsed) == parsed.label))
    return components


def shaped_reward(components: dict[str, float], gated: bool = True) -> float:
    """R from the components (weights renormalised over the components present); `gated=False`: GRPO-PR."""
    present = [k for k in WEIGHTS if k in components]
    shaped = sum(WEIGHTS[k] * components[k] for k in present) / sum(WEIGHTS[k] for k in present)
    if not gated:
        return shaped
    gate = components["gate"]
    capped = shaped if components["label"] > 0 else min(shaped, WRONG_LABEL_CAP)
    return gate * capped - FORMAT_PENALTY * (1.0 - gate)


class ShapedReward:
    """The AGRL reward as a TRL reward function: `f(prompts, completions, pool_index=[…], log_metric=…)`.

    `records[pool_index]` is each completion's pair. Logs the mean of each R component, the gate rate, the label
    accuracy and the rule adherence of the well-formed outputs (§6).
    """

    def __init__(self, records: Sequence[RelevanceRecord], variant: str = "label_first", gated: bool = True):
        self.records, self.variant, self.gated = list(records), variant, gated
        self.__name__ = "shaped" if gated else "shaped_ungated"

    def score(self, text: str, record: RelevanceRecord) -> float:
        return shaped_reward(reward_components(parse_output(text, self.variant), record), self.gated)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], pool_index: Sequence[int],
                 log_metric: Any = None, **_: Any) -> list[float]:
        records = [self.records[int(i)] for i in pool_index]
        parsed = [parse_output(text, self.variant) for text in completions]
        components = [reward_components(p, r) for p, r in zip(parsed, records)]
        if log_metric is not None:
            for key in WEIGHTS | {"gate": 0}:
                values = [c[key] for c in components if key in c]
                if values:
                    log_metric(f"shaped/{key}", float(np.mean(values)))
            log_metric("accuracy", float(np.mean([is_correct(p, r.label) for p, r in zip(parsed, records)])))
        return [shaped_reward(c, self.gated) for c in components]


# ------------------------------------------------------------------------------------------------------------
# Guided replay


@dataclass
class ReplayConfig:
    """Adaptive guided replay (§5).

    Args:
        enabled: Replay low-accuracy groups with hints.
        tau: Replay a group when its share of correct rollouts is ≤ tau (0.125 = 2 of 16).
        tau_mode: `fixed` uses `tau`; `half_batch_accuracy` (§5's option "τ = half the running batch accuracy")
            uses half the share of correct rollouts in the step's whole batch, read as the batch being run, so the
            threshold follows the policy as it improves and needs no state across steps or resumes.
        num_guided: m guided rollouts per replayed group and hint level.
        hint_levels: 1: the tier only; 2: the tier, then the tier + the deciding rule where that found nothing.
        leak_ngram: A kept rollout shares no run of this many tokens with the hint.
        old_logps: π_old of a swapped rollout (§5 step 5). `current` (option A, our default): TRL's detached
            current log-probs under the unguided prompt, so the ratio is 1 and the update a plain policy gradient
            on the off-policy tokens. `guided` (option B): the policy's log-probs of the completion under the guided
            prompt it was sampled with, the ratio capped at `ratio_cap` (TRL's two-sided clip `delta`).
        ratio_cap: option B's hard cap on the importance ratio π_θ / π_old.
    """

    enabled: bool = True
    tau: float = 0.125
    tau_mode: Literal["fixed", "half_batch_accuracy"] = "fixed"
    num_guided: int = 4
    hint_levels: int = 2
    leak_ngram: int = 8
    old_logps: Literal["current", "guided"] = "current"
    ratio_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.ratio_cap <= 1.0:
            raise ValueError(f"agrl.replay.ratio_cap is {self.ratio_cap}; a cap on the importance ratio must be above 1 "
                             "(option B uses 2).")


def hint_text(record: RelevanceRecord, level: int, rule_table: dict[str, str]) -> str:
    """Level 1: the tier; level 2: the tier and the deciding rule with its one-line text (from the rule table)."""
    hint = f"Hint: the correct tier is {record.label}."
    if level >= 2 and record.gold is not None:
        rule = record.gold.decisive_rule
        reason = rule_table.get(rule, "").strip().rstrip(".")
        hint += f" The deciding rule is {rule}" + (f": {reason}." if reason else ".")
    return hint


def guided_prompt(tokenizer: Any, record: RelevanceRecord, rule_table: dict[str, str], variant: str,
                  rule_text: bool, hint: str) -> str:
    """The unguided user turn with the hint appended, chat template applied."""
    return chat_prompt(tokenizer, f"{prompt_message(record, rule_table, variant, rule_text)}\n{hint}")


def quotes_hint(text: str, hint: str, tokenizer: Any, ngram: int = 8) -> bool:
    """The completion mentions a hint, or repeats a run of `ngram` of the hint's tokens."""
    if "hint" in text.lower():
        return True
    hint_ids = tokenizer.encode(hint, add_special_tokens=False)
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    grams = {tuple(hint_ids[i:i + ngram]) for i in range(len(hint_ids) - ngram + 1)}
    return any(tuple(text_ids[i:i + ngram]) in grams for i in range(len(text_ids) - ngram + 1))


def usable_guided(text: str, record: RelevanceRecord, hint: str, variant: str, tokenizer: Any,
                  ngram: int = 8) -> tuple[bool, bool]:
    """(keep, leaked) for an answer sampled under a hint: keep = correct, well-formed and not quoting the hint;
    leaked = otherwise fine but quotes it."""
    good = is_correct(parse_output(text, variant), record.label)
    leaked = good and quotes_hint(text, hint, tokenizer, ngram)
    return good and not leaked, leaked


def replay_groups(correct: Sequence[bool], group_size: int, tau: float) -> list[int]:
    """The groups (consecutive `group_size` rows) whose accuracy is at or below τ."""
    acc = np.asarray(correct, dtype=np.float64).reshape(-1, group_size).mean(axis=1)
    return [int(g) for g in np.flatnonzero(acc <= tau + 1e-12)]


def lowest_reward_rows(rewards: Sequence[float], group: int, group_size: int, count: int) -> list[int]:
    """The `count` rows of a group with the lowest rewards (ties: the earlier row first)."""
    values = np.asarray(rewards, dtype=np.float64)[group * group_size:(group + 1) * group_size]
    return [group * group_size + int(j) for j in np.argsort(values, kind="stable")[:count]]


#: The (B, T) per-token tensors of a TRL batch that follow the completion ids (log-probs), widened with them.
PER_TOKEN_LOGPS = ("ref_per_token_logps", "old_per_token_logps", "sampling_per_token_logps")


def swap_rows(output: dict[str, Any], rows: Sequence[int], completions: Sequence[Sequence[int]],
              pad_token_id: int) -> dict[str, Any]:
    """Put new completion ids (eos included) into `rows` of a TRL batch: `completion_ids` / `completion_mask`
    are widened if needed and the per-token log-probs (`PER_TOKEN_LOGPS`) are padded with zeros alongside. The
    swapped rows' log-probs are zeroed here; `rescore_rows` fills them under the unguided prompt."""
    ids, mask = output["completion_ids"], output["completion_mask"]
    width = max([ids.shape[1], *[len(c) for c in completions]])
    extra = width - ids.shape[1]
    per_token = [k for k in PER_TOKEN_LOGPS if k in output]
    if extra:
        output["completion_ids"] = ids = torch.nn.functional.pad(ids, (0, extra), value=pad_token_id)
        output["completion_mask"] = mask = torch.nn.functional.pad(mask, (0, extra), value=0)
        for key in per_token:
            output[key] = torch.nn.functional.pad(output[key], (0, extra), value=0.0)
    for row, completion in zip(rows, completions):
        ids[row] = pad_token_id
        mask[row] = 0
        ids[row, :len(completion)] = torch.as_tensor(list(completion), device=ids.device)
        mask[row, :len(completion)] = 1
        for key in per_token:
            output[key][row] = 0.0
    return output


LogpsFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def rescore_rows(output: dict[str, Any], rows: Sequence[int], logps: LogpsFn,
                 models: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Recompute `output[key]` ((B, T) per-token log-probs) of `rows` with `models[key]` under the rows' own
    (unguided) `prompt_ids` + their completion: `logps(model, input_ids, attention_mask, logits_to_keep)`."""
    if not rows:
        return output
    index = torch.as_tensor(list(rows), device=output["prompt_ids"].device)
    input_ids = torch.cat([output["prompt_ids"][index], output["completion_ids"][index]], dim=1)
    attention = torch.cat([output["prompt_mask"][index], output["completion_mask"][index]], dim=1)
    width = output["completion_ids"].shape[1]
    for key, model in models.items():
        if key in output:
            with torch.no_grad():
                output[key][index] = logps(model, input_ids, attention, width).to(output[key].dtype)
    return output


def guided_old_logps(output: dict[str, Any], rows: Sequence[int], guided_prompt_ids: Sequence[Sequence[int]],
                     logps: LogpsFn, model: torch.nn.Module) -> dict[str, Any]:
    """Option B (§5 step 5): `output["old_per_token_logps"]` of the swapped `rows` becomes `model`'s log-probs of
    their completions under the guided prompts they were sampled with; every other row keeps (or, when TRL stored
    none, gets) the current policy's log-probs under its own prompt, the π_old TRL would use."""
    width = output["completion_ids"].shape[1]
    if "old_per_token_logps" not in output:
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad():
            output["old_per_token_logps"] = logps(model, input_ids, attention, width).float()
    for row, prompt in zip(rows, guided_prompt_ids):
        prompt_ids = torch.as_tensor(list(prompt), dtype=output["completion_ids"].dtype,
                                     device=output["completion_ids"].device)
        input_ids = torch.cat([prompt_ids, output["completion_ids"][row]]).unsqueeze(0)
        attention = torch.cat([torch.ones_like(prompt_ids), output["completion_mask"][row].to(prompt_ids.dtype)])
        with torch.no_grad():
            output["old_per_token_logps"][row] = logps(model, input_ids, attention.unsqueeze(0), width)[0].to(
                output["old_per_token_logps"].dtype)
    return output


@dataclass
class ReplayResult:
    """What one replay pass did: rows swapped, their new texts and rewards, and its counts for logging."""

    rows: list[int]
    texts: list[str]
    rewards: list[float]
    groups: int
    replayed: int
    succeeded: int
    leaks: int
    guided: int
    labelled_right: int = 0  # guided answers whose label is the gold one, well-formed or not
    malformed: int = 0  # guided answers the parser rejects
    tau: float = 0.0  # the threshold this pass used
    prompts: list[str] = field(default_factory=list)  # the guided prompt each swapped row was sampled under


class GuidedReplay:
    """Progressive-hint replay for low-accuracy groups (see the module docstring). `score(text, record)` is the
    stage's reward; `generate` samples with the stage's rollout settings."""

    def __init__(self, config: ReplayConfig, rule_table: dict[str, str], variant: str, rule_text: bool,
                 tokenizer: Any, score: Callable[[str, RelevanceRecord], float], temperature: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 160, batch_size: int = 8):
        self.config, self.rule_table, self.variant, self.rule_text = config, rule_table, variant, rule_text
        self.tokenizer, self.score = tokenizer, score
        self.sampling = {"temperature": temperature, "top_k": top_k, "max_new_tokens": max_new_tokens,
                         "batch_size": batch_size}

    def usable(self, text: str, record: RelevanceRecord, hint: str) -> tuple[bool, bool]:
        """(keep, leaked): `usable_guided` with this replay's variant, tokenizer and leak n-gram."""
        return usable_guided(text, record, hint, self.variant, self.tokenizer, self.config.leak_ngram)

    def run(self, model: torch.nn.Module, records: Sequence[RelevanceRecord], texts: Sequence[str],
            rewards: Sequence[float], group_size: int) -> ReplayResult:
        """Find the groups to replay, sample guided rollouts level by level, and choose the rows to swap."""
        correct = [is_correct(parse_output(t, self.variant), r.label) for t, r in zip(texts, records)]
        tau = self.threshold(correct)
        groups = replay_groups(correct, group_size, tau)
        kept: dict[int, list[tuple[str, str]]] = {g: [] for g in groups}  # (guided completion, its prompt)
        leaks = guided = labelled_right = malformed = 0
        pending = list(groups)
        for level in range(1, self.config.hint_levels + 1):
            if not pending:
                break
            heads = [records[g * group_size] for g in pending]
            hints = [hint_text(r, level, self.rule_table) for r in heads]
            prompts = [guided_prompt(self.tokenizer, r, self.rule_table, self.variant, self.rule_text, h)
                       for r, h in zip(heads, hints)]
            samples = generate_completions(model, self.tokenizer, prompts, self.config.num_guided, do_sample=True,
                                           **self.sampling)
            guided += sum(len(s) for s in samples)
            for g, record, hint, prompt, group_samples in zip(pending, heads, hints, prompts, samples):
                for text in group_samples:
                    parsed = parse_output(text, self.variant)
                    labelled_right += parsed.label == record.label
                    malformed += not parsed.ok
                    keep, leaked = self.usable(text, record, hint)
                    leaks += leaked
                    if keep and len(kept[g]) < self.config.num_guided:
                        kept[g].append((text, prompt))
            pending = [g for g in pending if not kept[g]]
        rows, new_texts, new_rewards, new_prompts = [], [], [], []
        for g in groups:
            targets = lowest_reward_rows(rewards, g, group_size, len(kept[g]))
            for row, (text, prompt) in zip(targets, kept[g]):
                rows.append(row)
                new_texts.append(text)
                new_rewards.append(self.score(text, records[row]))
                new_prompts.append(prompt)
        return ReplayResult(rows, new_texts, new_rewards, groups=len(correct) // group_size, replayed=len(groups),
                            succeeded=sum(bool(kept[g]) for g in groups), leaks=leaks, guided=guided,
                            labelled_right=labelled_right, malformed=malformed, tau=tau, prompts=new_prompts)

    def threshold(self, correct: Sequence[bool]) -> float:
        """τ of this step: `tau`, or half the batch's share of correct rollouts (`tau_mode`)."""
        if self.config.tau_mode == "half_batch_accuracy":
            return 0.5 * float(np.mean(correct)) if len(correct) else 0.0
        return self.config.tau

    def completion_ids(self, text: str) -> list[int]:
        """The token ids of a kept guided completion as the policy is scored on it: its text, then eos."""
        return [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]


__all__ = ["WEIGHTS", "WRONG_LABEL_CAP", "FORMAT_PENALTY", "label_credit", "reward_components", "shaped_reward",
           "ShapedReward", "ReplayConfig", "hint_text", "guided_prompt", "quotes_hint", "usable_guided",
           "replay_groups", "lowest_reward_rows", "PER_TOKEN_LOGPS", "swap_rows", "rescore_rows", "guided_old_logps",
           "ReplayResult", "GuidedReplay"]
