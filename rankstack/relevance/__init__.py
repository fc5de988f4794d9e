"""Stage 4 of the cascade: LLM relevance (TaoSR1 and successors; spec: relevance.md).

Modules, in reading order: `rules` (rule engine, gold steps, step verifier), `format` (output grammar, strict
parser, first-token label distribution), `data` (records, prompts, SFT targets), `tokenizer` (a small local
BPE), `sft` (stage 1 over TRL's SFTTrainer), `evaluate` (batched sampling, generation metrics), `stage` (what the
later stages share), `dpo` (stage 2: pass@N pairs + DPOTrainer), `grpo` (stage 3: RankGRPOTrainer with difficulty
sampling), `cumpt` (single-pass scorer, CumPT tiers, the serving API), `cross_encoder` (the MiniLM baseline),
`bench` (runs side by side), then TaoSR-SHE and TaoSR-AGRL: `steps` (step token spans, the generative step
RM), `srpo` (step rewards and advantages, diversified filter, curriculum), `agrl` (shaped reward, guided replay)
and `rl` (their trainer and stage driver; docs/relevance-rl.md).

`train_relevance` is the entry point the CLI calls. Importing this package stays light: torch, transformers and
TRL load only when a stage runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankstack.errors import ConfigError

STAGES = ("sft", "dpo", "grpo", "srpo", "agrl")


def train_relevance(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None,
                    out_dir: str | Path = "runs/relevance", init: str | Path | None = None) -> dict[str, Any]:
    """Train one relevance stage from a YAML config into `out_dir`; returns the stage's metrics.

    `overrides` maps dotted keys to values (`{"training.max_steps": 10}`), applied before validation. `init` is the
    run (or checkpoint) folder a stage after SFT starts from; it overrides the config's `init:`.
    """
    from rankstack.config import load_yaml

    overrides = {**(overrides or {}), **({"init": str(init)} if init is not None else {})}
    if stage == "sft":
        if init is not None:
            raise ConfigError("the SFT stage starts from `model:` in its config, not from `--init`.")
        from rankstack.relevance.sft import SFTStageConfig, train_sft

        return train_sft(load_yaml(SFTStageConfig, config_path, overrides), out_dir)
    if stage == "dpo":
        from rankstack.relevance.dpo import DPOStageConfig, train_dpo

        return train_dpo(load_yaml(DPOStageConfig, config_path, overrides), out_dir)
    if stage == "grpo":
        from rankstack.relevance.grpo import GRPOStageConfig, train_grpo

        return train_grpo(load_yaml(GRPOStageConfig, config_path, overrides), out_dir)
    if stage in ("srpo", "agrl"):
        from rankstack.relevance.rl import RLStageConfig, train_rl

        return train_rl(load_yaml(RLStageConfig, config_path, overrides), out_dir, stage)
    raise ConfigError(f"unknown relevance stage `{stage}`; choose one of {', '.join(STAGES)}.")


__all__ = ["STAGES", "train_relevance"]
