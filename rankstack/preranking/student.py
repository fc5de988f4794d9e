"""The single-tower pre-ranking student and what every pre-ranker shares (autofas.md §3.1, §4.5, §12).

- `FieldInputs` embeds a request × candidate batch field by field: request-level fields once per request
  (`[R, F_req, d]`), candidate-level fields per candidate (`[R, N_c, F_cand, d]`). One table per embedding
  group (rankstack's `FieldEmbedder`); multi-valued fields are mean-pooled; raw numerics are standardised and
  scale a learned vector, so every field is `d` wide.
- `RequestSplitMLP` is the serving form of an MLP over `[x_req ; x_cand]`: layer 1 is split as
  `W_1 x = W_1^req x_req + W_1^cand x_cand`, the request part computed once per request (§12). With
  `request_split=False` it runs the plain form over broadcast rows (the same function; a test checks it).
- `MLPStudent` = `FieldInputs` over the kept fields + `RequestSplitMLP`; AutoFAS's derived student, the
  hand-designed distilled MLP and the all-features MLP are all this class.
- `PrerankModel.loss` is the retraining loss: `bce_weight·BCE(click)` on displayed rows + `kd_weight`·pointwise KD
  + `listwise_weight`·listwise KD from the frozen teacher on all rows (`rankstack.preranking.distill`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rankstack.data.schema import PAD_ID
from rankstack.nn.features import FieldEmbedder, FieldLayout
from rankstack.preranking.data import PrerankField
from rankstack.preranking.distill import bce_on_shown, listwise_kd, pointwise_kd


@dataclass(frozen=True)
class LossWeights:
    """Retraining loss weights (autofas.md §4.5: 0.5·BCE + 1.0·KD)."""

    bce: float = 0.5
    kd: float = 1.0
    listwise: float = 0.0
    temperature: float = 1.0


#: The retraining recipe of §4.5 (BCE on displayed rows + pointwise KD on all rows).
DISTILL = LossWeights()

class FieldInputs(nn.Module):
    """Per-field embeddings of `fields`, split into the request part and the candidate part."""

    def __init__(self, layout: FieldLayout, fields: list[PrerankField], dim: int) -> None:
        super().__init__()
        self.fields = list(fields)
        self.dim = dim
        groups = {f.group for f in fields if f.group}
        sub = FieldLayout(ns=(), multi_valued=(), dense=(), target=(), sequences=(),
                          tables={g: layout.tables[g] for g in sorted(groups)})
        self.embedder = FieldEmbedder(sub, dim, init_std=0.01)
        moments = dict(zip(layout.dense, layout.dense_moments))
        dense = [f for f in fields if f.kind == "dense"]
        self.dense_vectors = nn.Parameter(torch.randn(len(dense), dim) * 0.01)
        self.register_buffer("dense_moments", torch.tensor([moments.get(f.name, (0.0, 1.0)) for f in dense]
                                                           or [(0.0, 1.0)], dtype=torch.float32), persistent=False)
        self._dense_index = {f.key: i for i, f in enumerate(dense)}
        self.request_fields = [f for f in fields if f.level == "request"]
        self.candidate_fields = [f for f in fields if f.level != "request"]

    @property
    def request_width(self) -> int:
        return len(self.request_fields) * self.dim

    @property
    def candidate_width(self) -> int:
        return len(self.candidate_fields) * self.dim

    def _embed(self, f: PrerankField, values: torch.Tensor) -> torch.Tensor:
        if f.kind == "dense":
            i = self._dense_index[f.key]
            mean, std = self.dense_moments[i, 0], self.dense_moments[i, 1].clamp(min=1e-6)
            return ((values - mean) / std).unsqueeze(-1) * self.dense_vectors[i]
        table = self.embedder.tables[f.group]
        if f.kind == "multi":
            mask = (values != PAD_ID).unsqueeze(-1).to(table.weight.dtype)
            return (table(values) * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
        return table(values)

    def request_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[R, F_req, d]`, from each request's first candidate row (request fields are equal on its rows)."""
        ref = batch["shown"]
        if not self.request_fields:
            return ref.new_zeros((ref.shape[0], 0, self.dim))
        return torch.stack([self._embed(f, batch[f.key][:, 0]) for f in self.request_fields], 1)

    def candidate_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[R, N_c, F_cand, d]`."""
        ref = batch["shown"]
        if not self.candidate_fields:
            return ref.new_zeros((*ref.shape, 0, self.dim))
        return torch.stack([self._embed(f, batch[f.key]) for f in self.candidate_fields], 2)


class RequestSplitMLP(nn.Module):
    """ReLU MLP over `[x_req ; x_cand]` → one logit per candidate, layer 1 split by level."""

    def __init__(self, request_width: int, candidate_width: int, widths: list[int],
                 request_split: bool = True) -> None:
        super().__init__()
        if not widths:
            raise ValueError("an MLP student needs at least one hidden layer")
        self.request_split = request_split
        self.widths = list(widths)
        self.first_request = nn.Linear(request_width, widths[0])
        self.first_candidate = nn.Linear(candidate_width, widths[0], bias=False)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x_req: torch.Tensor, x_cand: torch.Tensor) -> torch.Tensor:
        """x_req `[R, D_req]`, x_cand `[R, N_c, D_cand]` → logits `[R, N_c]`."""
        if self.request_split:
            h = torch.relu(self.first_candidate(x_cand) + self.first_request(x_req).unsqueeze(1))
        else:
            rows = torch.cat([x_req.unsqueeze(1).expand(-1, x_cand.shape[1], -1), x_cand], -1)
            weight = torch.cat([self.first_request.weight, self.first_candidate.weight], 1)
            h = torch.relu(nn.functional.linear(rows, weight, self.first_request.bias))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.head(h).squeeze(-1)


class PrerankModel(nn.Module):
    """Base of every pre-ranker: `logits(batch) -> [R, N_c]` and the distillation loss of §4.5."""

    loss_weights: LossWeights = DISTILL

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.loss_weights
        z = self.logits(batch)
        total = w.bce * bce_on_shown(z, batch)
        if w.kd:
            total = total + w.kd * pointwise_kd(z, batch["teacher"], w.temperature)
        if w.listwise:
            total = total + w.listwise * listwise_kd(z, batch["teacher"], w.temperature)
        return total


class MLPStudent(PrerankModel):
    """A single-tower MLP over the kept fields (AutoFAS's derived student, the hand-designed MLPs)."""

    def __init__(self, layout: FieldLayout, fields: list[PrerankField], widths: list[int], dim: int = 16,
                 loss_weights: LossWeights = DISTILL, request_split: bool = True) -> None:
        super().__init__()
        self.inputs = FieldInputs(layout, fields, dim)
        self.mlp = RequestSplitMLP(self.inputs.request_width, self.inputs.candidate_width, widths, request_split)
        self.loss_weights = loss_weights

    @property
    def fields(self) -> list[PrerankField]:
        return self.inputs.fields

    @property
    def widths(self) -> list[int]:
        return self.mlp.widths

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x_req = self.inputs.request_vectors(batch).flatten(1)
        x_cand = self.inputs.candidate_vectors(batch).flatten(2)
        return self.mlp(x_req, x_cand)
