"""DLRM baseline (Naumov et al., 2019), as hemix.md §5 defines it for rankstack.

The field vectors V are: every non-sequence field, every target item field, and, because DLRM has no sequence
module, each behaviour stream pooled by a masked mean per item field plus the pooled action embedding. Dense
numerics go through a bottom MLP to one more vector. The interaction is every pairwise dot product
<v_a, v_b>, a < b; the top MLP reads [flatten(V) ; dots] (the flattened part keeps first-order signal), and
each task has its own tower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rankstack.nn.features import FieldEmbedder, FieldLayout, masked_mean, mlp
from rankstack.ranking.base import RankingModel, TaskTowers


@dataclass
class DLRMConfig:
    """DLRM hyper-parameters.

    embedding_dim: width e of every field embedding (default 16).
    bottom_mlp: hidden widths of the MLP for dense numerics; its output is one more e-wide vector ([64]).
    top_mlp: widths of the MLP over [flatten(V) ; dots] ([512, 256]).
    tower: hidden widths of each task tower ([128, 64]).
    dropout: dropout in the top MLP and towers (0.0).
    esmm: train conversion ESMM-style as p(click)·p(order | click) (False).
    match_counts: add to the dense inputs, per behaviour stream and item field, log(1 + the number of events equal
        to the candidate on that field) (`FieldEmbedder.match_count_values`; our option, like HeMix's `target_match`;
        False).
    match_windows: with `match_counts`, the same counts over each stream's newest w events, for each w listed
        (e.g. [1, 3]; [1] says whether the newest event matches): the events' order, which pooling loses and
        HeMix's `recency` reads per event ([]).
    """

    embedding_dim: int = 16
    bottom_mlp: list[int] = field(default_factory=lambda: [64])
    top_mlp: list[int] = field(default_factory=lambda: [512, 256])
    tower: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0
    esmm: bool = False
    match_counts: bool = False
    match_windows: list[int] = field(default_factory=list)


class DLRM(RankingModel):
    def __init__(self, layout: FieldLayout, config: DLRMConfig) -> None:
        super().__init__(layout, esmm=config.esmm)
        e = config.embedding_dim
        self.embedder = FieldEmbedder(layout, e, match_counts=config.match_counts,
                                      match_windows=config.match_windows)
        self.bottom = (mlp([self.embedder.num_dense, *config.bottom_mlp, e]) if self.embedder.num_dense else None)
        n_item = self.embedder.num_item_fields
        num_vectors = (self.embedder.num_ns + n_item + len(layout.sequences) * (n_item + 1)
                       + (1 if self.embedder.num_dense else 0))
        num_dots = num_vectors * (num_vectors - 1) // 2
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.top = mlp([num_vectors * e + num_dots, *config.top_mlp], config.dropout)
        self.towers = TaskTowers(config.top_mlp[-1], self.tasks, config.tower, config.dropout)

    def field_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedder(batch)
        vectors = [emb.ns, emb.target]
        for items, actions, mask in emb.streams:
            vectors.append(masked_mean(items, mask, dim=1))  # [B, F_it, e]
            vectors.append(masked_mean(actions, mask, dim=1).unsqueeze(1))
        if self.bottom is not None:
            vectors.append(self.bottom(emb.dense).unsqueeze(1))
        return torch.cat(vectors, dim=1)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        v = self.field_vectors(batch)  # [B, F_tot, e]
        gram = torch.bmm(v, v.transpose(1, 2))
        dots = gram[:, self.pair_rows, self.pair_cols]
        h = self.top(torch.cat([v.flatten(1), dots], dim=1))
        return self.towers(h)

