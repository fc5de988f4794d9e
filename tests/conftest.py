"""Fixtures shared by several test modules (pytest finds this file by name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankstack.data.dataset import Dataset
from rankstack.world import WorldConfig, generate
from tests._ranking import write_datasets


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Dataset]:
    return write_datasets(tmp_path_factory.mktemp("ranking"))


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    """The tiny synthetic world (seed 0), generated once per test session; tests read it and never modify it."""
    return generate(WorldConfig.preset("tiny"), seed=0, out=tmp_path_factory.mktemp("tiny-world") / "world")


@pytest.fixture(scope="module")
def tiny_world(tiny_world_dir: Path) -> Dataset:
    """The tiny world's ranking dataset."""
    return Dataset.open(tiny_world_dir / "ranking")


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def relevance_rl_init(tiny_world_dir: Path, tmp_path_factory) -> Path:
    """A label-first SFT run that has memorised 8 tiny-world pairs (160 steps, rule ids only in the prompt): its
    samples start with a label and are sometimes well-formed, so the RL stages (SRPO, AGRL) get mixed groups."""
    from rankstack.relevance import train_relevance

    out = tmp_path_factory.mktemp("relevance-rl-init")
    config = Path(__file__).resolve().parents[1] / "configs" / "relevance" / "sft_tiny.yaml"
    train_relevance("sft", config, {
        "data.world_preset": None, "data.dataset": str(tiny_world_dir / "relevance"), "data.rule_text": False,
        "data.max_train_examples": 8, "data.max_eval_examples": 4, "training.max_steps": 160,
        "training.learning_rate": 1.0e-2, "training.lr_scheduler": "constant", "training.logging_steps": 30}, out)
    return out
