"""Toy data, loader, model and evaluator for the `rankstack.train` tests.

They stand in for `rankstack.data` loaders and the real models and follow the same protocols: the loader shards
by rank, reshuffles per epoch from its seed and resumes from `state_dict()`; the model has `loss` and `predict`,
one embedding table and a dropout layer (so that resuming must restore the RNG to be exact).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

N_USERS = 32
DENSE_DIM = 4
EMBED_DIM = 4


def make_dataset(n: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` samples of a separable click problem: label = [x·w + bias(user) > 0]; the truth is the same for
    every seed, so a model trained on one seed's data generalises to another's."""
    truth = torch.Generator().manual_seed(1234)
    user_bias = torch.linspace(-2.0, 2.0, N_USERS)[torch.randperm(N_USERS, generator=truth)]
    weights = torch.randn(DENSE_DIM, generator=truth)
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, N_USERS, (n,), generator=g)
    x = torch.randn(n, DENSE_DIM, generator=g)
    label = (x @ weights + user_bias[user] > 0).float()
    return {"sample_id": torch.arange(n), "user": user, "x": x, "label": label}


class ToyLoader:
    """An in-memory loader following the rankstack loader protocol.

    Each epoch permutes the samples with a generator seeded by ``(seed, epoch)``, drops the tail that does not
    divide by `world_size`, and gives rank r every world_size-th sample from position r, in batches of
    `batch_size` (the last one may be smaller), so every rank has the same number of batches.
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = len(data["sample_id"]) // world_size
        self.epoch = 0
        self.yielded = 0

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.yielded = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self.yielded = state["yielded"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(self.data["sample_id"]), generator=g)
        mine = perm[: self.per_rank * self.world_size][self.rank :: self.world_size]
        while self.yielded < len(self):
            index = mine[self.yielded * self.batch_size : (self.yielded + 1) * self.batch_size]
            self.yielded += 1
            yield {key: value[index] for key, value in self.data.items()}


class ToyModel(nn.Module):
    """Logistic-regression-like click model: user embedding + dense features → MLP with dropout → logit."""

    def __init__(self, dropout: float = 0.2, hidden: int = 16) -> None:
        super().__init__()
        self.user = nn.Embedding(N_USERS, EMBED_DIM)
        self.mlp = nn.Sequential(
            nn.Linear(DENSE_DIM + EMBED_DIM, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([batch["x"], self.user(batch["user"])], dim=-1)).squeeze(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(batch), batch["label"])

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"click": torch.sigmoid(self.logits(batch))}


def make_evaluate(data: dict[str, torch.Tensor]) -> Callable[[nn.Module], dict[str, float]]:
    """An evaluate function returning log loss and accuracy of the "click" head on `data`."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        probs = model.predict(data)["click"].float().clamp(1e-7, 1 - 1e-7)
        label = data["label"]
        return {
            "logloss": float(F.binary_cross_entropy(probs, label)),
            "accuracy": float(((probs > 0.5).float() == label).float().mean()),
        }

    return evaluate


def params_digest(state_dict: dict[str, Any]) -> str:
    """SHA-256 over the names and raw bytes of a state dict's tensors, for bit-exact comparisons."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
