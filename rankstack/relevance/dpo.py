"""TaoSR1 stage 2: pass@N sampling and DPO against an explicit frozen reference (relevance.md §3.2, §7).

1. **pass@N.** The init policy (the SFT checkpoint) samples N answers per train prompt at temperature T
   (`evaluate.generate_completions`), and one forward pass gives its first-token label distribution p(k | x).
2. **Pairs** (`build_pairs`). A sample is correct when it is well-formed and has the gold label
   (`evaluate.is_correct`). Per prompt:
   - all N correct: no pair;
   - *self-correction* (some correct): chosen = the correct samples by verifier step accuracy (best first),
     rejected = the wrong samples by p(their wrong label) (most confidently wrong first; 0 for a sample with no
     label, or a malformed one with the gold label). With `chosen_min_step_accuracy` > 0 (our option; 0 is §3.2),
     a correct sample is chosen only if at least that share of its verifier steps is right; where none is and gold
     steps exist, the prompt is paired as an oracle one below;
   - *oracle* (all N wrong): chosen = the gold-conditioned rationale (`data.render_completion` of the gold steps),
     kept only if it parses to the gold label; rejected = the wrong samples as above. In the `label_only` variant
     the rationale is the label itself.
   - *hinted* (all N wrong, no gold steps: ESCI, WANDS, a user's logs): the init policy, prompted with "Hint: the
     correct tier is k." after the user turn (`agrl.hint_text`, level 1), samples N more answers; the first that
     is correct, well-formed and does not quote the hint (`agrl.usable_guided`) is the chosen answer, paired under
     the unguided prompt (`hinted_oracles`). §3.2's "the SFT model prompted with the correct tier"; without a
     rule table off the city, the hint names the tier only. No usable answer: no pair.
   Up to `max_pairs_per_prompt` pairs, the i-th pairing the i-th chosen (cycling) with the i-th rejected;
   identical (chosen, rejected) texts are kept once.
3. **DPO** with TRL's `DPOTrainer(model, ref_model=…)`: both loaded from the init checkpoint folder, so the
   reference is a separate, frozen copy of the SFT model; sigmoid loss with β = 0.1. `nll_weight` > 0 adds the
   chosen answers' mean token negative log-likelihood times that weight (TRL's `sft` loss term; RPO, Pang et al.
   2024, "Iterative Reasoning Preference Optimization"), which keeps DPO from lowering the likelihood of the correct
   rationales along with the wrong ones. Off by default: §3.2 is plain DPO.

Logged: pairs by source (`pairs.jsonl`, `metrics.json`), pass@1 / pass@N of the samples, TRL's
`rewards/{chosen,rejected,margins,accuracies}`, and the eval split before and after.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from rankstack.config import dump_yaml  # noqa: E402
from rankstack.errors import ConfigError, DataError  # noqa: E402
from rankstack.relevance.agrl import guided_prompt, hint_text, usable_guided  # noqa: E402
from rankstack.relevance.cumpt import RelevanceScorer  # noqa: E402
from rankstack.relevance.data import RelevanceRecord, chat_prompt, prompt_message, render_completion  # noqa: E402
from rankstack.relevance.evaluate import generate_completions, is_correct  # noqa: E402
from rankstack.relevance.format import ParsedOutput, parse_output  # noqa: E402
from rankstack.relevance.rules import verify_steps  # noqa: E402
from rankstack.relevance.sft import max_parameter_change, parameter_snapshot, throughput  # noqa: E402
from rankstack.relevance.stage import (  # noqa: E402
    StageDataConfig,
    StageEvalConfig,
    agree_across_processes,
    evaluate_stage,
    load_stage_inputs,
    save_stage,
)
from rankstack.train.rng import seed_everything  # noqa: E402


@dataclass
class SamplingConfig:
    """pass@N sampling (§3.2 defaults: N = 5, T = 1.0).

    Args:
        num_samples: N answers per train prompt.
        temperature: Sampling temperature.
        top_k: Sample from the k most probable tokens only (0: all).
        max_new_tokens: Longest sampled completion.
        batch_size: Prompts per `generate` call (each gives N sequences).
    """

    num_samples: int = 5
    temperature: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 160
    batch_size: int = 8


@dataclass
class DPOTrainingConfig:
    """DPO optimisation (§3.2 defaults: β = 0.1, 1 epoch, lr 1e-6 pretrained / 1e-5 small).

    Args:
        beta: DPO temperature β.
        max_pairs_per_prompt: At most this many pairs per prompt.
        precompute_ref_log_probs: Score the reference once before training (saves memory on GPU).
        max_length: Longest prompt + answer in tokens (TRL truncates the end).
        nll_weight: Weight of the chosen answers' NLL added to the DPO loss (0: plain DPO, §3.2).
        chosen_min_step_accuracy: Least share of right verifier steps (the label among them) a correct sample needs
            to be a chosen answer (0: any correct sample, §3.2; 1: right in every step). Without gold steps only the
            label is checked.
    """

    beta: float = 0.1
    nll_weight: float = 0.0
    chosen_min_step_accuracy: float = 0.0
    max_pairs_per_prompt: int = 2
    learning_rate: float = 1e-5
    num_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 1024
    precompute_ref_log_probs: bool = False
    logging_steps: int = 10
    bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nll_weight < 0:
            raise ConfigError(f"training.nll_weight is {self.nll_weight}; use 0 (plain DPO) or a positive weight.")
        if not 0 <= self.chosen_min_step_accuracy <= 1:
            raise ConfigError(f"training.chosen_min_step_accuracy is {self.chosen_min_step_accuracy}; use a share "
                              "in [0, 1] (0: any correct sample, as §3.2; 1: right in every verifier step).")


@dataclass
class DPOStageConfig:
    """The DPO stage (configs/relevance/dpo_*.yaml). `init` is the SFT run (CLI `--init`)."""

    init: str | None = None
    data: StageDataConfig = field(default_factory=StageDataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: DPOTrainingConfig = field(default_factory=DPOTrainingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair of a prompt: chosen and rejected completions, where the chosen one came from, and for a self
    pair the chosen sample's verifier step accuracy."""

    chosen: str
    rejected: str
    source: str  # "self" (a correct sample), "oracle" (the gold-conditioned rationale) or "hinted" (a hinted sample)
    step_accuracy: float | None = None


def step_accuracy(parsed: ParsedOutput, record: RelevanceRecord) -> float:
    """The share of `parsed`'s verifier steps that are right (the label only, without gold steps)."""
    scores = verify_steps(parsed, record)
    return sum(s > 0 for s in scores.values()) / len(scores)


def build_pairs(record: RelevanceRecord, samples: list[str], label_probs: np.ndarray, variant: str = "label_first",
                max_pairs: int = 2, seed: int = 0, hinted: str | None = None,
                min_step_accuracy: float = 0.0) -> list[PreferencePair]:
    """The DPO pairs of one prompt from its N samples and the policy's p(k | x) (see the module docstring).
    `hinted` is the record's usable hinted answer, the chosen one when all N are wrong and no gold steps exist;
    `min_step_accuracy` is `chosen_min_step_accuracy`."""
    parsed = [parse_output(text, variant) for text in samples]
    wrong = [i for i, p in enumerate(parsed) if not is_correct(p, record.label)]
    if not wrong:
        return []
    accuracy = {i: step_accuracy(p, record) for i, p in enumerate(parsed) if is_correct(p, record.label)}
    correct = [i for i, a in accuracy.items() if a >= min_step_accuracy]  # all of them without gold steps

    def confidence(i: int) -> float:  # p(the wrong label); 0 for no label or a malformed answer with the gold one
        label = parsed[i].label
        return float(label_probs[label - 1]) if label is not None and label != record.label else 0.0

    rejected = [samples[i] for i in sorted(wrong, key=lambda i: (-confidence(i), i))]
    if correct:
        order = sorted(correct, key=lambda i: (-accuracy[i], i))
        chosen, chosen_accuracy, source = [samples[i] for i in order], [accuracy[i] for i in order], "self"
    else:
        if record.gold is None and variant != "label_only":
            if hinted is None:
                return []  # no gold steps to write the oracle rationale from, and no usable hinted answer
            oracle, source = hinted, "hinted"
        else:
            oracle, source = render_completion(record, variant, seed), "oracle"
        if not is_correct(parse_output(oracle, variant), record.label):
            return []
        chosen, chosen_accuracy = [oracle], [None]
    pairs: list[PreferencePair] = []
    for i, rejected_text in enumerate(rejected):
        pair = PreferencePair(chosen[i % len(chosen)], rejected_text, source, chosen_accuracy[i % len(chosen)])
        if pair.chosen != pair.rejected and pair not in pairs:
            pairs.append(pair)
        if len(pairs) == max_pairs:
            break
    return pairs


def hinted_oracles(model: torch.nn.Module, tokenizer: Any, records: list[RelevanceRecord],
                   rule_table: dict[str, str], variant: str, rule_text: bool, sampling: SamplingConfig,
                   seed: int) -> list[str | None]:
    """Per record, the first of N answers sampled under the hinted prompt ("Hint: the correct tier is k.") that is
    correct, well-formed and does not quote the hint; None where none is."""
    hints = [hint_text(record, 1, rule_table) for record in records]
    prompts = [guided_prompt(tokenizer, record, rule_table, variant, rule_text, hint)
               for record, hint in zip(records, hints)]
    samples = generate_completions(model, tokenizer, prompts, sampling.num_samples, do_sample=True,
                                   temperature=sampling.temperature, top_k=sampling.top_k,
                                   max_new_tokens=sampling.max_new_tokens, batch_size=sampling.batch_size, seed=seed)
    return [next((text for text in texts if usable_guided(text, record, hint, variant, tokenizer)[0]), None)
            for record, hint, texts in zip(records, hints, samples)]


def sample_pairs(model: torch.nn.Module, tokenizer: Any, records: list[RelevanceRecord], rule_table: dict[str, str],
                 variant: str, rule_text: bool, sampling: SamplingConfig, max_pairs: int,
                 seed: int, min_step_accuracy: float = 0.0) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """pass@N sampling and pair building over `records`: DPO rows {prompt, chosen, rejected, source, pair_id} and
    sampling statistics (pass@1, pass@N, pairs by source and label, prompts skipped as all-correct, prompts that
    needed a hinted answer and how many got one, the self-chosen answers' mean step accuracy, prompts whose correct
    samples all fell below `min_step_accuracy`)."""
    prompts = [chat_prompt(tokenizer, prompt_message(r, rule_table, variant, rule_text)) for r in records]
    samples = generate_completions(model, tokenizer, prompts, sampling.num_samples, do_sample=True,
                                   temperature=sampling.temperature, top_k=sampling.top_k,
                                   max_new_tokens=sampling.max_new_tokens, batch_size=sampling.batch_size, seed=seed)
    probs = RelevanceScorer(model, tokenizer, batch_size=sampling.batch_size).score_prompts(prompts)
    correct_counts = [sum(is_correct(parse_output(t, variant), r.label) for t in texts)
                      for r, texts in zip(records, samples)]
    need_hint = [i for i, (r, n) in enumerate(zip(records, correct_counts))
                 if n == 0 and r.gold is None and variant != "label_only"]
    hinted: list[str | None] = [None] * len(records)
    if need_hint:
        found = hinted_oracles(model, tokenizer, [records[i] for i in need_hint], rule_table, variant, rule_text,
                               sampling, seed + 1)
        for i, text in zip(need_hint, found):
            hinted[i] = text
    rows, sources = [], Counter()
    chosen_labels, rejected_labels = Counter(), Counter()
    self_accuracy, below_min = [], 0
    for record, prompt, texts, p, hint, n_correct in zip(records, prompts, samples, probs, hinted, correct_counts):
        pairs = build_pairs(record, texts, p, variant, max_pairs, seed, hinted=hint,
                            min_step_accuracy=min_step_accuracy)
        below_min += bool(n_correct and pairs and pairs[0].source != "self")
        for pair in pairs:
            if pair.source == "self":
                self_accuracy.append(pair.step_accuracy)
            sources[pair.source] += 1
            chosen_labels[str(record.label)] += 1
            rejected_labels[str(parse_output(pair.rejected, variant).label)] += 1
            rows.append({"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected, "source": pair.source,
                         "pair_id": record.pair_id})
    counts = np.array(correct_counts)
    stats = {"prompts": len(records), "samples_per_prompt": sampling.num_samples,
             "pass@1": float(counts.mean() / sampling.num_samples) if len(counts) else 0.0,
             f"pass@{sampling.num_samples}": float((counts > 0).mean()) if len(counts) else 0.0,
             "prompts_all_correct": int((counts == sampling.num_samples).sum()), "pairs": len(rows),
             "pairs_self": sources["self"], "pairs_oracle": sources["oracle"], "pairs_hinted": sources["hinted"],
             "prompts_hinted": len(need_hint), "prompts_hinted_found": sum(h is not None for h in hinted),
             "pairs_by_chosen_label": dict(sorted(chosen_labels.items())),
             "pairs_by_rejected_label": dict(sorted(rejected_labels.items())),
             "chosen_step_accuracy_self": float(np.mean(self_accuracy)) if self_accuracy else None,
             "prompts_correct_below_min_step_accuracy": below_min}
    return rows, stats


def dpo_loss(nll_weight: float) -> dict[str, Any]:
    """`DPOConfig`'s loss arguments: the sigmoid DPO loss, plus the chosen answers' NLL when `nll_weight` > 0."""
    if nll_weight == 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, nll_weight]}


def train_dpo(config: DPOStageConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the DPO stage into `out_dir`; returns the metrics written to `metrics.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = config.training
    seed_everything(train_cfg.seed)
    inputs = load_stage_inputs(config.init, config.data)
    if inputs.variant == "think_first":
        raise ConfigError("DPO runs on label-first (or label-only) checkpoints; think-first is an SFT ablation only "
                          "(relevance.md §11).")
    dump_yaml(config, out / "config.yaml")
    model = inputs.model
    before = evaluate_stage(model, inputs, config.eval)

    rows, sampling_stats = sample_pairs(model, inputs.tokenizer, inputs.train_records, inputs.rule_table,
                                        inputs.variant, inputs.rule_text, config.sampling,
                                        train_cfg.max_pairs_per_prompt, train_cfg.seed,
                                        train_cfg.chosen_min_step_accuracy)
    rows, sampling_stats = agree_across_processes((rows, sampling_stats))
    with open(out / "pairs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if not rows:
        raise DataError(f"pass@{config.sampling.num_samples} sampling gave no DPO pair on {len(inputs.train_records)} "
                        "train prompts (every sample was correct, or no oracle could be written); use more prompts "
                        "(data.max_train_examples) or a higher sampling.temperature.")

    # The reference is a second, frozen copy of the init checkpoint (never the policy object itself, §7).
    ref_model = AutoModelForCausalLM.from_pretrained(str(inputs.checkpoint), dtype=torch.float32)
    initial = parameter_snapshot(model)
    args = DPOConfig(
        output_dir=str(out / "trainer"), beta=train_cfg.beta, **dpo_loss(train_cfg.nll_weight),
        learning_rate=train_cfg.learning_rate, num_train_epochs=train_cfg.num_epochs, max_steps=train_cfg.max_steps,
        per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps, warmup_steps=train_cfg.warmup_ratio,
        lr_scheduler_type=train_cfg.lr_scheduler, max_grad_norm=train_cfg.max_grad_norm,
        max_length=train_cfg.max_length, precompute_ref_log_probs=train_cfg.precompute_ref_log_probs,
        activation_checkpointing=False,
        bf16=train_cfg.bf16, logging_steps=train_cfg.logging_steps, save_strategy="no", report_to="none",
        seed=train_cfg.seed, data_seed=train_cfg.seed, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    dataset = HFDataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=inputs.tokenizer)
    result = trainer.train()
    after = evaluate_stage(model, inputs, config.eval)
    dpo_logs = [row for row in trainer.state.log_history if "loss" in row]
    metrics = {"stage": "dpo", "init": str(inputs.checkpoint), "sampling": sampling_stats,
               "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
               **throughput(trainer, result),
               "first_logged": dpo_logs[0] if dpo_logs else {}, "last_logged": dpo_logs[-1] if dpo_logs else {},
               "max_parameter_change": max_parameter_change(initial, model), "before": before, "after": after}
    save_stage(trainer, inputs, "dpo", out, metrics)
    return json.loads((out / "metrics.json").read_text())


__all__ = ["SamplingConfig", "DPOTrainingConfig", "DPOStageConfig", "PreferencePair", "build_pairs", "dpo_loss",
           "hinted_oracles", "sample_pairs", "train_dpo"]
