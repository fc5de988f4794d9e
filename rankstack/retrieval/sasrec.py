"""The SASRec-style sequential baseline of the retrieval stage (geogr.md §6), trained by the shared `Trainer`.

POI-id embeddings (d = 64) plus learned positions, 2 causal self-attention blocks with 2 heads (pre-norm,
dropout 0.2), history capped at the 50 most recent POIs; the last position's state scores every catalogue POI by a
dot product with the (shared) POI embeddings; full-softmax cross-entropy on each train sample's target; Adam lr
1e-3, batch 128; early stopping on valid NDCG@10 with patience 10 (evaluated every epoch on up to
`max_eval_samples` valid samples). Test lists are the top W by score, scored by `retrieval.evaluate`.

Histories are right-aligned (left-padded); a padded key is masked for every query except itself, so no attention
row is empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankstack.retrieval.baselines import topk_indices
from rankstack.retrieval.data import NextPoiSamples, RetrievalData
from rankstack.retrieval.evaluate import evaluate_topk
from rankstack.train import EpochCursor, Trainer, TrainerConfig, load_weights, seed_everything


@dataclass
class SASRecConfig:
    """SASRec-style baseline (geogr.md §6 defaults).

    Parameters:
        enabled (`bool`, defaults to `True`): train and score it in `train_retrieval` / `bench retrieval`.
        dim, blocks, heads, max_length, dropout: the model (64, 2, 2, 50, 0.2).
        lr (`float`, defaults to `1e-3`), batch_size (`int`, defaults to `128`): Adam.
        max_epochs (`int`, defaults to `50`), patience (`int`, defaults to `10`): early stopping on valid NDCG@10.
        max_eval_samples (`int` or `None`, defaults to `2000`): valid samples scored per early-stopping check.
        width (`int`, defaults to `20`): W of the returned lists.
        device (`str`, defaults to `"auto"`), seed (`int`, defaults to `0`).
    """

    enabled: bool = True
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    max_length: int = 50
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 50
    patience: int = 10
    max_eval_samples: int | None = 2000
    width: int = 20
    device: str = "auto"
    seed: int = 0


def right_aligned(history: np.ndarray, max_length: int) -> np.ndarray:
    """The last `max_length` POIs of each left-aligned, -1-padded history row, right-aligned (left-padded with -1)."""
    length = (history >= 0).sum(axis=1)
    out = np.full((len(history), max_length), -1, dtype=np.int64)
    for row, (h, n) in enumerate(zip(history, length)):
        keep = h[:n][-max_length:]
        if len(keep):
            out[row, max_length - len(keep):] = keep
    return out


class SASRec(nn.Module):
    """Self-attentive sequential recommender over POI ids (see the module docstring)."""

    def __init__(self, n_pois: int, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.poi = nn.Embedding(n_pois + 1, config.dim, padding_idx=0)  # row p + 1 is POI p; row 0 the pad
        # std d^-1/2, not nn.Embedding's 1: the input (× √d) is then unit-scale and the output logits (state · POI)
        # start near 0. With std 1 they start at std ≈ √d = 8 (initial loss ≈ 50 on Beauty's 12 k items), and the
        # model stalled at the popularity level there (valid NDCG@10 0.002 after 2 epochs).
        nn.init.normal_(self.poi.weight, std=config.dim ** -0.5)
        with torch.no_grad():
            self.poi.weight[0].zero_()
        self.position = nn.Embedding(config.max_length, config.dim)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, dim_feedforward=config.dim,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """[B, dim] state after the right-aligned `history` [B, L] (-1 pads)."""
        batch, length = history.shape
        real = history >= 0
        x = self.poi(history + 1) * math.sqrt(self.config.dim) + self.position.weight[None, :length]
        x = self.dropout(x * real[..., None])
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=history.device)
        allowed = causal[None] & (real[:, None, :] | eye[None])
        mask = torch.zeros(batch, length, length, device=history.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.config.heads, dim=0)
        return self.norm(self.blocks(x, mask=mask))[:, -1]

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        return self.user_state(history) @ self.poi.weight[1:].T

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.scores(batch["history"]), batch["target"])

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"scores": self.scores(batch["history"])}


class SampleLoader(EpochCursor):
    """Shuffled (history, target) batches; resumable (the `TrainLoader` protocol)."""

    def __init__(self, history: np.ndarray, target: np.ndarray, batch_size: int, seed: int) -> None:
        self.history, self.target = history, target
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return math.ceil(len(self.target) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.target))
        while self.batches_yielded < len(self):
            rows = order[self.batches_yielded * self.batch_size:(self.batches_yielded + 1) * self.batch_size]
            self.batches_yielded += 1
            yield {"history": torch.from_numpy(self.history[rows]), "target": torch.from_numpy(self.target[rows])}
        self.end_epoch()


@torch.no_grad()
def sasrec_topk(model: SASRec, samples: NextPoiSamples, width: int, batch_size: int = 512) -> np.ndarray:
    """Top-`width` POIs per sample [N, W] by the model's scores."""
    model.eval()
    device = next(model.parameters()).device
    history = right_aligned(samples.history, model.config.max_length)
    out = []
    for lo in range(0, len(history), batch_size):
        scores = model.scores(torch.from_numpy(history[lo:lo + batch_size]).to(device)).float().cpu().numpy()
        out.append(topk_indices(scores, width))
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.int64)


def run_sasrec(data: RetrievalData, config: SASRecConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train the baseline on `data`'s train split in `run_dir`; valid and test metrics of its top-W lists."""
    n_pois = len(data.catalogue)
    train = data.splits["train"]
    keep = train.target >= 0
    history = right_aligned(train.history[keep], config.max_length)
    valid = data.splits["valid"]
    n_eval = len(valid) if config.max_eval_samples is None else min(len(valid), config.max_eval_samples)
    valid_head = NextPoiSamples(valid.user[:n_eval], valid.target[:n_eval], valid.history[:n_eval], None, None, None,
                                None, None)
    seed_everything(config.seed)
    model = SASRec(n_pois, config)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"ndcg@10": evaluate_topk(sasrec_topk(m, valid_head, config.width), valid_head.target)["ndcg@10"]}

    trainer = Trainer(model, SampleLoader(history, train.target[keep], config.batch_size, config.seed),
                      TrainerConfig(epochs=config.max_epochs, lr_dense=config.lr, lr_embedding=config.lr,
                                    dense_optimizer="adam", early_stopping_metric="ndcg@10",
                                    early_stopping_patience=config.patience, checkpoint_every_steps=None,
                                    log_every_steps=50, seed=config.seed, device=config.device, precision="fp32",
                                    progress_bar=False, tensorboard=False),
                      run_dir, evaluate=evaluate)
    fit = trainer.fit()
    if trainer.best_weights_path.is_file():
        model.load_state_dict(load_weights(trainer.best_weights_path))
    report: dict[str, Any] = {"epochs_run": fit["epochs_completed"], "stopped_early": fit["stopped_early"],
                              "best_step": fit["best_step"], "wall_time_s": fit["wall_time_s"]}
    for split in ("valid", "test"):
        samples = data.splits[split]
        report[split] = evaluate_topk(sasrec_topk(model, samples, config.width), samples.target, n_pois)
    return report
