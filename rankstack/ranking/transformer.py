"""Self-attention Transformer ranker (BST / OneTrans-style unified Transformer), as hemix.md §5 defines it.

Tokens: HeMix's dynamic-query tokenizer turns `[x_ns ; x_dense ; x_t]` into `n_g + n_r` NS tokens, followed by
every behaviour event as a sequence token `s_t` (all streams, in time order) plus a learned recency embedding.
Pre-norm blocks of masked multi-head self-attention and one FFN shared by all tokens; the readout is the mean of
the NS tokens after the last block, into the per-task towers.

Not to be confused with HeMix's `mixer="attention"` ablation, which keeps HeMix's N tokens and only swaps the
mixing sub-layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rankstack.errors import ConfigError
from rankstack.nn.attention import MultiHeadAttention
from rankstack.nn.features import FieldEmbedder, FieldLayout, concat_streams
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.base import RankingModel, TaskTowers
from rankstack.ranking.hemix import DynamicQueryTokenizer, SequenceTokenizer


@dataclass
class TransformerRankerConfig:
    """Transformer ranker hyper-parameters.

    embedding_dim: width e of every field embedding (16).
    dim: d, token width (256).
    num_ns_tokens: NS tokens from the dynamic-query tokenizer (n_g + n_r = 4).
    heads: self-attention heads (4).
    ffn_mult: k, FFN hidden width k·d (4).
    n_layers: L, blocks (3).
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
    dim: int = 256
    num_ns_tokens: int = 4
    heads: int = 4
    ffn_mult: int = 4
    n_layers: int = 3
    tower: list[int] = field(default_factory=lambda: [128, 64])
    esmm: bool = False
    match_counts: bool = False
    match_windows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


class TransformerBlock(nn.Module):
    """Pre-norm `X += MHSA(LN X, key-padding mask)`, then `X += FFN(LN X)` with one FFN for every token."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, mask)
        return x + self.ffn(self.ffn_norm(x))


class TransformerRanker(RankingModel):
    def __init__(self, layout: FieldLayout, config: TransformerRankerConfig) -> None:
        super().__init__(layout, esmm=config.esmm)
        if not layout.sequences:
            raise ConfigError("the transformer ranker attends over a behaviour sequence, but this dataset has "
                              "none; use dlrm or dcnv2.")
        self.config = config
        e, d = config.embedding_dim, config.dim
        self.embedder = FieldEmbedder(layout, e, match_counts=config.match_counts,
                                      match_windows=config.match_windows)
        n_item = self.embedder.num_item_fields
        in_dim = (self.embedder.num_ns + n_item) * e + self.embedder.num_dense
        self.tokenizer = DynamicQueryTokenizer(in_dim, config.num_ns_tokens, d)
        self.sequence_tokens = SequenceTokenizer((n_item + 1) * e, d)
        # One learned vector per slot of the concatenated streams; the last row is the newest slot, so a shorter
        # input (left-padded, newest last) uses the last rows.
        self.recency = nn.Parameter(torch.randn(sum(s.max_len for s in layout.sequences), d) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d, config.heads, config.ffn_mult * d)
                                    for _ in range(config.n_layers))
        self.towers = TaskTowers(d, self.tasks, config.tower)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedder(batch)
        ns_tokens = self.tokenizer(torch.cat([emb.ns.flatten(1), emb.dense, emb.target.flatten(1)], dim=1))
        items, actions, mask = concat_streams(emb.streams)
        recency = self.recency[self.recency.shape[0] - mask.shape[1]:]
        events = (self.sequence_tokens(items, actions, mask) + recency) * mask.unsqueeze(-1).to(recency.dtype)
        x = torch.cat([ns_tokens, events], dim=1)
        mask = torch.cat([torch.ones_like(ns_tokens[..., 0], dtype=torch.bool), mask], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.towers(x[:, : self.config.num_ns_tokens].mean(dim=1))

    def count_params(self) -> dict[str, int]:
        return parameter_breakdown(self)
