"""Two-tower (DSSM-style) baseline (autofas.md §6): a user tower over request-level fields and an item tower over
item fields (user × item crosses cannot be used), each an MLP with an L2-normalised output; `z = ⟨u, v⟩/0.05 + b`.
Trained with click BCE + the same distillation as the students.

Serving: item vectors are precomputed, so a request costs its request-field fetches, the user tower on one row,
`N_c` vector lookups (each costed like one item-field fetch, the mean item-field cost) and `N_c` dot products.
`TwoTowerServing` is that path, used to measure latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rankstack.nn.features import FieldLayout, mlp
from rankstack.preranking.data import PrerankField
from rankstack.preranking.student import DISTILL, FieldInputs, LossWeights, PrerankModel


@dataclass
class TwoTowerConfig:
    """tower: hidden widths of each tower; output_widths: Pareto points (the output width); temperature."""

    tower: list[int] = field(default_factory=lambda: [256, 128])
    output_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    embedding_dim: int = 16
    temperature: float = 0.05


def tower_fields(fields: list[PrerankField]) -> list[PrerankField]:
    """Request-level fields and item fields; crosses need the pair and are left out."""
    return [f for f in fields if f.level == "request" or f.role == "item"]


class TwoTower(PrerankModel):
    def __init__(self, layout: FieldLayout, fields: list[PrerankField], config: TwoTowerConfig, output: int,
                 loss_weights: LossWeights = DISTILL) -> None:
        super().__init__()
        self.inputs = FieldInputs(layout, tower_fields(fields), config.embedding_dim)
        self.user_tower = mlp([self.inputs.request_width, *config.tower, output], last_activation=False)
        self.item_tower = mlp([self.inputs.candidate_width, *config.tower, output], last_activation=False)
        self.bias = nn.Parameter(torch.zeros(()))
        self.temperature = config.temperature
        self.loss_weights = loss_weights

    @property
    def fields(self) -> list[PrerankField]:
        return self.inputs.fields

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.user_tower(self.inputs.request_vectors(batch).flatten(1)), dim=-1)

    def item_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.item_tower(self.inputs.candidate_vectors(batch).flatten(2)), dim=-1)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, v = self.user_vectors(batch), self.item_vectors(batch)
        return (v * u.unsqueeze(1)).sum(-1) / self.temperature + self.bias


class TwoTowerServing(nn.Module):
    """The serving path: user tower on the request, dot products with cached item vectors."""

    def __init__(self, model: TwoTower, item_vectors: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("cache", item_vectors, persistent=False)  # [N_c, out]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.model.user_vectors(batch)
        return (u @ self.cache.T) / self.model.temperature + self.model.bias
