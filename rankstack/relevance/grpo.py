"""TaoSR1 stage 3: GRPO with difficulty-based dynamic sampling over a class-balanced pool (relevance.md §3.3, §7).

For G rollouts o_i of a prompt, TRL's `GRPOTrainer` (loss_type "grpo") optimises

    J = E[(1/G) Σ_i (1/|o_i|) Σ_t min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1−ε, 1+ε) Â_i)] − β_KL · KL(π_θ ‖ π_ref)

with Â_i the group z-score of the reward (std + 1e-4). What is ours:

- **Reward** (`CorrectnessReward`): 1 for a well-formed answer with the gold label, 0 for a well-formed wrong one,
  −1 for an output the strict parser rejects (the format penalty).
- **Advantage clamp** ±2 (`RankGRPOTrainer.compute_advantages`). The method is the hook later RL stages override:
  it receives the scored batch and may return per-token advantages of shape (B, T) instead of (B,), which TRL's
  loss accepts (SRPO, relevance.md §4); `last_rewards` holds the batch's rewards per function for it.
- **Class-balanced pool** (`balance_classes`): each query type's pairs are down-sampled to the same count per tier
  (the type's smallest class), so the pool's class counts have CV = 0; a type that lacks a tier is left out.
  `pool.cv` > 0 (§3.3's ablation, CV ∈ {0, 0.5, natural}) keeps, per type and tier, m·r^α·min(1, r_max^(1−α))
  pairs (m the type's smallest class, r = n/m the tier's natural count over it): α = 0 gives equal counts, α = 1
  the natural mix, α > 1 a mix more skewed than the natural one (the type's largest tier kept whole, the others
  thinned). One α for the pool, found by bisection so that the pool's CV is the target.
- **Difficulty filter** (`difficulty_mask`, `estimate_pass_counts`): before training, and every `refresh_steps`
  steps with the current policy, K samples per pool prompt estimate its pass count c; a prompt is kept when
  0 < c < γ·K (γ = 1: drop only all-correct and all-wrong prompts, TaoSR1's choice). `DifficultySampler` draws
  the step batches from the kept prompts and picks up a refresh from its next batch on. In-batch groups with zero
  reward variance get zero advantage anyway (TRL logs `frac_reward_zero_std`).
- **KL to the reference**: with β_KL > 0 TRL builds the reference from the policy's folder, so the policy is loaded
  from the init checkpoint folder (never built from a config, §7).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from torch.utils.data import Sampler  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rankstack.config import dump_yaml  # noqa: E402
from rankstack.errors import ConfigError, DataError  # noqa: E402
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message  # noqa: E402
from rankstack.relevance.evaluate import generate_completions, is_correct  # noqa: E402
from rankstack.relevance.format import LABELS, parse_output  # noqa: E402
from rankstack.relevance.sft import max_parameter_change, parameter_snapshot, throughput  # noqa: E402
from rankstack.relevance.stage import (  # noqa: E402
    StageDataConfig,
    StageEvalConfig,
    StageInputs,
    agree_across_processes,
    evaluate_stage,
    load_stage_inputs,
    save_stage,
)
from rankstack.train.rng import seed_everything  # noqa: E402

# ------------------------------------------------------------------------------------------------------------
# Reward


class CorrectnessReward:
    """R = 1 (well-formed, gold label), 0 (well-formed, wrong label), −1 (the strict parser rejects it).

    Called by TRL as `f(prompts, completions, completion_ids, label=[…], query_type=[…], log_metric=…, …)`; logs
    the label accuracy, the format-failure rate and the accuracy per gold class and per query type.
    """

    __name__ = "correctness"

    def __init__(self, variant: str = "label_first"):
        self.variant = variant

    def score(self, completion: str, label: int) -> float:
        parsed = parse_output(completion, self.variant)
        if not parsed.ok:
            return -1.0
        return 1.0 if is_correct(parsed, label) else 0.0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], label: Sequence[int],
                 query_type: Sequence[str] | None = None, log_metric: Any = None, **_: Any) -> list[float]:
        rewards = [self.score(text, int(y)) for text, y in zip(completions, label)]
        if log_metric is not None:
            correct = np.array([r == 1.0 for r in rewards])
            log_metric("accuracy", float(correct.mean()))
            log_metric("format_failure", float(np.mean([r == -1.0 for r in rewards])))
            labels = np.asarray(label)
            for k in LABELS:
                if (labels == k).any():
                    log_metric(f"accuracy/class_{k}", float(correct[labels == k].mean()))
            if query_type is not None:
                types = np.asarray(query_type)
                for name in sorted(set(types)):
                    log_metric(f"accuracy/{name}", float(correct[types == name].mean()))
        return rewards


# ------------------------------------------------------------------------------------------------------------
# Prompt pool: class balance and difficulty


def class_counts(records: Sequence[RelevanceRecord]) -> dict[int, int]:
    """Pairs per tier 1..4."""
    counts = {k: 0 for k in LABELS}
    for r in records:
        counts[r.label] += 1
    return counts


def counts_cv(counts: Sequence[float]) -> float:
    """The coefficient of variation std/mean of class counts (0 for an empty pool)."""
    values = np.asarray(counts, dtype=np.float64)
    return float(values.std() / values.mean()) if values.mean() > 0 else 0.0


def class_cv(records: Sequence[RelevanceRecord]) -> float:
    """The coefficient of variation std/mean of the four class counts (§3.3: lower was better)."""
    return counts_cv(list(class_counts(records).values()))


def balance_classes(records: Sequence[RelevanceRecord], seed: int = 0, cv: float = 0.0) -> list[RelevanceRecord]:
    """Down-sample each query type's pairs to the same count per tier (that type's smallest class); types missing
    a tier are left out. The result has equal class counts (CV = 0) and keeps file order. With `cv` > 0 the counts
    follow the module docstring's family, its α chosen so that the pool's CV is `cv`."""
    by_type: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(records):
        by_type[r.query_type][r.label].append(i)
    classes = [by_type[t] for t in sorted(by_type) if all(by_type[t][k] for k in LABELS)]
    smallest = [min(len(c[k]) for k in LABELS) for c in classes]
    ratios = [{k: len(c[k]) / m for k in LABELS} for c, m in zip(classes, smallest)]

    def sizes(alpha: float) -> list[dict[int, int]]:
        out = []
        for c, m, ratio in zip(classes, smallest, ratios):
            thin = min(1.0, max(ratio.values()) ** (1 - alpha))
            out.append({k: max(1, min(len(c[k]), round(m * ratio[k] ** alpha * thin))) for k in LABELS})
        return out

    def pool_cv(alpha: float) -> float:
        return counts_cv([sum(size[k] for size in sizes(alpha)) for k in LABELS])

    alpha, most = 0.0, 16.0
    if cv > 0:
        if pool_cv(most) < cv:
            raise ConfigError(f"pool.cv is {cv}, more than down-sampling this data can reach ({pool_cv(most):.3f}); "
                              "use a smaller pool.cv.")
        low, high = 0.0, most
        for _ in range(50):  # the pool's CV grows with α
            alpha = (low + high) / 2
            low, high = (alpha, high) if pool_cv(alpha) < cv else (low, alpha)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c, size in zip(classes, sizes(alpha)):
        for k in LABELS:
            keep += rng.choice(c[k], size=size[k], replace=False).tolist()
    return [records[i] for i in sorted(keep)]


def difficulty_mask(pass_counts: Sequence[int], num_samples: int, gamma_ratio: float = 1.0) -> np.ndarray:
    """Keep a prompt when 0 < c < γ·K, with c its pass count out of K = `num_samples` samples."""
    if not 0.0 < gamma_ratio <= 1.0:
        raise ConfigError(f"pool.gamma_ratio must be in (0, 1], got {gamma_ratio} (γ/G of relevance.md §3.3).")
    counts = np.asarray(pass_counts)
    return (counts > 0) & (counts < gamma_ratio * num_samples)


def estimate_pass_counts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], labels: Sequence[int],
                         variant: str, num_samples: int = 8, temperature: float = 1.0, top_k: int = 0,
                         max_new_tokens: int = 160, batch_size: int = 8, seed: int = 0) -> np.ndarray:
    """How many of `num_samples` sampled answers per prompt are correct (`evaluate.is_correct`)."""
    samples = generate_completions(model, tokenizer, prompts, num_samples, do_sample=True, temperature=temperature,
                                   top_k=top_k, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    return np.array([sum(is_correct(parse_output(t, variant), int(y)) for t in texts)
                     for texts, y in zip(samples, labels)], dtype=np.int64)


class DifficultySampler(Sampler[int]):
    """TRL's `RepeatSampler` order over the *active* prompts of a pool, which a refresh may change mid-epoch.

    Each batch of `batch_size` distinct prompts is drawn from a seeded permutation of the active prompts; every
    prompt index is repeated `mini_repeat_count` (= G) times in a row, and each batch `repeat_count` times. After
    `set_active`, prompts no longer active are skipped and newly active ones join the rest of the epoch.
    """

    def __init__(self, pool_size: int, mini_repeat_count: int, batch_size: int, repeat_count: int = 1,
                 seed: int = 0, active: Sequence[int] | None = None):
        self.pool_size, self.mini_repeat_count = pool_size, mini_repeat_count
        self.batch_size, self.repeat_count, self.seed = batch_size, repeat_count, seed
        self.epoch = 0
        self.set_active(range(pool_size) if active is None else active)

    def set_active(self, indices: Sequence[int] | np.ndarray) -> None:
        active = sorted(int(i) for i in indices)
        if len(active) < self.batch_size:
            raise DataError(f"the GRPO prompt pool keeps {len(active)} prompts after difficulty filtering, fewer than "
                            f"the {self.batch_size} prompts of one step; use more train pairs "
                            "(data.max_train_examples), a larger pool.gamma_ratio, or fewer rollout.prompts_per_step.")
        self.active = active

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        current = self.active
        order = [current[i] for i in torch.randperm(len(current), generator=generator).tolist()]
        seen: set[int] = set()
        while True:
            if self.active is not current:  # a refresh: drop prompts no longer kept, add the new ones
                current, kept = self.active, set(self.active)
                new = [i for i in current if i not in seen and i not in order]
                order = [i for i in order if i in kept] + [new[j] for j in torch.randperm(len(new),
                                                                                          generator=generator)]
            if len(order) < self.batch_size:
                return
            batch, order = order[:self.batch_size], order[self.batch_size:]
            seen.update(batch)
            for _ in range(self.repeat_count):
                for index in batch:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (len(self.active) // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


# ------------------------------------------------------------------------------------------------------------
# Trainer


class RankGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with the advantage clamp, a difficulty-filtered prompt sampler and two hooks for later
    RL stages (relevance.md §4, §5):

    - `compute_advantages(output, inputs)`: called on every scored batch; returns the advantages TRL's loss uses,
      (B,) per completion or (B, T) per completion token. The default clamps the group z-scores to ±clip.
    - `last_rewards`: the rewards per reward function of the batch just scored, (B_all, F) over all processes.
    - `pool`: the prompt pool; each input row's `pool_index` is its record's index in `pool.records` (gold steps
      for step rewards and hints).
    """

    def __init__(self, *args: Any, advantage_clip: float = 2.0, sampler: DifficultySampler | None = None,
                 pool: PromptPool | None = None, **kwargs: Any):
        self.advantage_clip = advantage_clip
        self.difficulty_sampler = sampler
        self.pool = pool
        self.last_rewards: torch.Tensor | None = None
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset: Any = None) -> Sampler:
        if self.difficulty_sampler is None:
            return super()._get_train_sampler(dataset)
        # TRL's RepeatSampler geometry: one generation batch (all processes, all micro-steps) of distinct prompts,
        # repeated once per micro-step that consumes it.
        sampler = self.difficulty_sampler
        sampler.batch_size = self.args.generation_batch_size // self.num_generations
        sampler.repeat_count = self.num_iterations * self.args.steps_per_generation
        sampler.set_active(sampler.active)  # re-check the pool still fills one generation batch
        return sampler

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.last_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        output["advantages"] = self.compute_advantages(output, inputs)
        return output

    def compute_advantages(self, output: dict[str, Any], inputs: list[dict[str, Any]]) -> torch.Tensor:
        """The advantages of this process's completions; here the group z-scores clamped to ±`advantage_clip`."""
        return output["advantages"].clamp(-self.advantage_clip, self.advantage_clip)


class DifficultyRefresh(TrainerCallback):
    """Every `every` steps, re-estimate each pool prompt's pass count with the current policy and re-filter."""

    def __init__(self, pool: PromptPool, sampler: DifficultySampler, every: int):
        self.pool, self.sampler, self.every = pool, sampler, every
        self.history: list[dict[str, Any]] = []
        self.trainer: RankGRPOTrainer | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        last = state.global_step >= state.max_steps  # nothing left to sample for
        if self.every <= 0 or state.global_step % self.every or self.trainer is None or last:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        keep = agree_across_processes(self.pool.refresh(model, seed=args.seed + state.global_step))
        if len(keep) >= self.sampler.batch_size:
            self.sampler.set_active(keep)
        self.history.append({"step": state.global_step, "kept": int(len(keep)), "pool": len(self.pool.records),
                             "applied": len(keep) >= self.sampler.batch_size})


class PeriodicEval(TrainerCallback):
    """Every `every` steps, evaluate the policy on the eval pairs (dev macro-F1, hallucination rate, …)."""

    def __init__(self, inputs: StageInputs, config: StageEvalConfig, every: int):
        self.inputs, self.config, self.every = inputs, config, every
        self.history: list[dict[str, Any]] = []
        self.trainer: RankGRPOTrainer | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every <= 0 or state.global_step % self.every or self.trainer is None:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.history.append({"step": state.global_step, **evaluate_stage(model, self.inputs, self.config)})


# ------------------------------------------------------------------------------------------------------------
# Stage


@dataclass
class PoolConfig:
    """The RL prompt pool (§3.3).

    Args:
        balance: Down-sample to equal class counts within each query type (CV = 0); False keeps the natural mix.
        cv: With `balance`, the pool's target CV of the class counts (0: equal counts; §3.3's ablation: 0.5).
        difficulty_samples: K samples per pool prompt to estimate its pass rate.
        gamma_ratio: γ/K: keep prompts with 0 < pass count < γ (1.0 drops only all-correct and all-wrong).
        refresh_steps: Re-estimate and re-filter every this many steps with the current policy (0: only before).
        filter: Apply the difficulty filter at all (False trains on the whole pool).
    """

    balance: bool = True
    cv: float = 0.0
    filter: bool = True
    difficulty_samples: int = 8
    gamma_ratio: float = 1.0
    refresh_steps: int = 100

    def __post_init__(self) -> None:
        if self.cv < 0:
            raise ConfigError(f"pool.cv is {self.cv}; use 0 (equal class counts) or a positive target CV.")


def pool_records(records: Sequence[RelevanceRecord], pool: PoolConfig,
                 seed: int) -> tuple[list[RelevanceRecord], dict[str, Any]]:
    """The RL prompt pool of `records` under `pool` (balanced to `pool.cv`, or the natural mix) and its class
    statistics for `metrics.json`."""
    natural = class_counts(records)
    kept = balance_classes(records, seed, pool.cv) if pool.balance else list(records)
    return kept, {"natural_class_counts": natural, "pool_class_counts": class_counts(kept),
                  "pool_cv": class_cv(kept), "pool_size": len(kept)}


@dataclass
class RolloutConfig:
    """Rollouts (§3.3: DyKnow's G = 16, T = 0.99, top-k 100; CPU profile G = 8, 8 prompts, 160 tokens)."""

    num_generations: int = 8
    prompts_per_step: int = 8
    temperature: float = 0.99
    top_k: int = 100
    max_completion_length: int = 160
    generation_batch_size: int = 8


@dataclass
class GRPOTrainingConfig:
    """GRPO optimisation (§3.3: ε = 0.2, advantage clamp ±2, β_KL = 0.02, lr 1e-6 pretrained).

    Args:
        eval_steps: Evaluate on the eval pairs every this many steps (0: before and after only).
    """

    learning_rate: float = 1e-6
    beta: float = 0.02
    epsilon: float = 0.2
    advantage_clip: float = 2.0
    max_steps: int = 100
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    lr_scheduler: str = "constant"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 0
    bf16: bool = False
    seed: int = 0


@dataclass
class GRPOStageConfig:
    """The GRPO stage (configs/relevance/grpo_*.yaml). `init` is the DPO (or SFT) run (CLI `--init`)."""

    init: str | None = None
    data: StageDataConfig = field(default_factory=StageDataConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    training: GRPOTrainingConfig = field(default_factory=GRPOTrainingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)


@dataclass
class PromptPool:
    """The RL prompts with their labels, and the difficulty estimate that filters them."""

    records: list[RelevanceRecord]
    prompts: list[str]
    tokenizer: Any
    variant: str
    config: PoolConfig
    rollout: RolloutConfig
    last_counts: np.ndarray | None = None

    def refresh(self, model: torch.nn.Module, seed: int) -> np.ndarray:
        """Indices of the prompts the current policy passes sometimes but not too often."""
        counts = estimate_pass_counts(model, self.tokenizer, self.prompts, [r.label for r in self.records],
                                      self.variant, self.config.difficulty_samples, self.rollout.temperature,
                                      self.rollout.top_k, self.rollout.max_completion_length,
                                      self.rollout.generation_batch_size, seed)
        self.last_counts = counts
        return np.flatnonzero(difficulty_mask(counts, self.config.difficulty_samples, self.config.gamma_ratio))


def grpo_args(config: GRPOStageConfig, out: Path) -> GRPOConfig:
    """Every GRPO setting explicit (TRL 1.16's defaults differ from the spec's, §3.3)."""
    train, rollout = config.training, config.rollout
    return GRPOConfig(
        output_dir=str(out / "trainer"), num_generations=rollout.num_generations,
        per_device_train_batch_size=rollout.prompts_per_step * rollout.num_generations,
        gradient_accumulation_steps=train.gradient_accumulation_steps, temperature=rollout.temperature,
        top_k=rollout.top_k, top_p=1.0, max_completion_length=rollout.max_completion_length,
        mask_truncated_completions=True, beta=train.beta, epsilon=train.epsilon, loss_type="grpo",
        activation_checkpointing=False,
        scale_rewards="group", num_iterations=1, learning_rate=train.learning_rate, max_steps=train.max_steps,
        warmup_steps=train.warmup_ratio, lr_scheduler_type=train.lr_scheduler, max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps, bf16=train.bf16, save_strategy="no", report_to="none", seed=train.seed,
        data_seed=train.seed, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(), log_completions=False,
    )


def train_grpo(config: GRPOStageConfig, out_dir: str | Path, trainer_cls: type[RankGRPOTrainer] = RankGRPOTrainer,
               reward_funcs: Sequence[Any] | None = None, stage: str = "grpo") -> dict[str, Any]:
    """Run the GRPO stage into `out_dir`; returns the metrics written to `metrics.json`.

    Later RL stages reuse this driver (pool, filter, evaluation, run folder) with their own `trainer_cls` (a
    `RankGRPOTrainer` subclass), `reward_funcs` (default: `CorrectnessReward`) and `stage` name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg, rollout = config.training, config.rollout
    seed_everything(train_cfg.seed)
    inputs = load_stage_inputs(config.init, config.data)
    if inputs.variant == "think_first":
        raise ConfigError(f"{stage.upper()} runs on label-first (or label-only) checkpoints; think-first is an SFT "
                          "ablation only (relevance.md §11).")
    dump_yaml(config, out / "config.yaml")
    model, tokenizer = inputs.model, inputs.tokenizer
    before = evaluate_stage(model, inputs, config.eval)

    records, pool_stats = pool_records(inputs.train_records, config.pool, train_cfg.seed)
    prompts = [chat_prompt(tokenizer, prompt_message(r, inputs.rule_table, inputs.variant, inputs.rule_text))
               for r in records]
    pool = PromptPool(records, prompts, tokenizer, inputs.variant, config.pool, rollout)
    active = agree_across_processes(pool.refresh(model, train_cfg.seed)) if config.pool.filter \
        else np.arange(len(records))
    if config.pool.filter:
        pool_stats.update(initial_pass_rate=float(pool.last_counts.mean() / config.pool.difficulty_samples),
                          initial_kept=int(len(active)))
    # The trainer sets the batch geometry (prompts per generation batch, repeats) from its arguments.
    sampler = DifficultySampler(len(records), rollout.num_generations, rollout.prompts_per_step, seed=train_cfg.seed,
                                active=active)
    dataset = HFDataset.from_list([{"prompt": p, "label": r.label, "query_type": r.query_type, "pool_index": i}
                                   for i, (p, r) in enumerate(zip(prompts, records))])
    refresh = DifficultyRefresh(pool, sampler, config.pool.refresh_steps if config.pool.filter else 0)
    periodic = PeriodicEval(inputs, config.eval, train_cfg.eval_steps)
    initial = parameter_snapshot(model)
    rewards = list(reward_funcs) if reward_funcs is not None else [CorrectnessReward(inputs.variant)]
    trainer = trainer_cls(model=model, reward_funcs=rewards, args=grpo_args(config, out), train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[refresh, periodic],
                          advantage_clip=train_cfg.advantage_clip, sampler=sampler, pool=pool)
    refresh.trainer = periodic.trainer = trainer
    result = trainer.train()
    after = evaluate_stage(model, inputs, config.eval)
    logged = [row for row in trainer.state.log_history if "reward" in row]
    metrics = {"stage": stage, "init": str(inputs.checkpoint), "pool": pool_stats,
               "refreshes": refresh.history, "steps": trainer.state.global_step, **throughput(trainer, result),
               "reward_first": logged[0]["reward"] if logged else None,
               "reward_last": logged[-1]["reward"] if logged else None,
               "max_parameter_change": max_parameter_change(initial, model), "before": before, "after": after,
               "periodic_eval": periodic.history}
    save_stage(trainer, inputs, stage, out, metrics)
    return json.loads((out / "metrics.json").read_text())


__all__ = ["CorrectnessReward", "class_counts", "counts_cv", "class_cv", "balance_classes", "pool_records",
           "difficulty_mask", "estimate_pass_counts", "DifficultySampler", "RankGRPOTrainer", "DifficultyRefresh",
           "PeriodicEval", "PoolConfig", "RolloutConfig", "GRPOTrainingConfig", "GRPOStageConfig", "PromptPool",
           "grpo_args", "train_grpo"]
