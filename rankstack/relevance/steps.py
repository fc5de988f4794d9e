"""Reasoning steps of a rollout: their token spans, and the generative step reward model (relevance.md §4).

A label-first completion has six steps, s ∈ {label, Query, Item, Category, Attributes, Verdict} (`format.STEPS`).

- **Token spans** (`step_token_index`). The parser gives each step's character span; a token's characters are found
  by incremental decoding (char end of token t = len(decode(ids[:t+1]))), and the token is given to the step its
  characters overlap most. Tokens outside every step (the newlines between sections, eos, padding) get −1: they
  keep the outcome advantage only.
- **Offline verifier**: `rules.verify_steps`, ±1 per step against the gold steps (the stand-in for human step
  annotations).
- **Generative step RM** (`StepJudge`): a small causal LM asked "Is step s correct?" after the query, the item,
  the rules and the answer up to and including step s; it answers one token, `Y` or `N`, and
  q = P(Y) / (P(Y) + P(N)) from one forward pass (the same two-logit softmax as the label distribution, §2).
  r = +1 when q > `upper` (0.7), −1 when q < `lower` (0.3), else 0 ("unsure"). It is fine-tuned with TRL's
  `SFTTrainer` (completion-only loss) on verifier-labelled steps of rollouts sampled from the init (SFT/DPO)
  checkpoint on train prompts (`judge_examples`, `train_step_judge`), starting from that checkpoint's weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.metrics import auc  # noqa: E402
from rankstack.relevance.data import ANSWER, RelevanceRecord, chat_prompt, prompt_message  # noqa: E402
from rankstack.relevance.format import SECTIONS, STEPS, ParsedOutput, label_distribution, parse_output  # noqa: E402
from rankstack.relevance.rules import verify_steps  # noqa: E402
from rankstack.relevance.sft import CHECKPOINT_META, load_checkpoint  # noqa: E402
from rankstack.train.checkpoint import save_json  # noqa: E402

JUDGE_ANSWERS = ("Y", "N")
JUDGE_INSTRUCTION = "Check one step of an answer to a relevance judgement."


# ------------------------------------------------------------------------------------------------------------
# Token spans


def token_char_ends(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """The character end of each token in the decoded text: len(decode(ids[:t+1])) (special tokens skipped)."""
    ids = list(ids)
    return [len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True)) for t in range(len(ids))]


def step_token_index(tokenizer: Any, ids: Sequence[int], parsed: ParsedOutput) -> np.ndarray:
    """For each token of a completion, the index in `STEPS` of the step it belongs to, or −1 outside every step.

    `parsed` is `parse_output` of `decode(ids, skip_special_tokens=True)`; a token goes to the step whose character
    span it overlaps most (ties: the earlier step).
    """
    ends = token_char_ends(tokenizer, ids)
    index = np.full(len(ends), -1, dtype=np.int64)
    spans = [(STEPS.index(step), span) for step, span in parsed.spans.items()]
    start = 0
    for t, end in enumerate(ends):
        best, best_overlap = -1, 0
        for step_index, (a, b) in spans:
            overlap = min(end, b) - max(start, a)
            if overlap > best_overlap:
                best, best_overlap = step_index, overlap
        index[t] = best
        start = max(start, end)
    return index


# ------------------------------------------------------------------------------------------------------------
# The generative step reward model


def judge_message(record: RelevanceRecord, rule_table: dict[str, str], variant: str, rule_text: bool,
                  completion: str, parsed: ParsedOutput, step: str) -> str:
    """The judge's user turn: the pair (query, item, rules) as the policy saw it, the answer up to and including
    `step`, and the question."""
    pair = prompt_message(record, rule_table, variant, rule_text).removesuffix(ANSWER[variant]).rstrip("\n")
    prefix = completion[:parsed.spans[step][1]]
    return (f"{JUDGE_INSTRUCTION}\n{pair}\nAnswer so far:\n{prefix}\n"
            f"Is step {step} correct? Reply {JUDGE_ANSWERS[0]} or {JUDGE_ANSWERS[1]}.")


def judged_sections(parsed: ParsedOutput) -> list[str]:
    """The sections the judge can read: present in the output (a missing one has no span and scores −1)."""
    return [s for s in SECTIONS if s in parsed.spans]


def judge_examples(tokenizer: Any, records: Sequence[RelevanceRecord], completions: Sequence[Sequence[str]],
                   rule_table: dict[str, str], variant: str, rule_text: bool) -> list[dict[str, Any]]:
    """SFT examples of the judge: one per present section of each sampled completion, labelled by the verifier.

    `completions[i]` are the samples of `records[i]` (pairs without gold steps give none). Each example carries
    `prompt`, `completion` (`Y` / `N`), and `step` and `pair_id` for the agreement report.
    """
    examples = []
    for record, texts in zip(records, completions):
        if record.gold is None:
            continue
        for text in texts:
            parsed = parse_output(text, variant)
            verdicts = verify_steps(parsed, record)
            for step in judged_sections(parsed):
                message = judge_message(record, rule_table, variant, rule_text, text, parsed, step)
                examples.append({"prompt": chat_prompt(tokenizer, message),
                                 "completion": JUDGE_ANSWERS[0] if verdicts[step] > 0 else JUDGE_ANSWERS[1],
                                 "step": step, "pair_id": record.pair_id})
    return examples


def judge_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of `Y` and `N`; each must be one token."""
    ids = []
    for answer in JUDGE_ANSWERS:
        encoded = tokenizer.encode(answer, add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(f"the tokenizer splits the judge answer `{answer}` into {len(encoded)} tokens; the step "
                              "reward model needs `Y` and `N` to be single tokens (any byte-level BPE has them).")
        ids.append(encoded[0])
    return ids


@dataclass
class StepJudge:
    """The generative step RM: q = P(Y)/(P(Y)+P(N)) → +1 above `upper`, −1 below `lower`, 0 between."""

    model: torch.nn.Module
    tokenizer: Any
    upper: float = 0.7
    lower: float = 0.3
    batch_size: int = 16

    def probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """q for each judge prompt (chat template applied), one forward pass per batch."""
        ids = judge_token_ids(self.tokenizer)
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        order = np.argsort([len(e) for e in encoded], kind="stable")
        out = np.zeros(len(encoded), dtype=np.float64)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding=True,
                                           padding_side="left", return_tensors="pt")
                probs = label_distribution(self.model, ids, batch["input_ids"].to(device),
                                           batch["attention_mask"].to(device))
                out[rows] = probs[:, 0].cpu().double().numpy()
        finally:
            self.model.train(was_training)
        return out

    def rewards(self, probabilities: np.ndarray) -> np.ndarray:
        """+1 / −1 / 0 (unsure) from q."""
        q = np.asarray(probabilities)
        return np.where(q > self.upper, 1, np.where(q < self.lower, -1, 0)).astype(np.int64)

    @classmethod
    def load(cls, path: str | Path, upper: float = 0.7, lower: float = 0.3, batch_size: int = 16) -> StepJudge:
        model, tokenizer, _ = load_checkpoint(path)
        return cls(model, tokenizer, upper, lower, batch_size)


@dataclass
class StepRMConfig:
    """The generative step reward model (§4).

    Args:
        path: Load a trained judge from this folder (a `step_rm/` written by an earlier run); None trains one.
        samples_per_prompt: Rollouts sampled from the init checkpoint per train prompt to label with the verifier.
        max_prompts: Train prompts sampled from (the first N of the RL pool).
        holdout_share: Share of those prompts held out to measure the judge's agreement with the verifier.
        temperature: Sampling temperature of those rollouts.
        max_new_tokens: Longest sampled rollout.
        learning_rate, max_steps, batch_size: SFT of the judge (from the init checkpoint's weights).
        upper, lower: q > upper → +1, q < lower → −1, else unsure (0).
        balance: Down-sample the majority answer (Y or N) of the training steps to the minority's count (our
            default: the verifier calls most steps of a weak policy wrong, and an unbalanced judge learns "N").
    """

    path: str | None = None
    samples_per_prompt: int = 4
    max_prompts: int = 64
    holdout_share: float = 0.25
    temperature: float = 1.0
    max_new_tokens: int = 160
    learning_rate: float = 1e-3
    max_steps: int = 30
    batch_size: int = 16
    upper: float = 0.7
    lower: float = 0.3
    balance: bool = True


def balance_answers(examples: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Down-sample the more frequent answer to the count of the rarer one (order kept); unchanged if one is absent."""
    by_answer = {a: [i for i, e in enumerate(examples) if e["completion"] == a] for a in JUDGE_ANSWERS}
    smallest = min(len(v) for v in by_answer.values())
    if smallest == 0:
        return list(examples)
    rng = np.random.default_rng(seed)
    keep = sorted(j for v in by_answer.values() for j in rng.choice(v, size=smallest, replace=False).tolist())
    return [examples[j] for j in keep]


def judge_agreement(judge: StepJudge, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of the judge with the verifier on labelled examples: overall and per step, counting an unsure
    answer as a disagreement; also the unsure rate, the agreement on the steps the judge is sure about beside the
    majority answer's share of those steps, and the ROC AUC of q for the verifier's "correct" (threshold-free;
    0.5 is chance, None with one class)."""
    if not examples:
        return {"examples": 0}
    q = judge.probabilities([e["prompt"] for e in examples])
    rewards = judge.rewards(q)
    truth = np.array([1 if e["completion"] == JUDGE_ANSWERS[0] else -1 for e in examples])
    steps = np.array([e["step"] for e in examples])
    sure = rewards != 0

    def majority(t: np.ndarray) -> float:  # the share of the more common verifier answer
        return float(max(np.mean(t > 0), np.mean(t < 0)))

    report: dict[str, Any] = {"examples": len(examples), "agreement": float(np.mean(rewards == truth)),
                              "unsure_rate": float(np.mean(~sure)),
                              "agreement_when_sure": float(np.mean(rewards[sure] == truth[sure])) if sure.any()
                              else None,
                              "verifier_correct_share": float(np.mean(truth > 0)),
                              "balanced_accuracy": float(np.mean([np.mean(rewards[truth == t] == t)
                                                                  for t in (1, -1) if (truth == t).any()])),
                              "majority_baseline": majority(truth),
                              "majority_baseline_when_sure": majority(truth[sure]) if sure.any() else None,
                              "auc": auc(truth > 0, q) if (truth > 0).any() and (truth < 0).any() else None}
    for step in SECTIONS:
        mask = steps == step
        if mask.any():
            report[f"agreement/{step}"] = float(np.mean(rewards[mask] == truth[mask]))
    return report


def train_step_judge(init: Path, examples: Sequence[dict[str, Any]], config: StepRMConfig, out: Path,
                     seed: int = 0) -> StepJudge:
    """Fine-tune a copy of the `init` checkpoint as the judge with `SFTTrainer` and save it to `out`."""
    if not examples:
        raise ConfigError("no verifier-labelled steps to train the step reward model: the init checkpoint wrote no "
                          "section the parser could find in any sampled rollout; train the SFT stage longer, or "
                          "set srpo.step_rm.path to a trained judge, or srpo.verifier_share: 1.0.")
    model, tokenizer, meta = load_checkpoint(init)
    judge_token_ids(tokenizer)
    args = SFTConfig(
        output_dir=str(out / "trainer"), learning_rate=config.learning_rate, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, lr_scheduler_type="constant", completion_only_loss=True,
        packing=False, activation_checkpointing=False, bf16=False, logging_steps=max(config.max_steps // 5, 1),
        save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0, max_length=None,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    chosen = balance_answers(examples, seed) if config.balance else list(examples)
    dataset = HFDataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in chosen])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    # relevance.json, so that the judge's folder loads like any relevance checkpoint (`StepJudge.load`).
    save_json({**meta, "stage": "step_rm", "parent": str(init)}, out / CHECKPOINT_META)
    return StepJudge(model, tokenizer, config.upper, config.lower, config.batch_size)


__all__ = ["JUDGE_ANSWERS", "token_char_ends", "step_token_index", "judge_message", "judged_sections",
           "judge_examples", "judge_token_ids", "StepJudge", "StepRMConfig", "balance_answers", "judge_agreement", "train_step_judge"]
