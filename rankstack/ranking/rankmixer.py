"""RankMixer-style baseline (ByteDance 2025), as hemix.md §5 defines it for rankstack.

The history (all behaviour streams, as sequence tokens `s_t`) is pooled to one d-vector by multi-head target
attention with the target item as the query (masked, as the UniRank re-implementation does). The vector
`[x_ns ; x_dense ; x_t ; pooled]` is cut into T contiguous chunks (zero-padded to equal width), and each chunk
has its own Linear to D: T tokens. A layer is `X += TokenMix(LN X)` (RankMixer's parameter-free mixing, H = T)
then `X += PerTokenFFN(LN X)`. The tokens are mean-pooled into the per-task towers.

The blocks are HeMix's `HeteroMixerBlock` with `TokenMixing` in place of HeteroMixing, so the two models differ
only in their tokens and their mixing sub-layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankstack.errors import ConfigError
from rankstack.nn.attention import MultiHeadAttention
from rankstack.nn.features import FieldEmbedder, FieldLayout, concat_streams
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.base import RankingModel, TaskTowers
from rankstack.ranking.hemix import HeteroMixerBlock, PerTokenFFN, SequenceTokenizer, TokenMixing


@dataclass
class RankMixerConfig:
    """RankMixer-style hyper-parameters (defaults matched to HeMix's N, d, L, k).

    embedding_dim: width e of every field embedding (16).
    num_tokens: T, feature tokens (12).
    dim: D, token width (256).
    n_layers: L, blocks (3).
    ffn_mult: k, per-token FFN hidden width k·D (4).
    history_heads: heads of the target attention that pools the history (4).
    norm_position: `pre` or `post` (RankMixer's own Add&Norm) (`pre`).
    tower: hidden widths of each task tower ([128, 64]).
    esmm: train conversion ESMM-style as p(click)·p(order | click) (False).
    match_counts: add to the dense inputs, per behaviour stream and item field, log(1 + the number of events equal
        to the candidate on that field) (`FieldEmbedder.match_count_values`; our option, like HeMix's `target_match`;
        False).
    match_windows: with `match_counts`, the same counts over each stream's newest w events, for each w listed
        (e.g. [1, 3]; [1] says whether the newest event matches): the events' order, which pooling loses and
        HeMix's `recency` reads per event ([]).
    """

    embedding_dim: int = 16
    num_tokens: int = 12
    dim: int = 256
    n_layers: int = 3
    ffn_mult: int = 4
    history_heads: int = 4
    norm_position: Literal["pre", "post"] = "pre"
    tower: list[int] = field(default_factory=lambda: [128, 64])
    esmm: bool = False
    match_counts: bool = False
    match_windows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dim % self.history_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by history_heads ({self.history_heads})")


class ChunkTokenizer(nn.Module):
    """`[B, W]` → `[B, T, D]`: T contiguous chunks of ⌈W/T⌉ features (zero-padded), each with its own Linear."""

    def __init__(self, in_dim: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.chunk = -(-in_dim // num_tokens)
        self.pad = self.chunk * num_tokens - in_dim
        self.num_tokens = num_tokens
        self.weight = nn.Parameter(torch.empty(num_tokens, self.chunk, dim))
        self.bias = nn.Parameter(torch.empty(num_tokens, dim))
        bound = 1 / self.chunk ** 0.5  # nn.Linear's default
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = F.pad(x, (0, self.pad)).unflatten(1, (self.num_tokens, self.chunk))
        return torch.einsum("btc,tcd->btd", chunks, self.weight) + self.bias


class RankMixer(RankingModel):
    def __init__(self, layout: FieldLayout, config: RankMixerConfig) -> None:
        super().__init__(layout, esmm=config.esmm)
        if not layout.sequences:
            raise ConfigError("rankmixer pools a behaviour sequence, but this dataset has none; use dlrm or dcnv2.")
        self.config = config
        e, d, t = config.embedding_dim, config.dim, config.num_tokens
        self.embedder = FieldEmbedder(layout, e, match_counts=config.match_counts,
                                      match_windows=config.match_windows)
        n_item = self.embedder.num_item_fields
        self.sequence_tokens = SequenceTokenizer((n_item + 1) * e, d)
        self.history_attention = MultiHeadAttention(d, config.history_heads, query_dim=n_item * e)
        width = self.embedder.num_ns * e + self.embedder.num_dense + n_item * e + d
        self.tokenizer = ChunkTokenizer(width, t, d)
        self.blocks = nn.ModuleList(
            HeteroMixerBlock(TokenMixing(t, d), PerTokenFFN(t, d, config.ffn_mult * d), d,
                             norm_position=config.norm_position)
            for _ in range(config.n_layers)
        )
        self.towers = TaskTowers(d, self.tasks, config.tower)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedder(batch)
        target = emb.target.flatten(1)
        items, actions, mask = concat_streams(emb.streams)
        history = self.sequence_tokens(items, actions, mask)
        pooled = self.history_attention(target.unsqueeze(1), history, mask).squeeze(1)
        x = self.tokenizer(torch.cat([emb.ns.flatten(1), emb.dense, target, pooled], dim=1))
        for block in self.blocks:
            x = block(x)
        return self.towers(x.mean(dim=1))

    def count_params(self) -> dict[str, int]:
        return parameter_breakdown(self)
