"""TaoSR-SHE: stepwise rewards and per-token advantages (SRPO), diversified data filtering and the multi-stage
difficulty curriculum (relevance.md §4).

**Hybrid step rewards** (`hybrid_step_rewards`). Each step s ∈ {label, Query, Item, Category, Attributes,
Verdict} of a rollout gets r_{i,s} ∈ {+1, −1, 0}. The offline verifier (`rules.verify_steps`, the world's gold
step verdicts) wins wherever it applies: to mimic partial human annotation its section labels are visible on a
seeded ρ = 50 % of the RL pairs (`verifier_visible`); the label step is always visible. On the other pairs the
generative step RM (`steps.StepJudge`) judges each section present (+1 / −1 / 0 unsure); a missing section scores
−1. Pairs without gold steps (ESCI, WANDS) have the label step only.

**Advantages** (`step_advantages`, `token_advantages`). With A^out_i the group z-score of the outcome reward,

    A^step_{i,s} = (r_{i,s} − mean_j r_{j,s}) / (std_j r_{j,s} + 1e-4)
    Â_{i,t} = clamp(A^out_i + λ · c_{i,s(t)} · A^step_{i,s(t)}, −2, 2),   λ = 0.5

Tokens outside every step get clamp(A^out_i). **Critical weights** (`critical_weights`): c = 1 on the first wrong
step of a wrong rollout and on a correct step of a correct rollout that another rollout of the group got wrong;
0.5 on the other judged steps; 0 where the RM is unsure. *Our reading of "first wrong step"*: in the label-first
order the label always precedes the rationale and is wrong in every wrong rollout, so taken literally the stress
would always land on the label. We take the first wrong *rationale* section (Query → Verdict order) and fall back
to the label when every section is right (reasoning that is right with a wrong label: a hallucination).

**Diversified filtering** (`diversity_stats`, `diversified_mask`): K = 8 rollouts per candidate prompt; keep it if
0 < pass < 1 and at least one of: ≥ 2 distinct labels; ≥ 2 distinct (category, attribute verdicts) patterns; mean
token entropy ≥ the pool's 30th percentile. `rebalance_cells` then equalises query type × label cells. When the
policy entropy TRL logs falls below 50 % of its first value, the pool is re-filtered with the current policy.

**Curriculum** (`CurriculumStage`, `curriculum_indices`): by the pass rate p of the current policy, re-estimated at
each boundary: stage 1 p ∈ [0.6, 0.9] with step rewards off (λ = 0), 25 % of the rollout budget; stage 2
p ∈ [0.3, 0.9], step rewards on, 25 %; stage 3 p ∈ [0.01, 0.5], hard types only, step rewards on, 50 %. Each stage
continues from the previous one's weights. The driver is `rl.train_rl`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rankstack.relevance.data import RelevanceRecord
from rankstack.relevance.evaluate import generate_batched
from rankstack.relevance.format import SECTIONS, STEPS, ParsedOutput
from rankstack.relevance.rules import verify_steps

LABEL_STEP = STEPS.index("label")


# ------------------------------------------------------------------------------------------------------------
# Hybrid step rewards


def verifier_visible(pair_id: str, share: float, seed: int = 0) -> bool:
    """Whether the verifier's section labels of this pair are visible (a seeded, stable ρ-share of the pairs)."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def hybrid_step_rewards(parsed: ParsedOutput, record: RelevanceRecord, visible: bool,
                        judged: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """r_{s} for s in `STEPS` (+1 / −1 / 0) and where each came from (`v` verifier, `m` model judge, `-` none).

    `judged` maps the sections the step RM judged to its +1 / −1 / 0; it is read only where the verifier's labels
    are not `visible`. A section absent from the output scores −1 (there is nothing right in it).
    """
    verdicts = verify_steps(parsed, record)
    rewards = np.zeros(len(STEPS), dtype=np.int64)
    source = np.full(len(STEPS), "-", dtype="<U1")
    rewards[LABEL_STEP], source[LABEL_STEP] = verdicts["label"], "v"
    if record.gold is None:
        return rewards, source
    for step in SECTIONS:
        s = STEPS.index(step)
        if visible or step not in parsed.spans:
            rewards[s], source[s] = verdicts[step], "v"
        elif judged is not None and step in judged:
            rewards[s], source[s] = judged[step], "m"
    return rewards, source


# ------------------------------------------------------------------------------------------------------------
# Critical weights and advantages


def critical_weights(step_rewards: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """c_{i,s} for one group: step_rewards (G, S) in {+1, −1, 0}, correct (G,) outcome booleans (see the module
    docstring for the rule and our reading of "first wrong step")."""
    rewards = np.asarray(step_rewards)
    correct = np.asarray(correct, dtype=bool)
    weights = np.where(rewards != 0, 0.5, 0.0)
    wrong_somewhere = (rewards < 0).sum(axis=0)
    sections = [STEPS.index(s) for s in SECTIONS]
    for i in range(len(rewards)):
        if correct[i]:
            others_wrong = wrong_somewhere - (rewards[i] < 0)
            weights[i, (rewards[i] > 0) & (others_wrong > 0)] = 1.0
        else:
            first = next((s for s in sections if rewards[i, s] < 0), None)
            if first is None and rewards[i, LABEL_STEP] < 0:
                first = LABEL_STEP
            if first is not None:
                weights[i, first] = 1.0
    return weights


def step_advantages(step_rewards: np.ndarray) -> np.ndarray:
    """A^step_{i,s} = (r_{i,s} − mean_j r_{j,s}) / (std_j r_{j,s} + 1e-4) within one group (G, S); the unbiased std,
    as TRL's outcome z-score."""
    rewards = np.asarray(step_rewards, dtype=np.float64)
    std = rewards.std(axis=0, ddof=1) if len(rewards) > 1 else np.zeros(rewards.shape[1])
    return (rewards - rewards.mean(axis=0)) / (std + 1e-4)


def outcome_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A^out_i: the group z-score of the outcome reward (§3.3; unbiased std + 1e-4, as TRL's "group" scaling)."""
    grouped = rewards.view(-1, group_size)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    return ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + 1e-4)).view(-1)


def token_advantages(outcome: torch.Tensor, step_terms: torch.Tensor, token_steps: torch.Tensor, lam: float,
                     clip: float = 2.0) -> torch.Tensor:
    """Â_{i,t} = clamp(A^out_i + λ · (c · A^step)_{i,s(t)}, −clip, clip), shape (B, T).

    outcome (B,); step_terms (B, S) = c_{i,s} · A^step_{i,s}; token_steps (B, T) the step index of each token, −1
    outside every step (those tokens get clamp(A^out_i)).
    """
    inside = token_steps >= 0
    gathered = torch.gather(step_terms, 1, token_steps.clamp(min=0)) * inside
    return (outcome.unsqueeze(1) + lam * gathered).clamp(-clip, clip)


# ------------------------------------------------------------------------------------------------------------
# Diversified data filtering


@dataclass
class DiversityConfig:
    """Diversified data filtering (§4).

    Args:
        enabled: Filter the pool by mixed outcomes and diverse rollouts (False: the GRPO difficulty filter).
        samples: K rollouts per candidate prompt.
        entropy_quantile: A prompt whose rollouts' mean token entropy reaches this quantile of the pool's passes.
        rebalance: Down-sample to equal query type × label cells afterwards.
        collapse_ratio: Re-filter with the current policy when its entropy falls below this share of the start.
        min_steps_between_refilters: At most one entropy-triggered re-filter per this many steps.
    """

    enabled: bool = True
    samples: int = 8
    entropy_quantile: float = 0.3
    rebalance: bool = True
    collapse_ratio: float = 0.5
    min_steps_between_refilters: int = 10


@dataclass(frozen=True)
class PromptDiversity:
    """What K rollouts of one prompt show: pass count, distinct labels, distinct verdict patterns, entropy."""

    passes: int
    samples: int
    distinct_labels: int
    distinct_patterns: int
    mean_entropy: float


def verdict_pattern(parsed: ParsedOutput) -> tuple[Any, ...]:
    """The (category, attribute verdicts) pattern of an output; None parts where it cannot be read."""
    attrs = None if parsed.attr_verdicts is None else tuple(sorted((c.key, v) for c, v in parsed.attr_verdicts))
    return parsed.category, attrs


def diversity_stats(parsed: Sequence[ParsedOutput], correct: Sequence[bool],
                    entropies: Sequence[float]) -> PromptDiversity:
    """The diversity of one prompt's K rollouts (parsed outputs, their correctness, their mean token entropy)."""
    return PromptDiversity(passes=int(sum(correct)), samples=len(parsed),
                           distinct_labels=len({p.label for p in parsed if p.label is not None}),
                           distinct_patterns=len({verdict_pattern(p) for p in parsed}),
                           mean_entropy=float(np.mean(entropies)) if len(entropies) else 0.0)


def diversified_mask(stats: Sequence[PromptDiversity], entropy_quantile: float = 0.3) -> np.ndarray:
    """Keep a prompt if 0 < pass < K and (≥ 2 labels or ≥ 2 verdict patterns or entropy ≥ the pool's quantile)."""
    if not stats:
        return np.zeros(0, dtype=bool)
    entropy = np.array([s.mean_entropy for s in stats])
    threshold = np.quantile(entropy, entropy_quantile)
    mixed = np.array([0 < s.passes < s.samples for s in stats])
    diverse = np.array([s.distinct_labels >= 2 or s.distinct_patterns >= 2 for s in stats]) | (entropy >= threshold)
    return mixed & diverse


def rebalance_cells(records: Sequence[RelevanceRecord], indices: Sequence[int], seed: int = 0) -> list[int]:
    """Down-sample `indices` so each (query type, label) cell present holds as many prompts as the smallest."""
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i in indices:
        cells[(records[i].query_type, records[i].label)].append(int(i))
    if not cells:
        return []
    smallest = min(len(v) for v in cells.values())
    rng = np.random.default_rng(seed)
    keep = [j for key in sorted(cells) for j in rng.choice(cells[key], size=smallest, replace=False).tolist()]
    return sorted(keep)


def sample_with_entropy(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], num_samples: int,
                        temperature: float = 1.0, top_k: int = 0, max_new_tokens: int = 160, batch_size: int = 8,
                        seed: int | None = None) -> tuple[list[list[str]], list[list[float]]]:
    """K sampled completions per prompt and each one's mean token entropy of the policy (raw logits, up to eos)."""
    return generate_batched(model, tokenizer, prompts, num_samples, True, temperature, top_k, max_new_tokens,
                            batch_size, seed, with_entropy=True)


# ------------------------------------------------------------------------------------------------------------
# Curriculum


@dataclass
class CurriculumStage:
    """One curriculum stage: prompts with pass rate p in [pass_low, pass_high], its share of the rollout budget,
    whether step rewards are on, and whether it keeps the hard query types only."""

    name: str
    pass_low: float
    pass_high: float
    budget_share: float
    step_reward: bool = True
    hard_only: bool = False


def default_curriculum() -> list[CurriculumStage]:
    """The three stages of §4."""
    return [CurriculumStage("easy", 0.6, 0.9, 0.25, step_reward=False),
            CurriculumStage("medium", 0.3, 0.9, 0.25),
            CurriculumStage("hard", 0.01, 0.5, 0.5, hard_only=True)]


@dataclass
class CurriculumConfig:
    """The multi-stage difficulty curriculum (§4). `samples`: K rollouts per prompt to estimate p at each boundary."""

    enabled: bool = False
    samples: int = 8
    stages: list[CurriculumStage] = field(default_factory=default_curriculum)


def curriculum_indices(records: Sequence[RelevanceRecord], pass_rates: Sequence[float],
                       stage: CurriculumStage) -> list[int]:
    """The pool indices a stage trains on: p within [pass_low, pass_high] (and hard types when `hard_only`)."""
    return [i for i, (r, p) in enumerate(zip(records, pass_rates))
            if stage.pass_low <= p <= stage.pass_high and (r.is_hard or not stage.hard_only)]


def stage_steps(total_steps: int, stages: Sequence[CurriculumStage]) -> list[int]:
    """Optimizer steps per stage: each its budget share of `total_steps` (at least 1), the rounding on the last."""
    shares = np.array([s.budget_share for s in stages], dtype=np.float64)
    shares = shares / shares.sum()
    steps = [max(1, int(round(total_steps * s))) for s in shares[:-1]]
    return [*steps, max(1, total_steps - sum(steps))]


__all__ = ["LABEL_STEP", "verifier_visible", "hybrid_step_rewards", "critical_weights", "step_advantages",
           "outcome_advantages", "token_advantages", "DiversityConfig", "PromptDiversity", "verdict_pattern",
           "diversity_stats", "diversified_mask", "rebalance_cells", "sample_with_entropy", "CurriculumStage",
           "default_curriculum", "CurriculumConfig", "curriculum_indices", "stage_steps"]
