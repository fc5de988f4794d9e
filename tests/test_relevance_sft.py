"""TaoSR1 stage 1, CoT SFT over TRL (relevance.md §3.1): a tiny run learns, and its checkpoint reloads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance import train_relevance  # noqa: E402
from rankstack.relevance.data import load_rule_table, load_split, sft_examples  # noqa: E402
from rankstack.relevance.format import label_token_ids  # noqa: E402
from rankstack.relevance.sft import completion_loss, load_checkpoint  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "relevance" / "sft_tiny.yaml"
# Short prompts (rule ids only) and a handful of steps keep each run to seconds on 2 CPU cores.
FAST = {"data.rule_text": False, "data.max_train_examples": 64, "data.max_eval_examples": 16,
        "training.learning_rate": 5.0e-3, "training.batch_size": 8, "training.logging_steps": 2}


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir / "relevance"


def run(world: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    settings = {**FAST, "data.world_preset": None, "data.dataset": str(world), **overrides}
    return train_relevance("sft", CONFIG, settings, out)


@pytest.fixture(scope="module")
def label_first_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sft")
    return out, run(world, out, **{"training.max_steps": 10})


def test_sft_changes_the_parameters_and_lowers_the_completion_loss(
        label_first_run: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = label_first_run
    assert metrics["steps"] == 10 and metrics["max_parameter_change"] > 1e-3
    for split in ("train", "valid"):
        assert metrics["after"][split]["completion_loss"] < metrics["before"][split]["completion_loss"] - 1.0
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert json.loads((out / "metrics.json").read_text())["after"] == metrics["after"]
    assert (out / "config.yaml").is_file()


def test_the_checkpoint_reloads_the_trained_model(world: Path, label_first_run: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = label_first_run
    assert (out / "model" / "model.safetensors").is_file()
    model, tokenizer, meta = load_checkpoint(out / "model")
    assert meta["variant"] == "label_first" and meta["label_token_ids"] == label_token_ids(tokenizer)
    assert tokenizer.padding_side == "left"
    records = load_split(world, "valid", 16)
    examples = sft_examples(records, tokenizer, load_rule_table(world), "label_first", seed=0, rule_text=False)
    assert completion_loss(model, tokenizer, examples) == pytest.approx(
        metrics["after"]["valid"]["completion_loss"], rel=1e-4)


def test_label_only_sft_learns_the_label_prior(world: Path, tmp_path: Path) -> None:
    # The whole loss is on the label (and eos). A tiny random model first learns the label marginal: the gold
    # label's probability under the 4-way first-token distribution rises on the pairs it trained on.
    metrics = run(world, tmp_path, **{"data.variant": "label_only", "data.max_train_examples": 16,
                                      "data.max_eval_examples": 16, "training.max_steps": 30,
                                      "training.learning_rate": 1.0e-2})
    before, after = metrics["before"]["train"], metrics["after"]["train"]
    assert after["label_log_loss"] < before["label_log_loss"] - 0.04, (before, after)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training.lr"):
        train_relevance("sft", CONFIG, {"training.lr": 1.0}, tmp_path)
    with pytest.raises(ConfigError, match="exactly one of `dataset`"):
        train_relevance("sft", CONFIG, {"data.dataset": "somewhere"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key `tokenizer`"):  # an SFT config given to the SRPO stage
        train_relevance("srpo", CONFIG, {}, tmp_path)
    with pytest.raises(ConfigError, match="unknown relevance stage"):
        train_relevance("ppo", CONFIG, {}, tmp_path)
