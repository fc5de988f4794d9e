"""The MiniLM cross-encoder baseline (relevance.md §8): its input, class weights, and a tiny fine-tuning run through
the shared Trainer that lowers the training loss (a tiny random BERT with MiniLM's tokenizer; no download)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

from rankstack.relevance.cross_encoder import (  # noqa: E402
    CrossEncoderConfig,
    class_weights,
    encode_pairs,
    minilm_path,
    train_cross_encoder,
)
from rankstack.relevance.data import item_line, load_split  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = minilm_path()
    folder = tmp_path_factory.mktemp("tiny-bert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def test_pairs_are_query_then_item_text(tiny_world_dir: Path, tiny_bert: Path) -> None:
    records = load_split(tiny_world_dir / "relevance", "valid", 4)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    encoded = encode_pairs(tokenizer, records, max_length=64)
    assert encoded["input_ids"].shape[1] <= 64 and encoded["label"].tolist() == [r.label for r in records]
    first = tokenizer.decode(encoded["input_ids"][0][encoded["attention_mask"][0].bool()])
    query, item = first.split(" [SEP] ")[:2]
    assert query == "[CLS] " + records[0].query.lower()
    assert item_line(records[0]).lower().startswith(item[:20])


def test_class_weights_are_inverse_frequency(tiny_world_dir: Path) -> None:
    records = load_split(tiny_world_dir / "relevance", "train")
    weights = class_weights(records)
    counts = torch.tensor([sum(r.label == k for r in records) for k in (1, 2, 3, 4)], dtype=torch.float32)
    assert weights.mean().item() == pytest.approx(1.0)
    assert torch.allclose(weights * counts, (weights * counts)[0].expand(4), rtol=1e-5)


def test_tiny_cross_encoder_learns(tiny_world_dir: Path, tiny_bert: Path, tmp_path: Path) -> None:
    config = CrossEncoderConfig(dataset=str(tiny_world_dir / "relevance"), encoder_path=str(tiny_bert),
                                max_length=64, learning_rate=3e-3, batch_size=16, epochs=4, max_train_examples=64,
                                max_eval_examples=32, eval_every_steps=2, device="cpu")
    results = train_cross_encoder(config, tmp_path)
    with open(tmp_path / "trainer" / "train_log.csv") as log:
        losses = [float(row["loss"]) for row in csv.DictReader(log) if row["loss"]]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.05, losses
    for split in ("valid", "test"):
        assert 0.0 <= results[split]["macro_f1"] <= 1.0 and "macro_f1/hard" in results["test"]
    assert (tmp_path / "results.json").is_file()
    steps = [step for step, _ in results["valid_curve"]]  # every 2 steps, each epoch end (4 steps) and the last
    assert steps == list(range(2, 17, 2)) and results["best_step"] in steps, results["valid_curve"]
    config.epochs, config.resume = 5, True  # one more epoch, continued from the run's checkpoint
    more = train_cross_encoder(config, tmp_path)
    assert more["steps"] == 20 and [step for step, _ in more["valid_curve"]] == list(range(2, 21, 2))
