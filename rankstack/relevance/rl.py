"""The SRPO and AGRL stages: one trainer over `RankGRPOTrainer` and one driver (relevance.md §4, §5, §7).

`RelevanceRLTrainer.compute_advantages` (the GRPO hook for per-token advantages) runs, on every scored batch:

1. **AGRL guided replay** (when on): low-accuracy groups get hinted rollouts swapped in, scored under the unguided
   prompt (`agrl.GuidedReplay`, `agrl.swap_rows`, `agrl.rescore_rows`); rewards are recomputed for them.
2. **Outcome advantages**: the group z-score of the (possibly replayed) rewards.
3. **SRPO step advantages** (when on, λ > 0): hybrid step rewards (verifier where visible, else the step RM), the
   critical weights, and per-token advantages (B, T) (`srpo.token_advantages`); otherwise the outcome advantages
   clamped to ±2, as in GRPO.

It logs, per step: step accuracy per step type and rule adherence of the rollouts (verifier), the share of
rollouts with a critical step (c = 1), the step RM's unsure rate and its agreement with the verifier where both
exist, and the replay rate, guided-success rate, hint-leak rejections and zero-variance groups before/after
replay; TRL logs the policy entropy.

`train_rl(config, out, stage)` is the stage driver: `stage` is `srpo` or `agrl` and that method must be enabled in
the config; the other may be enabled too (SRPO+AGRL). The reward is AGRL's shaped reward when AGRL is on, else
GRPO's 1 / 0 / −1. The prompt pool is class-balanced (§3.3), then filtered by one survey of K sampled rollouts per
prompt with the current policy: the diversified filter (§4) or GRPO's difficulty filter; a curriculum (§4) runs
its stages one after another on the same weights, each on the prompts whose pass rate falls in its window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from rankstack.config import dump_yaml  # noqa: E402
from rankstack.errors import ConfigError, DataError  # noqa: E402
from rankstack.relevance.agrl import (  # noqa: E402
    GuidedReplay,
    ReplayConfig,
    ShapedReward,
    guided_old_logps,
    rescore_rows,
    swap_rows,
)
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message  # noqa: E402
from rankstack.relevance.evaluate import is_correct  # noqa: E402
from rankstack.relevance.format import STEPS, parse_output  # noqa: E402
from rankstack.relevance.grpo import (  # noqa: E402
    CorrectnessReward,
    DifficultySampler,
    PeriodicEval,
    PoolConfig,
    RankGRPOTrainer,
    RolloutConfig,
    difficulty_mask,
    grpo_args,
    pool_records,
)
from rankstack.relevance.grpo import GRPOTrainingConfig as RLTrainingConfig  # noqa: E402
from rankstack.relevance.rules import rule_adherence, verify_steps  # noqa: E402
from rankstack.relevance.sft import max_parameter_change, parameter_snapshot, throughput  # noqa: E402
from rankstack.relevance.srpo import (  # noqa: E402
    CurriculumConfig,
    CurriculumStage,
    DiversityConfig,
    critical_weights,
    curriculum_indices,
    diversified_mask,
    diversity_stats,
    hybrid_step_rewards,
    outcome_advantages,
    rebalance_cells,
    sample_with_entropy,
    stage_steps,
    step_advantages,
    token_advantages,
    verifier_visible,
)
from rankstack.relevance.stage import (  # noqa: E402
    StageDataConfig,
    StageEvalConfig,
    StageInputs,
    agree_across_processes,
    evaluate_stage,
    load_stage_inputs,
    save_stage,
)
from rankstack.relevance.steps import (  # noqa: E402
    StepJudge,
    StepRMConfig,
    judge_agreement,
    judge_examples,
    judge_message,
    judged_sections,
    step_token_index,
    train_step_judge,
)
from rankstack.train.rng import seed_everything  # noqa: E402

RL_STAGES = ("srpo", "agrl")


# ------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class SRPOConfig:
    """Stepwise rewards (§4).

    Args:
        enabled: Add the step terms to the advantages.
        lam: λ, the weight of the step terms (0 is plain GRPO).
        verifier_share: ρ, the share of pairs whose verifier step labels are visible (1: verifier only; 0: the step
            RM on every section; the label step always uses the verifier).
        uniform_weights: Ablation c ≡ 1 on every judged step.
        log_agreement: Also judge the visible pairs with the RM, to log its agreement with the verifier.
        step_rm: The generative step reward model.
    """

    enabled: bool = False
    lam: float = 0.5
    verifier_share: float = 0.5
    uniform_weights: bool = False
    log_agreement: bool = True
    step_rm: StepRMConfig = field(default_factory=StepRMConfig)


@dataclass
class AGRLConfig:
    """Rule-aware reward and guided replay (§5). `gated: false` is the GRPO-PR baseline (no gate, no cap)."""

    enabled: bool = False
    gated: bool = True
    replay: ReplayConfig = field(default_factory=ReplayConfig)


@dataclass
class RLStageConfig:
    """The SRPO / AGRL stage (configs/relevance/{srpo,agrl,srpo_agrl}_*.yaml). `init` is the DPO (or SFT) run.

    `pool.refresh_steps` re-surveys the current stage's prompts with the current policy; `pool.filter` and
    `pool.gamma_ratio` apply when the diversified filter is off; `diversity.samples` is K of every survey.
    """

    init: str | None = None
    data: StageDataConfig = field(default_factory=StageDataConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    training: RLTrainingConfig = field(default_factory=RLTrainingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)
    srpo: SRPOConfig = field(default_factory=SRPOConfig)
    agrl: AGRLConfig = field(default_factory=AGRLConfig)


# ------------------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class StepCredit:
    """What SRPO's advantage needs: λ, ρ, the judge (None: verifier only), and the seed of the visibility draw."""

    lam: float
    verifier_share: float
    judge: StepJudge | None
    uniform_weights: bool = False
    log_agreement: bool = True
    seed: int = 0


class RelevanceRLTrainer(RankGRPOTrainer):
    """`RankGRPOTrainer` whose advantage hook adds AGRL's guided replay and SRPO's per-token step advantages.

    Every dataset row carries `pool_index` into `records`; groups are G consecutive rows of one process (TRL's
    per-device batch is a multiple of G, §7).
    """

    def __init__(self, *args: Any, records: Sequence[RelevanceRecord], variant: str,
                 score: Callable[[str, RelevanceRecord], float], rule_table: dict[str, str] | None = None,
                 rule_text: bool = True, step_credit: StepCredit | None = None, replay: GuidedReplay | None = None,
                 **kwargs: Any):
        self.pool_records, self.variant, self.score = list(records), variant, score
        self.rule_table, self.rule_text = rule_table or {}, rule_text
        self.step_credit, self.replay = step_credit, replay
        super().__init__(*args, **kwargs)

    def _log(self, name: str, value: float | None) -> None:
        if value is not None:
            self._metrics["train" if self.model.training else "eval"][name].append(float(value))

    def _logps(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               logits_to_keep: int) -> torch.Tensor:
        return self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                       batch_size=self.args.per_device_train_batch_size)[0]

    def compute_advantages(self, output: dict[str, Any], inputs: list[dict[str, Any]]) -> torch.Tensor:
        group = self.num_generations
        records = [self.pool_records[int(x["pool_index"])] for x in inputs]
        if len(records) % group or any(records[i].pair_id != records[i - i % group].pair_id
                                       for i in range(len(records))):
            raise ConfigError("SRPO/AGRL need every group of G rollouts on one process in consecutive rows; keep "
                              "rollout.prompts_per_step × rollout.num_generations per device.")
        texts = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        start = self.accelerator.process_index * len(inputs)
        weights = self.reward_weights.to(self.last_rewards.device)
        rewards = (self.last_rewards[start:start + len(inputs)] * weights).nansum(dim=1).float().cpu()
        if self.replay is not None:
            rewards = self._replay(output, records, texts, rewards)
        device = output["completion_ids"].device
        outcome = outcome_advantages(rewards, group).to(device)
        parsed = [parse_output(t, self.variant) for t in texts]
        self._log_rollouts(parsed, records)
        credit = self.step_credit
        if credit is None or credit.lam == 0:
            return outcome.clamp(-self.advantage_clip, self.advantage_clip)
        terms, token_steps = self._step_terms(output, parsed, records, texts)
        return token_advantages(outcome, terms.to(device), token_steps.to(device), credit.lam, self.advantage_clip)

    # -- AGRL

    def _replay(self, output: dict[str, Any], records: list[RelevanceRecord], texts: list[str],
                rewards: torch.Tensor) -> torch.Tensor:
        assert self.replay is not None
        group = self.num_generations
        zero_before = float((rewards.view(-1, group).std(dim=1) == 0).float().mean())
        model = self.accelerator.unwrap_model(self.model)
        result = self.replay.run(model, records, texts, rewards.tolist(), group)
        if result.rows:
            swap_rows(output, result.rows, [self.replay.completion_ids(t) for t in result.texts],
                      self.processing_class.pad_token_id)
            models: dict[str, torch.nn.Module] = {}
            if "ref_per_token_logps" in output:
                if self.ref_model is None:
                    raise ConfigError("guided replay rescoring needs a reference model object; PEFT adapters (whose "
                                      "reference is the disabled adapter) are not supported by the AGRL stage.")
                models["ref_per_token_logps"] = self.ref_model
            if "old_per_token_logps" in output:
                models["old_per_token_logps"] = self.model
            rescore_rows(output, result.rows, self._logps, models)
            if self.replay.config.old_logps == "guided":  # option B: π_old is the guided sampling distribution
                prompt_ids = [self.processing_class.encode(p, add_special_tokens=False) for p in result.prompts]
                guided_old_logps(output, result.rows, prompt_ids, self._logps, self.model)
            for row, text, reward in zip(result.rows, result.texts, result.rewards):
                texts[row] = text
                rewards[row] = reward
            output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        self._log("replay/rate", result.replayed / max(result.groups, 1))
        self._log("replay/tau", result.tau)
        self._log("replay/guided_success", result.succeeded / result.replayed if result.replayed else None)
        self._log("replay/hint_leaks", result.leaks / result.guided if result.guided else None)
        # Why guided success is low: hinted answers with the wrong label, or answers that do not parse.
        self._log("replay/guided_label_accuracy", result.labelled_right / result.guided if result.guided else None)
        self._log("replay/guided_format_failures", result.malformed / result.guided if result.guided else None)
        self._log("replay/swapped_rows", len(result.rows))
        self._log("replay/zero_std_before", zero_before)
        self._log("replay/zero_std_after", float((rewards.view(-1, group).std(dim=1) == 0).float().mean()))
        return rewards

    # -- SRPO

    def _step_terms(self, output: dict[str, Any], parsed: list[Any], records: list[RelevanceRecord],
                    texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """c · A^step per row and step (B, S), and the step index of each completion token (B, T)."""
        credit = self.step_credit
        assert credit is not None
        visible = [verifier_visible(r.pair_id, credit.verifier_share, credit.seed) for r in records]
        judged = self._judge(parsed, records, texts, visible)
        step_rewards = np.zeros((len(records), len(STEPS)), dtype=np.int64)
        sources = np.full((len(records), len(STEPS)), "-", dtype="<U1")
        for i, (p, r) in enumerate(zip(parsed, records)):
            step_rewards[i], sources[i] = hybrid_step_rewards(p, r, visible[i], judged[i])
        correct = np.array([is_correct(p, r.label) for p, r in zip(parsed, records)])
        group = self.num_generations
        terms = np.zeros(step_rewards.shape)
        critical = 0
        for g in range(0, len(records), group):
            block = slice(g, g + group)
            weights = np.where(step_rewards[block] != 0, 1.0, 0.0) if credit.uniform_weights \
                else critical_weights(step_rewards[block], correct[block])
            critical += int((weights == 1.0).any(axis=1).sum())
            terms[block] = weights * step_advantages(step_rewards[block])
        ids = output["completion_ids"]
        token_steps = torch.full(ids.shape, -1, dtype=torch.long)
        pad = self.processing_class.pad_token_id
        for i, p in enumerate(parsed):
            row = ids[i].tolist()
            while row and row[-1] == pad:
                row.pop()
            token_steps[i, :len(row)] = torch.from_numpy(step_token_index(self.processing_class, row, p))
        self._log("srpo/critical_share", critical / len(records))
        from_rm = sources == "m"
        self._log("srpo/rm_share", float(from_rm.mean()))
        if from_rm.any():
            self._log("srpo/rm_unsure_rate", float((step_rewards[from_rm] == 0).mean()))
        return torch.as_tensor(terms, dtype=torch.float32), token_steps

    def _judge(self, parsed: list[Any], records: list[RelevanceRecord], texts: list[str],
               visible: list[bool]) -> list[dict[str, int]]:
        """The step RM's +1 / −1 / 0 for each present section of the rows it must judge (and of the visible rows
        too when agreement is logged); logs its agreement with the verifier on the visible ones."""
        credit = self.step_credit
        judged: list[dict[str, int]] = [{} for _ in records]
        if credit is None or credit.judge is None:
            return judged
        asks = [(i, s) for i, (p, r) in enumerate(zip(parsed, records)) if r.gold is not None
                and (not visible[i] or credit.log_agreement) for s in judged_sections(p)]
        if not asks:
            return judged
        judge = credit.judge
        prompts = [chat_prompt(judge.tokenizer, judge_message(records[i], self.rule_table, self.variant,
                                                              self.rule_text, texts[i], parsed[i], s))
                   for i, s in asks]
        rewards = judge.rewards(judge.probabilities(prompts))
        agree = []
        for (i, s), r in zip(asks, rewards):
            judged[i][s] = int(r)
            if visible[i]:
                agree.append(int(r) == verify_steps(parsed[i], records[i])[s])
        self._log("srpo/rm_agreement", float(np.mean(agree)) if agree else None)
        return judged

    # -- logging

    def _log_rollouts(self, parsed: list[Any], records: list[RelevanceRecord]) -> None:
        with_gold = [(p, r) for p, r in zip(parsed, records) if r.gold is not None]
        if not with_gold or self.variant == "label_only":
            return
        scores = [verify_steps(p, r) for p, r in with_gold]
        for step in STEPS:
            self._log(f"step_accuracy/{step}", float(np.mean([s[step] > 0 for s in scores])))
        adherent = [rule_adherence(p, r) for p, r in with_gold if p.ok]
        self._log("rule_adherence", float(np.mean(adherent)) if adherent else 0.0)


# ------------------------------------------------------------------------------------------------------------
# Pool selection


@dataclass
class Survey:
    """K sampled rollouts per prompt of a candidate set with the current policy: pass counts and diversity."""

    indices: list[int]
    passes: np.ndarray
    samples: int
    kept: list[int]
    stats: dict[str, Any]


class PoolSelector:
    """Surveys candidate prompts with the current policy and keeps those the stage trains on."""

    def __init__(self, config: RLStageConfig, records: Sequence[RelevanceRecord], prompts: Sequence[str],
                 tokenizer: Any, variant: str):
        self.config, self.records, self.prompts = config, list(records), list(prompts)
        self.tokenizer, self.variant = tokenizer, variant

    def survey(self, model: torch.nn.Module, indices: Sequence[int], seed: int) -> tuple[np.ndarray, list[Any]]:
        rollout, samples = self.config.rollout, self.config.diversity.samples
        texts, entropies = sample_with_entropy(model, self.tokenizer, [self.prompts[i] for i in indices], samples,
                                               rollout.temperature, rollout.top_k, rollout.max_completion_length,
                                               rollout.generation_batch_size, seed)
        passes, stats = [], []
        for i, group, ent in zip(indices, texts, entropies):
            parsed = [parse_output(t, self.variant) for t in group]
            correct = [is_correct(p, self.records[i].label) for p in parsed]
            passes.append(sum(correct))
            stats.append(diversity_stats(parsed, correct, ent))
        return np.array(passes, dtype=np.int64), stats

    def select(self, model: torch.nn.Module, candidates: Sequence[int], seed: int,
               surveyed: tuple[np.ndarray, list[Any]] | None = None) -> Survey:
        """The prompts of `candidates` to train on: the diversified filter, else the difficulty filter. `surveyed`:
        the candidates' pass counts and diversity already sampled (the curriculum's survey), else sampled here."""
        config, candidates = self.config, list(candidates)
        samples = config.diversity.samples
        if not candidates:
            return Survey([], np.zeros(0, dtype=np.int64), samples, [], {"candidates": 0, "kept": 0})
        if not config.diversity.enabled and not config.pool.filter:
            return Survey(candidates, np.zeros(0, dtype=np.int64), samples, candidates,
                          {"candidates": len(candidates), "kept": len(candidates)})
        passes, stats = surveyed if surveyed is not None else self.survey(model, candidates, seed)
        report: dict[str, Any] = {"candidates": len(candidates), "pass_rate": float(passes.mean() / samples),
                                  "mean_entropy": float(np.mean([s.mean_entropy for s in stats]))}
        if config.diversity.enabled:
            mask = diversified_mask(stats, config.diversity.entropy_quantile)
            kept = [c for c, m in zip(candidates, mask) if m]
            report["mixed_and_diverse"] = len(kept)
            if config.diversity.rebalance:
                balanced = rebalance_cells(self.records, kept, seed)
                report["rebalanced"] = len(balanced) >= config.rollout.prompts_per_step
                kept = balanced if report["rebalanced"] else kept
        else:
            mask = difficulty_mask(passes, samples, config.pool.gamma_ratio)
            kept = [c for c, m in zip(candidates, mask) if m]
        report["kept"] = len(kept)
        return Survey(candidates, passes, samples, kept, report)


class PoolRefresh(TrainerCallback):
    """Every `pool.refresh_steps` steps, and when the policy entropy falls below `collapse_ratio` of its first
    logged value, re-survey the stage's candidates with the current policy and re-filter the sampler.

    A logged step whose completions were all truncated carries no entropy: truncated completions are masked out of
    the loss, so TRL logs 0 there. Such steps are skipped, or one of them would read as a collapse.
    """

    def __init__(self, selector: PoolSelector, sampler: DifficultySampler, candidates: list[int], every: int,
                 collapse_ratio: float | None, min_gap: int, seed: int):
        self.selector, self.sampler, self.candidates = selector, sampler, candidates
        self.every, self.collapse_ratio, self.min_gap, self.seed = every, collapse_ratio, min_gap, seed
        self.start_entropy: float | None = None
        self.collapsed = False
        self.last_refresh = 0
        self.history: list[dict[str, Any]] = []
        self.trainer: RelevanceRLTrainer | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
        logs = logs or {}
        entropy = logs.get("entropy")
        if entropy is None or self.collapse_ratio is None or logs.get("completions/clipped_ratio", 0.0) >= 1.0:
            return
        if self.start_entropy is None:
            self.start_entropy = float(entropy)
        elif entropy < self.collapse_ratio * self.start_entropy:
            self.collapsed = True

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        step = state.global_step
        periodic = self.every > 0 and step % self.every == 0
        collapse = self.collapsed and step - self.last_refresh >= self.min_gap
        if not (periodic or collapse) or self.trainer is None:
            return
        self.collapsed = False
        self.last_refresh = step
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        survey = self.selector.select(model, self.candidates, self.seed + step)
        kept = agree_across_processes(survey.kept)
        applied = len(kept) >= self.sampler.batch_size
        if applied:
            self.sampler.set_active(kept)
        self.history.append({"step": step, "reason": "entropy_collapse" if collapse and not periodic else "periodic",
                             "applied": applied, **survey.stats})


# ------------------------------------------------------------------------------------------------------------
# Stage


def build_judge(config: RLStageConfig, inputs: StageInputs, records: list[RelevanceRecord], prompts: list[str],
                out: Path) -> tuple[StepJudge | None, dict[str, Any]]:
    """The step RM: loaded from `srpo.step_rm.path`, or trained on verifier-labelled rollouts of the init checkpoint
    (train prompts; a share held out for its agreement with the verifier). None when the verifier is always
    visible."""
    srpo, rm = config.srpo, config.srpo.step_rm
    if not srpo.enabled or srpo.verifier_share >= 1.0:
        return None, {}
    if rm.path is not None:
        return StepJudge.load(rm.path, rm.upper, rm.lower, rm.batch_size), {"path": rm.path}
    with_gold = [i for i, r in enumerate(records) if r.gold is not None][:rm.max_prompts]
    texts, _ = sample_with_entropy(inputs.model, inputs.tokenizer, [prompts[i] for i in with_gold],
                                   rm.samples_per_prompt, rm.temperature, 0, rm.max_new_tokens,
                                   config.rollout.generation_batch_size, config.training.seed)
    held = int(round(len(with_gold) * rm.holdout_share))
    chosen = [records[i] for i in with_gold]

    def examples(part: slice) -> list[dict[str, Any]]:
        return judge_examples(inputs.tokenizer, chosen[part], texts[part], inputs.rule_table, inputs.variant,
                              inputs.rule_text)

    train, heldout = examples(slice(held, None)), examples(slice(0, held))
    judge = train_step_judge(inputs.checkpoint, train, rm, out / "step_rm", config.training.seed)
    report = {"train_examples": len(train), "train_correct_share":
              float(np.mean([e["completion"] == "Y" for e in train])) if train else None,
              "heldout": judge_agreement(judge, heldout)}
    return judge, report


def train_rl(config: RLStageConfig, out_dir: str | Path, stage: str) -> dict[str, Any]:
    """Run the SRPO or AGRL stage (or both, as the config enables) into `out_dir`; returns its metrics."""
    if stage not in RL_STAGES:
        raise ConfigError(f"unknown RL stage `{stage}`; choose one of {', '.join(RL_STAGES)}.")
    if not getattr(config, stage).enabled:
        raise ConfigError(f"stage `{stage}` with `{stage}.enabled: false` in its config; set it true (configs/"
                          f"relevance/{stage}_tiny.yaml does), or run `--stage grpo` for plain GRPO.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg, rollout = config.training, config.rollout
    seed_everything(train_cfg.seed)
    inputs = load_stage_inputs(config.init, config.data)
    if inputs.variant == "think_first" or (config.srpo.enabled and inputs.variant == "label_only"):
        raise ConfigError(f"stage `{stage}` needs a label-first checkpoint (SRPO's steps are its sections; "
                          f"think-first is an SFT ablation only); {inputs.checkpoint} is `{inputs.variant}`.")
    dump_yaml(config, out / "config.yaml")
    model, tokenizer = inputs.model, inputs.tokenizer
    before = evaluate_stage(model, inputs, config.eval)

    records, pool_stats = pool_records(inputs.train_records, config.pool, train_cfg.seed)
    prompts = [chat_prompt(tokenizer, prompt_message(r, inputs.rule_table, inputs.variant, inputs.rule_text))
               for r in records]
    judge, judge_report = build_judge(config, inputs, records, prompts, out)

    if config.agrl.enabled:
        reward: Any = ShapedReward(records, inputs.variant, config.agrl.gated)
    else:
        reward = CorrectnessReward(inputs.variant)
    score = reward.score if config.agrl.enabled else (lambda text, record: reward.score(text, record.label))
    replay = GuidedReplay(config.agrl.replay, inputs.rule_table, inputs.variant, inputs.rule_text, tokenizer, score,
                          rollout.temperature, rollout.top_k, rollout.max_completion_length,
                          rollout.generation_batch_size) if config.agrl.enabled and config.agrl.replay.enabled \
        else None
    dataset = HFDataset.from_list([{"prompt": p, "label": r.label, "query_type": r.query_type, "pool_index": i}
                                   for i, (p, r) in enumerate(zip(prompts, records))])
    selector = PoolSelector(config, records, prompts, tokenizer, inputs.variant)

    phases = config.curriculum.stages if config.curriculum.enabled else [
        CurriculumStage("single", 0.0, 1.0, 1.0, step_reward=True)]
    budgets = stage_steps(train_cfg.max_steps, phases)
    initial = parameter_snapshot(model)
    history: list[dict[str, Any]] = []
    phase_reports: list[dict[str, Any]] = []
    periodic = PeriodicEval(inputs, config.eval, train_cfg.eval_steps)
    trainer: RelevanceRLTrainer | None = None
    offset, runtime, tokens = 0, 0.0, 0.0
    for number, (phase, steps) in enumerate(zip(phases, budgets)):
        seed = train_cfg.seed + 1000 * number
        candidates = list(range(len(records)))
        report: dict[str, Any] = {"phase": phase.name, "steps": steps, "step_reward": phase.step_reward}
        surveyed = None
        if config.curriculum.enabled:  # one survey of the whole pool: the window, then the filter within it
            passes, stats = selector.survey(model, candidates, seed)
            candidates = curriculum_indices(records, passes / config.diversity.samples, phase)
            surveyed = (passes[candidates], [stats[i] for i in candidates])
            report["window"] = [phase.pass_low, phase.pass_high]
            report["in_window"] = len(candidates)
        survey = selector.select(model, candidates, seed + 1, surveyed)
        active = agree_across_processes(survey.kept)
        report["pool"] = survey.stats
        if len(active) < rollout.prompts_per_step:
            if not config.curriculum.enabled:
                raise DataError(f"the {stage} prompt pool keeps {len(active)} prompts after filtering ({survey.stats}),"
                                f" fewer than the {rollout.prompts_per_step} of one step; use more train pairs "
                                "(data.max_train_examples), diversity.rebalance: false, or pool.filter: false.")
            report["skipped"] = f"{len(active)} prompts kept, fewer than one step's {rollout.prompts_per_step}"
            phase_reports.append(report)
            continue
        sampler = DifficultySampler(len(records), rollout.num_generations,
                                    rollout.prompts_per_step * train_cfg.gradient_accumulation_steps,
                                    repeat_count=train_cfg.gradient_accumulation_steps, seed=seed, active=active)
        refresh = PoolRefresh(selector, sampler, candidates, config.pool.refresh_steps,
                              config.diversity.collapse_ratio if config.diversity.enabled else None,
                              config.diversity.min_steps_between_refilters, seed)
        lam = config.srpo.lam if config.srpo.enabled and phase.step_reward else 0.0
        credit = StepCredit(lam, config.srpo.verifier_share, judge, config.srpo.uniform_weights,
                            config.srpo.log_agreement, train_cfg.seed) if config.srpo.enabled else None
        args = grpo_args(config, out)  # type: ignore[arg-type]  # reads only .training and .rollout
        if replay is not None and config.agrl.replay.old_logps == "guided":
            args.delta = config.agrl.replay.ratio_cap  # option B's hard ratio cap (TRL's two-sided clip)
        args.max_steps = steps
        args.seed = args.data_seed = seed
        trainer = RelevanceRLTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                                     processing_class=tokenizer, callbacks=[refresh, periodic],
                                     advantage_clip=train_cfg.advantage_clip, sampler=sampler, records=records,
                                     variant=inputs.variant, score=score, rule_table=inputs.rule_table,
                                     rule_text=inputs.rule_text, step_credit=credit, replay=replay)
        refresh.trainer = periodic.trainer = trainer
        result = trainer.train()
        timing = throughput(trainer, result)
        runtime, tokens = runtime + timing["train_runtime_s"], tokens + timing["num_tokens"]
        for row in trainer.state.log_history:
            history.append({**row, "phase": phase.name, "step": offset + int(row.get("step", 0))})
        offset += trainer.state.global_step
        report.update(refreshes=refresh.history, trained_steps=trainer.state.global_step)
        phase_reports.append(report)
        model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer is None:
        raise DataError(f"no curriculum stage kept enough prompts to train on ({phase_reports}); widen the "
                        "curriculum windows, set diversity.rebalance: false, or use more train pairs.")
    after = evaluate_stage(model, inputs, config.eval)
    logged = [row for row in history if "reward" in row]
    metrics = {"stage": stage, "methods": {"srpo": config.srpo.enabled, "agrl": config.agrl.enabled},
               "init": str(inputs.checkpoint), "pool": pool_stats, "phases": phase_reports, "step_rm": judge_report,
               "steps": offset, "train_runtime_s": runtime, "num_tokens": tokens,
               "tokens_per_s": tokens / runtime if runtime > 0 else 0.0,
               "reward_first": logged[0]["reward"] if logged else None,
               "reward_last": logged[-1]["reward"] if logged else None,
               "max_parameter_change": max_parameter_change(initial, model), "before": before, "after": after,
               "periodic_eval": periodic.history}
    trainer.state.log_history = history
    save_stage(trainer, inputs, stage, out, metrics)
    return json.loads((out / "metrics.json").read_text())


__all__ = ["RL_STAGES", "SRPOConfig", "AGRLConfig", "RLStageConfig", "StepCredit", "RelevanceRLTrainer", "Survey",
           "PoolSelector", "PoolRefresh", "build_judge", "train_rl"]
