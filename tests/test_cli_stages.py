"""The stage commands of the CLI run end to end on the tiny world: retrieval tokenizer and baselines, relevance SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankstack.cli import main


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path):
    return tiny_world_dir


def test_train_and_bench_retrieval(world, tmp_path, capsys):
    data = f"data={world / 'next_poi'}"
    fast = [f"--set={key}" for key in ("lm.cpt.records_per_template=20", "lm.sft.max_examples=200",
                                        "lm.sft.training.num_epochs=1", "lm.decode.max_eval_samples=32",
                                        "sasrec.enabled=false", "semantic_ids.contrastive.max_epochs=2")]
    assert main(["train", "retrieval", "--config", "configs/retrieval/city_tiny.yaml", "--set", data,
                 "--out", str(tmp_path / "geogr"), *fast]) == 0
    report = json.loads((tmp_path / "geogr" / "sids" / "tokenizer.json").read_text())
    assert report["level_sizes"] and (tmp_path / "geogr" / "sids" / "sids.safetensors").is_file()
    metrics = json.loads((tmp_path / "geogr" / "eval" / "metrics.json").read_text())
    assert metrics["geogr"]["test"]["sid_validity"] == 1.0
    assert main(["bench", "retrieval", "--config", "configs/retrieval/city_tiny.yaml", "--set", data,
                 "--set", "sasrec.enabled=false", "--out", str(tmp_path / "baselines")]) == 0
    printed = capsys.readouterr().out
    assert "popularity" in printed and (tmp_path / "baselines" / "results.json").is_file()


def test_train_relevance_sft_and_a_config_for_the_wrong_stage(world, tmp_path, capsys):
    overrides = ["--set", "training.max_steps=3", "--set", "data.max_eval_examples=8"]
    assert main(["train", "relevance", "--stage", "sft", "--config", "configs/relevance/sft_tiny.yaml",
                 "--out", str(tmp_path / "sft"), *overrides]) == 0
    assert (tmp_path / "sft" / "metrics.json").is_file()
    capsys.readouterr()
    assert main(["train", "relevance", "--stage", "srpo", "--config", "configs/relevance/sft_tiny.yaml",
                 "--out", str(tmp_path / "srpo")]) == 2
    assert "unknown key `tokenizer`" in capsys.readouterr().err  # an SFT config given to the SRPO stage
