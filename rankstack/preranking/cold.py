"""COLD baseline (Wang et al., arXiv 2007.16122; autofas.md §6): a squeeze-excitation gate per field scales its
embedding, `s_f = σ(w_fᵀ e_f + b_f)`, then a ReLU MLP; trained on clicks only (no distillation). Field selection:
train on all fields, rank fields by their mean gate on validation, keep the top `n`, retrain on those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rankstack.nn.features import FieldLayout
from rankstack.preranking.data import PrerankField, PrerankSplit
from rankstack.preranking.student import FieldInputs, LossWeights, PrerankModel, RequestSplitMLP


@dataclass
class COLDConfig:
    """widths: the MLP (the paper's [1024, 512, 256, 128, 64] is CPU-scaled to [256, 128, 64] by default).
    embedding_dim: d_f. field_fractions: Pareto points, the share of fields kept (F/4, F/2, 3F/4, F)."""

    widths: list[int] = field(default_factory=lambda: [256, 128, 64])
    embedding_dim: int = 16
    field_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])


class COLD(PrerankModel):
    def __init__(self, layout: FieldLayout, fields: list[PrerankField], config: COLDConfig) -> None:
        super().__init__()
        self.inputs = FieldInputs(layout, fields, config.embedding_dim)
        n_req, n_cand = len(self.inputs.request_fields), len(self.inputs.candidate_fields)
        d = config.embedding_dim
        self.se_request = nn.Parameter(torch.zeros(n_req, d))
        self.se_request_bias = nn.Parameter(torch.zeros(n_req))
        self.se_candidate = nn.Parameter(torch.zeros(n_cand, d))
        self.se_candidate_bias = nn.Parameter(torch.zeros(n_cand))
        self.mlp = RequestSplitMLP(self.inputs.request_width, self.inputs.candidate_width, config.widths)
        self.loss_weights = LossWeights(bce=1.0, kd=0.0)

    @property
    def fields(self) -> list[PrerankField]:
        return self.inputs.fields

    def gates(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """s_req `[R, F_req]`, s_cand `[R, N_c, F_cand]` and the embeddings they scale."""
        e_req = self.inputs.request_vectors(batch)
        e_cand = self.inputs.candidate_vectors(batch)
        s_req = torch.sigmoid((e_req * self.se_request).sum(-1) + self.se_request_bias)
        s_cand = torch.sigmoid((e_cand * self.se_candidate).sum(-1) + self.se_candidate_bias)
        return s_req, s_cand, e_req, e_cand

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s_req, s_cand, e_req, e_cand = self.gates(batch)
        return self.mlp((e_req * s_req.unsqueeze(-1)).flatten(1), (e_cand * s_cand.unsqueeze(-1)).flatten(2))


@torch.no_grad()
def field_importance(model: COLD, split: PrerankSplit, batch_requests: int = 64) -> dict[str, float]:
    """Mean SE gate of every field over `split` (request fields per request, candidate fields per candidate)."""
    model.eval()
    sums_req, sums_cand, n_req, n_cand = 0.0, 0.0, 0, 0
    for batch in split.batches(batch_requests):
        s_req, s_cand, _, _ = model.gates(batch)
        sums_req = sums_req + s_req.sum(0)
        sums_cand = sums_cand + s_cand.sum((0, 1))
        n_req += s_req.shape[0]
        n_cand += s_cand.shape[0] * s_cand.shape[1]
    values = [*(sums_req / n_req).tolist(), *(sums_cand / n_cand).tolist()] if n_req else []
    names = [f.name for f in model.inputs.request_fields + model.inputs.candidate_fields]
    return dict(zip(names, values))


def select_fields(importance: dict[str, float], n: int) -> list[str]:
    """The `n` most important fields."""
    return sorted(importance, key=lambda name: -importance[name])[:max(1, n)]
