"""Stage 4 of the cascade: LLM relevance (TaoSR1 and successors; spec: relevance.md).

Modules, in reading order: `rules` (rule engine, gold steps, step verifier), `format` (output grammar, strict
parser, first-token label distribution), `data` (records, prompts, SFT targets), `tokenizer` (a small local
BPE), `sft` (stage 1 over TRL's SFTTrainer), `cumpt` (single-pass scorer and CumPT tiers). The DPO, GRPO, SRPO and
AGRL stages are not written yet (docs/relevance.md).

`train_relevance` is the entry point the CLI calls. Importing this package stays light: torch, transformers and
TRL load only when a stage runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankstack.errors import ConfigError

STAGES = ("sft",)
PLANNED_STAGES = ("dpo", "grpo", "srpo", "agrl")


def train_relevance(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None,
                    out_dir: str | Path = "runs/relevance") -> dict[str, Any]:
    """Train one relevance stage from a YAML config into `out_dir`; returns the stage's metrics.

    `overrides` maps dotted keys to values (`{"training.max_steps": 10}`), applied before validation.
    """
    if stage == "sft":
        from rankstack.config import load_yaml
        from rankstack.relevance.sft import SFTStageConfig, train_sft

        return train_sft(load_yaml(SFTStageConfig, config_path, overrides), out_dir)
    if stage in PLANNED_STAGES:
        raise ConfigError(f"relevance stage `{stage}` is not implemented yet; available: {', '.join(STAGES)}.")
    raise ConfigError(f"unknown relevance stage `{stage}`; choose one of {', '.join(STAGES + PLANNED_STAGES)}.")


__all__ = ["STAGES", "PLANNED_STAGES", "train_relevance"]
