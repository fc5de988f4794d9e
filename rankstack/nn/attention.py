"""Masked multi-head attention shared by the ranking models (hemix.md §3.3 and §5).

One reference implementation of scaled dot-product attention with a key-padding mask, written out in plain
tensor ops so it exports (TorchScript, `torch.export`, ONNX) and so that an all-padding key set is well defined:
a query whose keys are all padding reads nothing and returns zeros, never NaN. HeMix's extractor (per-slot query
projections), the RankMixer-style target attention and the Transformer ranker's self-attention all call it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, T, d]` → `[B, H, T, d/H]`."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`[B, H, T, d_h]` → `[B, T, H·d_h]`."""
    return x.transpose(1, 2).flatten(2)


def masked_softmax(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of `scores` where `keep` (broadcastable bool) is True: masked entries get
    weight exactly 0, and a row with nothing kept gets all zeros instead of NaN."""
    # Filling (not adding) the dtype's minimum keeps every row finite: an all-masked row becomes a uniform
    # softmax, which the multiplication by `keep` then zeroes.
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * keep.to(scores.dtype)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax weights `[B, H, Q, L]` of queries `q [B, H, Q, d_h]` over keys `k [B, H, L, d_h]`.

    mask: `[B, L]`, True on real keys (a leading dimension of 1 broadcasts over the batch). Padded keys get
    weight exactly 0; a query whose keys are all padding gets all-zero weights.
    """
    return score_weights(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), mask)


def score_weights(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax weights `[B, H, Q, L]` of scaled attention scores, with `attention_weights`' key-padding `mask`
    `[B, L]` (for callers that add terms to the scores before the softmax)."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    return masked_softmax(scores, mask[:, None, None, :])


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention output `[B, H, Q, d_h]` (see `attention_weights`; zeros for a query with no real key)."""
    return torch.matmul(attention_weights(q, k, mask), v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of `query [B, Q, query_dim]` over `keys [B, L, key_dim]` with a key-padding mask.

    Q, K, V and output projections are `dim`-wide; `bias=False` gives the `4·d²` parameters of hemix.md §4.
    Self-attention is `attn(x, x, mask)`; target attention is a single query (`Q = 1`).

    >>> attn = MultiHeadAttention(dim=8, heads=2, query_dim=6)
    >>> attn(torch.randn(3, 1, 6), torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).shape
    torch.Size([3, 1, 8])
    """

    def __init__(self, dim: int, heads: int, query_dim: int | None = None, key_dim: int | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by its {heads} heads")
        self.heads = heads
        self.query = nn.Linear(query_dim or dim, dim, bias=bias)
        self.key = nn.Linear(key_dim or dim, dim, bias=bias)
        self.value = nn.Linear(key_dim or dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = split_heads(self.query(query), self.heads)
        k = split_heads(self.key(keys), self.heads)
        v = split_heads(self.value(keys), self.heads)
        return self.out(merge_heads(masked_attention(q, k, v, mask)))
