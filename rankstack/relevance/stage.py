"""What the stages after SFT share (relevance.md §3.2, §3.3, §7): the checkpoint they start from, the pairs they
read, their evaluation settings and the run folder they write.

A stage starts from a relevance checkpoint (`init`: a run folder written by an earlier stage, or its `model/`
folder) and inherits its variant, prompt settings and dataset; `data.dataset` can point elsewhere. Every stage
writes the same run folder as SFT:

    <out>/model/            model + tokenizer + relevance.json (stage, parent checkpoint, variant, rule_text, …)
    <out>/config.yaml       the resolved stage config
    <out>/train_log.jsonl   TRL's log history
    <out>/metrics.json      evaluation before and after, and what the stage measured on the way
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rankstack.errors import ConfigError
from rankstack.relevance.data import RelevanceRecord, load_rule_table, load_split
from rankstack.relevance.evaluate import evaluate_policy
from rankstack.relevance.format import label_token_ids
from rankstack.relevance.sft import CHECKPOINT_META, load_checkpoint
from rankstack.train.checkpoint import save_json


@dataclass
class StageDataConfig:
    """The pairs a stage trains and evaluates on.

    Args:
        dataset: A relevance dataset folder; None uses the one the init checkpoint was trained on.
        max_train_examples: Use N train pairs only, a fixed sample spread over the split (`load_split`; None: all).
        eval_split: The held-out split evaluated before and after the stage.
        max_eval_examples: Pairs of `eval_split` evaluated.
    """

    dataset: str | None = None
    max_train_examples: int | None = None
    eval_split: str = "valid"
    max_eval_examples: int = 256


@dataclass
class StageEvalConfig:
    """Evaluation before and after a stage.

    Args:
        generate: Also decode the full completion greedily (format failures, hallucination, step accuracy).
        max_new_tokens: Longest decoded completion.
        batch_size: Prompts per forward pass / `generate` call.
    """

    generate: bool = True
    max_new_tokens: int = 160
    batch_size: int = 16


def checkpoint_dir(init: str | Path | None) -> Path:
    """The checkpoint folder of `init` (a run folder or its `model/`), checked to be a relevance checkpoint."""
    if init is None:
        raise ConfigError("this stage starts from a trained checkpoint: pass `--init <run folder>` (or set `init:` in "
                          "the config) to the SFT (or DPO) run it continues.")
    path = Path(init)
    for candidate in (path, path / "model"):
        if (candidate / CHECKPOINT_META).is_file():
            return candidate
    raise ConfigError(f"`init` {path} holds no relevance checkpoint (no {CHECKPOINT_META} in it or in its model/ "
                      "folder); pass the output folder of `rankstack train relevance`.")


@dataclass
class StageInputs:
    """The loaded starting point of a stage."""

    checkpoint: Path
    model: torch.nn.Module
    tokenizer: Any
    meta: dict[str, Any]
    dataset_dir: Path
    rule_table: dict[str, str]
    train_records: list[RelevanceRecord]
    eval_records: list[RelevanceRecord]

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def rule_text(self) -> bool:
        return bool(self.meta["rule_text"])


def load_stage_inputs(init: str | Path | None, data: StageDataConfig) -> StageInputs:
    """Load the init checkpoint, its tokenizer and settings, and the train and eval pairs."""
    checkpoint = checkpoint_dir(init)
    model, tokenizer, meta = load_checkpoint(checkpoint)
    dataset_dir = Path(data.dataset or meta["dataset"])
    return StageInputs(checkpoint, model, tokenizer, meta, dataset_dir, load_rule_table(dataset_dir),
                       load_split(dataset_dir, "train", data.max_train_examples),
                       load_split(dataset_dir, data.eval_split, data.max_eval_examples))


def agree_across_processes(value: Any) -> Any:
    """Rank 0's `value` on every process under `accelerate launch` (sampled pairs and difficulty filters differ
    per process otherwise, and GRPO groups must not straddle processes, §7); `value` itself on one process."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def evaluate_stage(model: torch.nn.Module, inputs: StageInputs, config: StageEvalConfig) -> dict[str, Any]:
    """`evaluate_policy` on the stage's eval pairs with its variant and prompt settings."""
    return evaluate_policy(model, inputs.tokenizer, inputs.eval_records, inputs.rule_table, inputs.variant,
                           inputs.rule_text, config.generate, config.max_new_tokens, config.batch_size)


def save_stage(trainer: Any, inputs: StageInputs, stage: str, out: Path, metrics: dict[str, Any]) -> Path:
    """Write the trained model, tokenizer, relevance.json, train_log.jsonl and metrics.json; returns `model/`."""
    checkpoint = out / "model"
    trainer.save_model(str(checkpoint))
    inputs.tokenizer.save_pretrained(str(checkpoint))
    save_json({**inputs.meta, "stage": stage, "parent": str(inputs.checkpoint), "dataset": str(inputs.dataset_dir),
               "label_token_ids": label_token_ids(inputs.tokenizer)}, checkpoint / CHECKPOINT_META)
    with open(out / "train_log.jsonl", "w") as log:
        for row in trainer.state.log_history:
            log.write(json.dumps(row) + "\n")
    save_json({"checkpoint": str(checkpoint), **metrics}, out / "metrics.json")
    return checkpoint


__all__ = ["StageDataConfig", "StageEvalConfig", "StageInputs", "checkpoint_dir", "load_stage_inputs",
           "agree_across_processes",
           "evaluate_stage", "save_stage"]
