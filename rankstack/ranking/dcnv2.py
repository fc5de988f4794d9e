"""DCNv2 baseline (Wang et al., 2021), as hemix.md §5 defines it for rankstack.

The input is `x_0 = [flatten(V) ; x_dense]`, where V holds every non-sequence field, every target item field and,
because DCNv2 has no sequence module, each behaviour stream pooled by a masked mean per item field plus its pooled
action embedding. Cross layers `x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l` (full-rank `W_l`, or low-rank `U_l V_lᵀ`)
run beside a DNN on `x_0` (parallel structure, output `[x_L ; DNN(x_0)]`), or the DNN reads `x_L` (stacked).
Each task has its own tower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from rankstack.nn.features import FieldEmbedder, FieldLayout, mlp, pooled_streams
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.base import RankingModel, TaskTowers


@dataclass
class DCNv2Config:
    """DCNv2 hyper-parameters.

    embedding_dim: width e of every field embedding (16).
    cross_layers: number of cross layers (3).
    low_rank: rank of `W = U Vᵀ` in each cross layer; None is full rank (None).
    structure: `parallel` (output [x_L ; DNN(x_0)]) or `stacked` (output DNN(x_L)) (`parallel`).
    dnn: widths of the deep network ([512, 256, 128]).
    tower: hidden widths of each task tower ([128, 64]).
    dropout: dropout in the DNN and towers (0.0).
    esmm: train conversion ESMM-style as p(click)·p(order | click) (False).
    match_counts: add to the dense inputs, per behaviour stream and item field, log(1 + the number of events equal
        to the candidate on that field) (`FieldEmbedder.match_count_values`; our option, like HeMix's `target_match`;
        False).
    match_windows: with `match_counts`, the same counts over each stream's newest w events, for each w listed
        (e.g. [1, 3]; [1] says whether the newest event matches): the events' order, which pooling loses and
        HeMix's `recency` reads per event ([]).
    """

    embedding_dim: int = 16
    cross_layers: int = 3
    low_rank: int | None = None
    structure: Literal["parallel", "stacked"] = "parallel"
    dnn: list[int] = field(default_factory=lambda: [512, 256, 128])
    tower: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0
    esmm: bool = False
    match_counts: bool = False
    match_windows: list[int] = field(default_factory=list)


class CrossLayer(nn.Module):
    """`x_{l+1} = x_0 ⊙ (W x_l + b) + x_l`, with `W` full rank or `U Vᵀ` of rank `low_rank`."""

    def __init__(self, width: int, low_rank: int | None = None) -> None:
        super().__init__()
        self.project = (nn.Linear(width, width) if low_rank is None
                        else nn.Sequential(nn.Linear(width, low_rank, bias=False), nn.Linear(low_rank, width)))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.project(x) + x


class DCNv2(RankingModel):
    def __init__(self, layout: FieldLayout, config: DCNv2Config) -> None:
        super().__init__(layout, esmm=config.esmm)
        self.config = config
        e = config.embedding_dim
        self.embedder = FieldEmbedder(layout, e, match_counts=config.match_counts,
                                      match_windows=config.match_windows)
        n_item = self.embedder.num_item_fields
        width = (self.embedder.num_ns + n_item + len(layout.sequences) * (n_item + 1)) * e + self.embedder.num_dense
        self.cross = nn.ModuleList(CrossLayer(width, config.low_rank) for _ in range(config.cross_layers))
        self.dnn = mlp([width, *config.dnn], config.dropout)
        out = config.dnn[-1] + (width if config.structure == "parallel" else 0)
        self.towers = TaskTowers(out, self.tasks, config.tower, config.dropout)

    def inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`x_0 = [flatten(V) ; x_dense]`."""
        emb = self.embedder(batch)
        v = torch.cat([emb.ns, emb.target, *([pooled_streams(emb.streams)] if emb.streams else [])], dim=1)
        return torch.cat([v.flatten(1), emb.dense], dim=1)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.inputs(batch)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        h = torch.cat([x, self.dnn(x0)], dim=1) if self.config.structure == "parallel" else self.dnn(x)
        return self.towers(h)

    def count_params(self) -> dict[str, int]:
        return parameter_breakdown(self)
