"""HeMix: query-mixed interest extraction over two behaviour sequences + a stack of HeteroMixer blocks.

Implements `shared/specs/hemix.md` (Wang et al., AMAP 2026, arXiv 2602.09387; details from the spec's reading of
the UniRank re-implementation). The file reads in the spec's order:

    §3.2 tokens       DynamicQueryTokenizer   Q = SiLU(LN(A_j [x_ns ; x_t] + a_j)), candidate- and context-dependent
                      SequenceTokenizer       s_t = P[E(item_t) ; E(action_t)] + p, zero at padding
                      split_streams           global S_g and real-time S_r from the dataset's streams
    §3.3 extraction   MixedQueryExtractor     per branch, [Q^b ; Φ_b] attend S_b (per-slot W^Q, shared K/V/O)
    §3.4 interaction  HeteroMixing            fuse → one low-rank MLP per mix-token → group-aligned reconstruction
                      PerTokenFFN             HeteroFFN, one FFN per token
                      HeteroMixerBlock        U = X + Mix(LN X); X' = U + FFN(LN U)
    §3.5 readout      mean over tokens → per-task towers
    §11  serving      HeMix.encode_user → UserCache (once per request), HeMix.score (per candidate)

Token order is fixed, X^0 = [Z_r ; Z_g ; Q], because the blocks hold per-token parameters. Every §8 ablation is a
`HeMixConfig` switch; the RankMixer-style and Transformer baselines reuse `PerTokenFFN`, `TokenMixing`,
`HeteroMixerBlock`, `SequenceTokenizer` and `DynamicQueryTokenizer` from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rankstack.errors import ConfigError
from rankstack.nn.attention import MultiHeadAttention, merge_heads, score_weights, split_heads
from rankstack.nn.features import (
    FieldEmbedder,
    FieldLayout,
    check_match_windows,
    match_count_features,
    mlp,
    stream_item_ids,
    target_item_ids,
    target_matches,
)
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.base import RankingModel, TaskTowers
from rankstack.ranking.dcnv2 import CrossLayer

Mixer = Literal["heteromixer", "attention", "mlp", "none", "rankmixer"]
SEGMENTS = ("Zr", "Zg", "Q")  # token segments of X^0, as `fusion_groups` names them


@dataclass
class HeMixConfig:
    """HeMix hyper-parameters (hemix.md §3, §10) and ablation switches (§8).

    Sizes:
        embedding_dim: e, the width of every field embedding (16).
        dim: d, the token width everywhere (256).
        n_g, n_r: dynamic queries of the global and the real-time branch (2, 2).
        m_g, m_r: fixed queries of the global and the real-time branch (2, 2). With the defaults the
            interaction sees N = (n_r+m_r) + (n_g+m_g) + (n_g+n_r) = 12 tokens.
        extraction_heads: H_q, heads of the extraction attention; d % H_q == 0 (2).
        mix_heads: H, heads (mix-tokens) of HeteroMixing; d % H == 0 (2).
        rank: r, hidden width of each mix-token's low-rank MLP; None picks max(16, D_h/8) (16).
        ffn_mult: k, the HeteroFFN hidden width is k·d (4).
        ffn: `gelu` (§3.4's HeteroFFN), `swiglu` (§10's variant for scaling studies: a gated FFN whose hidden
            width is round(2k·d/3), so that its three matrices hold as many weights as GELU's two) or `moe` (§10's
            sparse-MoE variant, `PerTokenMoE`: each token's FFN becomes `moe_experts` GELU experts of width k·d
            behind a router that picks `moe_top_k` of them per row, so parameters grow with the experts while the
            active compute per row stays that of `moe_top_k` FFNs).
        moe_experts, moe_top_k: experts per token and experts used per row with `ffn: moe` (4, 1).
        moe_balance_weight: weight of the router's load-balancing loss added to the training loss with
            `ffn: moe` (0.01; Switch Transformer's value).
        n_layers: L, HeteroMixer blocks (3).
        realtime_len: L_r, the newest events of an undivided `history` that form the real-time sequence (20).
        tower: hidden widths of each task tower ([128, 64]).
        esmm: train conversion ESMM-style as p(click)·p(order | click) (False: independent heads).

    Ablations (§8; the defaults are full HeMix):
        use_fixed_queries: False drops Φ (m_g = m_r = 0, N = 8).
        use_dynamic_queries: False lets only the fixed queries attend; Q is still appended (N = 8).
        use_realtime: False reads all events in one branch that holds both branches' queries (N stays 12).
        drop_realtime_events: True removes the real-time events; one branch over the rest (N stays 12).
        use_global: False keeps only the real-time branch, with both branches' queries (N stays 12).
        mixer: `heteromixer` (HeteroMixing), `attention` (MHSA with H_q heads over the same N tokens), `mlp`
            (an MLP on flatten(X^0), L layers, parameters matched to the block stack), `none` (per-token FFN
            only) or `rankmixer` (parameter-free token mixing, H = N).
        shared_lowrank: one low-rank MLP shared by all mix-tokens (False).
        fusion_groups: fuse and reconstruct within groups of segments, e.g. [[Zr], [Zg], [Q]]; one MLP per
            (group, head). None is one group of all tokens.
        norm_position: `pre` (U = X + Mix(LN X)) or `post` (U = LN(X + Mix X), RankMixer's Add&Norm).
        norm: `layernorm` or `rmsnorm`.
        key_padding_mask: False reproduces the re-implementation, where padded keys score 0 and dilute the
            softmax (only to compare with its logs).
        recency: add a learned vector per event slot of each branch (the last slot is the newest event) to the
            sequence tokens before extraction (§10: "recency embedding as an option"; off by default, as in the
            re-implementation).
        target_match: add to each event's sequence token a learned vector per item field on which the event
            equals the candidate (same category, brand, item): a target-behaviour cross feature in K and V, so that
            extraction can find and count the events that match the candidate (our option, off by default; not
            in the paper or the re-implementation). Keys and values then depend on the candidate, so the serving
            cache adds the per-candidate match terms to the cached K and V (exact: the projections are linear).
        query_match: append to the dynamic-query input u one bit per request-level field that shares an embedding
            table with an item field (on the world: the search query's category against the candidate's, the
            user's district and grid cell against the candidate's): 1 where the two are equal (our option, off by
            default, like `target_match`).
        match_counts: append to u, per behaviour stream and item field, log(1 + the number of the stream's events
            equal to the candidate): the dense form of the match that DLRM, DCNv2, RankMixer and the Transformer
            take with their `match_counts`, so that HeMix can be given the same inputs as they are (our option,
            off by default; with `target_match` HeMix reads both). The serving cache keeps the streams' item ids.
        match_windows: with `match_counts`, the same counts over each stream's newest w events as well, for each w
            listed (the baselines' option of the same name; []).
        query_hidden: None builds each dynamic query with one Linear over u (§3.2); a width h builds all of them
            with one shared 2-layer MLP, `Linear(u → h) → GELU → Linear(h → n_q·d)`, then the per-query LN and
            SiLU (§10's option), so that the queries can carry crosses of the non-sequence fields.
        query_cross: the number of DCNv2 cross layers `u_{l+1} = u_0 ⊙ (W_l u_l + b_l) + u_l` (full rank) that u
            passes through before the dynamic-query projection (0). Our option, not the paper's: a diagnostic of
            whether explicit products of the non-sequence and target fields are what HeMix lacks against DCNv2
            on the world. The products mix request and candidate columns, so the serving cache then keeps the
            request-level columns of u instead of their projection.
        readout: `mean` pools the last layer's tokens into one d-vector for the towers (§3.5); `concat` gives the
            towers all N·d features (a diagnostic of the pooling, not the paper's; not with `mixer: mlp`).
    """

    embedding_dim: int = 16
    dim: int = 256
    n_g: int = 2
    n_r: int = 2
    m_g: int = 2
    m_r: int = 2
    extraction_heads: int = 2
    mix_heads: int = 2
    rank: int | None = 16
    ffn_mult: int = 4
    ffn: Literal["gelu", "swiglu", "moe"] = "gelu"
    moe_experts: int = 4
    moe_top_k: int = 1
    moe_balance_weight: float = 0.01
    n_layers: int = 3
    realtime_len: int = 20
    tower: list[int] = field(default_factory=lambda: [128, 64])
    esmm: bool = False
    use_fixed_queries: bool = True
    use_dynamic_queries: bool = True
    use_realtime: bool = True
    drop_realtime_events: bool = False
    use_global: bool = True
    mixer: Mixer = "heteromixer"
    shared_lowrank: bool = False
    fusion_groups: list[list[str]] | None = None
    norm_position: Literal["pre", "post"] = "pre"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    key_padding_mask: bool = True
    recency: bool = False
    target_match: bool = False
    query_match: bool = False
    match_counts: bool = False
    match_windows: list[int] = field(default_factory=list)
    query_hidden: int | None = None
    query_cross: int = 0
    readout: Literal["mean", "concat"] = "mean"

    def __post_init__(self) -> None:
        for name in ("extraction_heads", "mix_heads"):
            if self.dim % getattr(self, name):
                raise ValueError(f"dim ({self.dim}) must be divisible by {name} ({getattr(self, name)})")
        if not (self.use_fixed_queries or self.use_dynamic_queries):
            raise ValueError("use_fixed_queries and use_dynamic_queries are both False: no query would read the "
                             "sequences; keep at least one")
        if not self.use_global and (self.drop_realtime_events or not self.use_realtime):
            raise ValueError("use_global=False keeps only the real-time branch; it cannot be combined with "
                             "drop_realtime_events=True or use_realtime=False")
        if self.ffn == "moe" and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"moe_top_k ({self.moe_top_k}) must be between 1 and moe_experts ({self.moe_experts})")
        if self.realtime_len < 1:
            raise ValueError(f"realtime_len must be at least 1, got {self.realtime_len}")
        if self.query_cross < 0:
            raise ValueError(f"query_cross is a number of cross layers (0 for none), got {self.query_cross}")
        check_match_windows(self.match_counts, self.match_windows)
        if self.readout == "concat" and self.mixer == "mlp":
            raise ValueError("readout: concat reads the mixer's tokens, and mixer: mlp returns one vector; use "
                             "readout: mean with it")
        for group in self.fusion_groups or []:
            for name in group:
                if name not in SEGMENTS:
                    raise ValueError(f"fusion_groups names segment `{name}`; use {', '.join(SEGMENTS)}")


# §3.2 Tokens ----------------------------------------------------------------------------------------------------


class DynamicQueryTokenizer(nn.Module):
    """Dynamic queries `q_j = SiLU(LN_j(A_j u + a_j))` over `u = [x_ns ; x_dense ; x_t]`, one row per query.

    The `A_j` of all queries are stacked in one Linear. Because `A_j u = A_j^req u_req + A_j^cand u_cand`, the
    serving path computes the request-level part once per request (`request_part`) and finishes each candidate
    with `from_parts`; `forward` is the reference path. With `hidden`, `A u` becomes a shared 2-layer MLP
    `W_2 GELU(W_1 u + b_1) + b_2` (§10's option); the request part is then `W_1^req u_req`. With `cross_layers`,
    u first passes through that many DCNv2 cross layers; they multiply request and candidate columns, so the
    request part is then `u_req` itself, and `from_parts` puts u back together in column order.

    >>> tok = DynamicQueryTokenizer(in_dim=6, num_queries=3, dim=8, request_columns=[0, 1])
    >>> tok(torch.randn(5, 6)).shape
    torch.Size([5, 3, 8])
    """

    def __init__(self, in_dim: int, num_queries: int, dim: int, request_columns: Sequence[int] = (),
                 hidden: int | None = None, cross_layers: int = 0) -> None:
        super().__init__()
        self.num_queries, self.dim = num_queries, dim
        self.crosses = nn.ModuleList(CrossLayer(in_dim) for _ in range(cross_layers))
        self.proj = nn.Linear(in_dim, hidden or num_queries * dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, num_queries * dim)) if hidden else nn.Identity()
        self.norm_weight = nn.Parameter(torch.ones(num_queries, dim))  # one LayerNorm per query
        self.norm_bias = nn.Parameter(torch.zeros(num_queries, dim))
        request = sorted(set(request_columns))
        self.register_buffer("request_columns", torch.tensor(request, dtype=torch.long), persistent=False)
        self.register_buffer("candidate_columns", torch.tensor(
            [c for c in range(in_dim) if c not in set(request)], dtype=torch.long), persistent=False)
        # u's columns from [u_req ; u_cand]: the position of each column of u in that concatenation
        self.register_buffer("column_order", torch.argsort(torch.cat([self.request_columns, self.candidate_columns])),
                             persistent=False)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        pre = self.out(pre).unflatten(1, (self.num_queries, self.dim))
        return F.silu(F.layer_norm(pre, (self.dim,)) * self.norm_weight + self.norm_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u0 = u
        for cross in self.crosses:
            u = cross(u0, u)
        return self.activate(self.proj(u))

    def request_part(self, u_request: torch.Tensor) -> torch.Tensor:
        """`A^req u_req` (`W_1^req u_req` with `hidden`; `u_req` itself with cross layers) from the request-level
        columns of u, in column order."""
        if len(self.crosses):
            return u_request
        return F.linear(u_request, self.proj.weight[:, self.request_columns])

    def from_parts(self, request_part: torch.Tensor, u_candidate: torch.Tensor) -> torch.Tensor:
        """Queries `[C, n_q, d]` from a cached request part (`[C or 1, width]`) and the candidate columns."""
        if len(self.crosses):
            u = torch.cat([request_part.expand(u_candidate.shape[0], -1), u_candidate], dim=1)
            return self(u.index_select(1, self.column_order))
        return self.activate(request_part + F.linear(u_candidate, self.proj.weight[:, self.candidate_columns],
                                                     self.proj.bias))


class SequenceTokenizer(nn.Module):
    """Sequence tokens `s_t = P[E(item_t) ; E(action_t)] + p`, set to 0 at padded positions: `[B, L, d]`."""

    def __init__(self, event_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(event_dim, dim)

    def forward(self, items: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        events = torch.cat([items.flatten(2), actions], dim=-1)
        return self.proj(events) * mask.unsqueeze(-1).to(events.dtype)


@dataclass(frozen=True)
class EventSlice:
    """Positions `[start:stop]` of behaviour stream number `stream` (slice bounds; negative counts from the
    newest end, which stays right-aligned under left padding)."""

    stream: int
    start: int | None = None
    stop: int | None = None


def split_streams(layout: FieldLayout, realtime_len: int) -> tuple[tuple[EventSlice, ...], tuple[EventSlice, ...]]:
    """(global events, real-time events) of a dataset's behaviour streams (hemix.md §3.2 *Split*).

    - `realtime_seq` present: it is S_r; `longterm_seq` (and a `history`, if any) form S_g.
    - one undivided `history`: S_r is its newest `realtime_len` events and S_g the older ones; a separate
      `longterm_seq` replaces that older part as S_g.
    - only `longterm_seq`: split like a history.
    A stream no longer than `realtime_len` is all real-time, so S_g is then empty.
    """
    index = {seq.role: i for i, seq in enumerate(layout.sequences)}

    def split(role: str) -> tuple[tuple[EventSlice, ...], tuple[EventSlice, ...]]:
        i = index[role]
        if layout.sequences[i].max_len <= realtime_len:
            return (), (EventSlice(i),)
        return (EventSlice(i, None, -realtime_len),), (EventSlice(i, -realtime_len, None),)

    if "realtime_seq" in index:
        older = tuple(EventSlice(index[r]) for r in ("longterm_seq", "history") if r in index)
        return older, (EventSlice(index["realtime_seq"]),)
    if "history" in index:
        older, recent = split("history")
        return ((EventSlice(index["longterm_seq"]),) if "longterm_seq" in index else older), recent
    if "longterm_seq" in index:
        return split("longterm_seq")
    return (), ()


@dataclass(frozen=True)
class Branch:
    """One extraction branch: the events it reads, its slice `[dynamic_start:dynamic_stop]` of the dynamic
    queries Q, its number of fixed queries, and its segment name in X^0 (`Zr` or `Zg`)."""

    name: str
    segment: str
    events: tuple[EventSlice, ...]
    dynamic_start: int
    dynamic_stop: int
    num_fixed: int

    @property
    def num_dynamic(self) -> int:
        return self.dynamic_stop - self.dynamic_start


def plan_branches(config: HeMixConfig, global_events: tuple[EventSlice, ...],
                  realtime_events: tuple[EventSlice, ...]) -> list[Branch]:
    """The branches in X^0 order. A branch switch (§8) moves the dropped branch's queries to the kept one."""
    n_g, n_r = (config.n_g, config.n_r) if config.use_dynamic_queries else (0, 0)
    m_g, m_r = (config.m_g, config.m_r) if config.use_fixed_queries else (0, 0)
    if config.use_global and config.use_realtime and not config.drop_realtime_events:
        return [Branch("realtime_branch", "Zr", realtime_events, n_g, n_g + n_r, m_r),
                Branch("global_branch", "Zg", global_events, 0, n_g, m_g)]
    if not config.use_global:
        return [Branch("realtime_branch", "Zr", realtime_events, 0, n_g + n_r, m_g + m_r)]
    if config.drop_realtime_events:
        return [Branch("global_branch", "Zg", global_events, 0, n_g + n_r, m_g + m_r)]
    return [Branch("merged_branch", "Zg", global_events + realtime_events, 0, n_g + n_r, m_g + m_r)]


# §3.3 Query-mixed interest extraction -------------------------------------------------------------------------


class Match(NamedTuple):
    """Per-candidate match terms of the keys and values (`MixedQueryExtractor.read`): bits `[B, L, F_it]`, and the
    F_it match vectors after W^K and W^V, per head `[H, F_it, d/H]`."""

    bits: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def _product(a: torch.Tensor, b: torch.Tensor, shared_keys: bool) -> torch.Tensor:
    """`a [B, H, Q, x] @ b [B, H, x, y]`; with `shared_keys`, b has one row `[1, H, x, y]` that every row of a
    reads, and the rows' queries are stacked into one product instead of broadcasting b B times."""
    if not shared_keys:
        return torch.matmul(a, b)
    size, heads, num_queries = a.shape[:3]
    stacked = torch.matmul(a.transpose(0, 1).reshape(1, heads, size * num_queries, a.shape[-1]), b)
    return stacked.view(heads, size, num_queries, b.shape[-1]).transpose(0, 1)


class MixedQueryExtractor(nn.Module):
    """One branch: the mixed queries `[Q^b ; Φ_b]` attend the branch's sequence tokens.

    Each query slot j has its own `W^Q_j` (what makes the attention heterogeneous); `W^K`, `W^V`, `W^O` are
    shared; no bias, residual, FFN or norm. Padded keys are masked, and a query over an all-padding sequence
    returns 0. `forward` is the reference path; the serving path splits it into `keys_values` (per request),
    `read_fixed` (per request; per candidate when `match_terms` make K and V depend on it) and `read_dynamic`
    (per candidate).
    """

    def __init__(self, dim: int, num_dynamic: int, num_fixed: int, heads: int, key_padding_mask: bool = True
                 ) -> None:
        super().__init__()
        self.num_dynamic, self.heads, self.key_padding_mask = num_dynamic, heads, key_padding_mask
        self.fixed_queries = nn.Parameter(torch.empty(num_fixed, dim))  # Φ_b
        self.query_weight = nn.Parameter(torch.empty(num_dynamic + num_fixed, dim, dim))  # W^Q_j as [out, in]
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        if num_fixed:
            nn.init.xavier_uniform_(self.fixed_queries)
        nn.init.uniform_(self.query_weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))  # nn.Linear's default

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V `[B, H_q, L, d/H_q]` of sequence tokens `[B, L, d]`."""
        return split_heads(self.key(tokens), self.heads), split_heads(self.value(tokens), self.heads)

    def read(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
             slots: slice, shared_keys: bool = False, match: Match | None = None) -> torch.Tensor:
        """`z_j = W^O concat_heads(Σ_t α_jt v_t)` for queries `[B, Q, d]` in query slots `slots`.

        shared_keys: keys, values and mask hold one row that every query row reads (one request's cache); the
            rows' queries are then stacked into one attention call instead of broadcasting K and V B times.
        match: each row's keys and values plus its match terms, `k_t + Σ_f bits_tf W^K m_f` (same for v), read
            without forming them: `q·k_t` gains `Σ_f bits_tf (q·W^K m_f)` and the output gains
            `Σ_f (Σ_t α_t bits_tf) W^V m_f`, so the per-candidate cost is `[Q, L, F_it]`, not `[L, d]`.
        """
        q = self._project(queries, slots)
        weights = self._weights(q, keys, mask, shared_keys, match)
        attended = _product(weights, values, shared_keys)
        if match is not None:
            attended = attended + torch.matmul(torch.matmul(weights, match.bits.unsqueeze(1)), match.values)
        return self.out(merge_heads(attended))

    def _project(self, queries: torch.Tensor, slots: slice) -> torch.Tensor:
        """`W^Q_j m_j` of queries `[B, Q, d]` in query slots `slots`, split into heads `[B, H_q, Q, d/H_q]`."""
        return split_heads(torch.einsum("bjd,jed->bje", queries, self.query_weight[slots]), self.heads)

    def _weights(self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, shared_keys: bool,
                 match: Match | None) -> torch.Tensor:
        """The softmax weights `[B, H_q, Q, L]` of projected queries over the keys (see `read`)."""
        scores = _product(q, keys.transpose(-1, -2), shared_keys)
        if match is not None:
            bits = match.bits.unsqueeze(1)  # [B, 1, L, F_it]
            scores = scores + torch.matmul(torch.matmul(q, match.keys.transpose(-1, -2)), bits.transpose(-1, -2))
        return score_weights(scores / math.sqrt(q.shape[-1]), mask if self.key_padding_mask else None)

    def attention(self, dynamic_queries: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weights `[B, H_q, n_b + m_b, L]` with which `forward`'s query slots (dynamic, then fixed) read the
        tokens; hemix.md §6's diagnostics read them."""
        fixed = self.fixed_queries.expand(tokens.shape[0], -1, -1)
        keys, _ = self.keys_values(tokens)
        return self._weights(self._project(torch.cat([dynamic_queries, fixed], dim=1), slice(None)), keys, mask,
                             False, None)

    def read_dynamic(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     shared_keys: bool = False, match: Match | None = None) -> torch.Tensor:
        return self.read(queries, keys, values, mask, slice(0, self.num_dynamic), shared_keys, match)

    def read_fixed(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, rows: int | None = None,
                   shared_keys: bool = False, match: Match | None = None) -> torch.Tensor:
        """The fixed queries' outputs, one row per key row (or `rows` rows reading shared keys)."""
        fixed = self.fixed_queries.expand(rows or keys.shape[0], -1, -1)
        return self.read(fixed, keys, values, mask, slice(self.num_dynamic, None), shared_keys, match)

    def match_terms(self, bits: torch.Tensor, vectors: torch.Tensor) -> Match:
        """The `match` argument of `read` for match bits `[B, L, F_it]` and the F_it match vectors `[F_it, d]`:
        the vectors projected by W^K and W^V once, per head `[H, F_it, d/H]`."""
        return Match(bits, split_heads(self.key(vectors).unsqueeze(0), self.heads)[0],
                     split_heads(self.value(vectors).unsqueeze(0), self.heads)[0])

    def forward(self, dynamic_queries: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`Z_b [B, n_b + m_b, d]` from this branch's dynamic queries `[B, n_b, d]` and tokens `[B, L, d]`."""
        fixed = self.fixed_queries.expand(tokens.shape[0], -1, -1)
        keys, values = self.keys_values(tokens)
        return self.read(torch.cat([dynamic_queries, fixed], dim=1), keys, values, mask, slice(None))


# §3.4 HeteroMixer ---------------------------------------------------------------------------------------------


def fuse(y: torch.Tensor, heads: int) -> torch.Tensor:
    """Step 1: `[B, N, d]` → H mix-tokens `[B, H, N·c]`, mix-token h = the h-th width-c chunk of every token."""
    return y.unflatten(2, (heads, y.shape[2] // heads)).transpose(1, 2).flatten(2)


def unfuse(g: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Step 3, the exact inverse of `fuse`: chunk i of mix-token h returns to slot h of token i."""
    return g.unflatten(2, (num_tokens, g.shape[2] // num_tokens)).transpose(1, 2).flatten(2)


class LowRankHeads(nn.Module):
    """Step 2: `Ĝ_h = B_h ReLU(A_h G_h + a_h) + b_h`, one low-rank MLP per mix-token (one shared by all when
    `shared`). Xavier-uniform weights, zero biases."""

    def __init__(self, heads: int, width: int, rank: int, shared: bool = False) -> None:
        super().__init__()
        self.heads = heads
        own = 1 if shared else heads
        self.down = nn.Parameter(torch.empty(own, width, rank))
        self.down_bias = nn.Parameter(torch.zeros(own, rank))
        self.up = nn.Parameter(torch.empty(own, rank, width))
        self.up_bias = nn.Parameter(torch.zeros(own, width))
        for h in range(own):
            nn.init.xavier_uniform_(self.down[h])
            nn.init.xavier_uniform_(self.up[h])

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        down, up = self.down.expand(self.heads, -1, -1), self.up.expand(self.heads, -1, -1)
        hidden = F.relu(torch.einsum("bhd,hdr->bhr", g, down) + self.down_bias)
        return torch.einsum("bhr,hrd->bhd", hidden, up) + self.up_bias


class HeteroMixing(nn.Module):
    """HeteroMixing over `[B, N, d]`: fusion, per-mix-token low-rank interaction, group-aligned reconstruction.

    groups: token indices fused together (default one group of all tokens); each group has its own MLPs, with
        mix-token width D_h = |group|·d/H and rank r (None: max(16, D_h/8)).

    >>> mix = HeteroMixing(num_tokens=12, dim=32, heads=2, rank=4)
    >>> mix(torch.randn(3, 12, 32)).shape
    torch.Size([3, 12, 32])
    """

    def __init__(self, num_tokens: int, dim: int, heads: int, rank: int | None, shared: bool = False,
                 groups: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        groups = [list(g) for g in groups] if groups else [list(range(num_tokens))]
        order = torch.tensor([i for g in groups for i in g], dtype=torch.long)
        if sorted(order.tolist()) != list(range(num_tokens)):
            raise ConfigError(f"fusion groups {groups} must cover each of the {num_tokens} tokens exactly once")
        self.heads = heads
        self.sizes = [len(g) for g in groups]
        # One group of all tokens in order (the default) needs no gather: skipping the two index_selects halves
        # the sub-layer's forward+backward time on the CPU (benchmarks/ranking_efficiency.py).
        self.one_group = len(groups) == 1 and order.tolist() == list(range(num_tokens))
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        widths = [size * dim // heads for size in self.sizes]
        self.mlps = nn.ModuleList(
            LowRankHeads(heads, width, rank if rank is not None else max(16, width // 8), shared)
            for width in widths
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.one_group:
            return unfuse(self.mlps[0](fuse(y, self.heads)), y.shape[1])
        parts = y.index_select(1, self.order).split(self.sizes, dim=1)
        mixed = [unfuse(mlp(fuse(part, self.heads)), size) for part, mlp, size in zip(parts, self.mlps, self.sizes)]
        return torch.cat(mixed, dim=1).index_select(1, self.inverse)


def token_mixing_permutation(num_tokens: int, dim: int) -> torch.Tensor:
    """RankMixer's parameter-free token mixing (H = N) as a permutation of the N·d flattened features.

    When N divides d it is exactly RankMixer's: output token h = [chunk h of token 0 ; … ; chunk h of token N−1]
    with chunks of d/N columns. Otherwise (e.g. N = 12, d = 256) no equal chunks exist, so the token matrix
    `[N, d]` is read column by column and cut every d features: output token h holds columns ≈ [h·d/N, (h+1)·d/N)
    of every token (every token is represented whenever d ≥ N).
    """
    index = torch.arange(num_tokens * dim)
    if dim % num_tokens == 0:
        return index.view(num_tokens, num_tokens, dim // num_tokens).transpose(0, 1).reshape(-1)
    return index.view(num_tokens, dim).t().reshape(-1)


class TokenMixing(nn.Module):
    """RankMixer-style parameter-free token mixing `[B, N, d]` → `[B, N, d]` (`token_mixing_permutation`)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("permutation", token_mixing_permutation(num_tokens, dim), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.flatten(1).index_select(1, self.permutation).view_as(y)


class SelfAttentionMixing(nn.Module):
    """Ablation `mixer="attention"`: multi-head self-attention over the N tokens (4d² parameters, no bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.attention(y, y, None)


class PerTokenFFN(nn.Module):
    """HeteroFFN: token i has its own `FFN_i(y) = W2_i GELU(W1_i y + b1_i) + b2_i`, hidden width `hidden`.
    Xavier-uniform weights, zero biases.

    `gated` is §10's SwiGLU variant, `FFN_i(y) = W2_i (SiLU(W3_i y + b3_i) ⊙ (W1_i y + b1_i)) + b2_i`: the product
    of two linear maps of the token gives explicit second-order terms of its features. W1 and W3 are stored as
    one `[N, d, 2·hidden]` weight (W1 first).
    """

    def __init__(self, num_tokens: int, dim: int, hidden: int, gated: bool = False) -> None:
        super().__init__()
        self.gated = gated
        width = 2 * hidden if gated else hidden
        self.w1 = nn.Parameter(torch.empty(num_tokens, dim, width))
        self.b1 = nn.Parameter(torch.zeros(num_tokens, width))
        self.w2 = nn.Parameter(torch.empty(num_tokens, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_tokens, dim))
        for i in range(num_tokens):
            for w in self.w1[i].split(hidden, dim=-1):
                nn.init.xavier_uniform_(w)
            nn.init.xavier_uniform_(self.w2[i])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        pre = torch.einsum("bnd,ndh->bnh", y, self.w1) + self.b1
        if self.gated:
            value, gate = pre.chunk(2, dim=-1)
            hidden = value * F.silu(gate)
        else:
            hidden = F.gelu(pre)
        return torch.einsum("bnh,nhd->bnd", hidden, self.w2) + self.b2


class PerTokenMoE(nn.Module):
    """§10's sparse-MoE HeteroFFN: token i has E GELU experts `FFN_{i,e}` (each as `PerTokenFFN`'s, hidden width
    `hidden`) and a router `p_i(y) = softmax(y W_r_i)`; a row uses its top-k experts,
    `MoE_i(y) = Σ_{e ∈ top-k} p_{i,e}(y) FFN_{i,e}(y)`.

    The gates are the router's probabilities, not renormalised over the chosen experts (Switch Transformer), so the
    router gets the task's gradient at k = 1 too. Every expert is computed and the unchosen ones get gate 0 (dense
    compute, sparse combination: the graph has no data-dependent shapes, so it exports like the dense FFN);
    `inactive_flops_per_row` is what a serving kernel that skips them would save. In training, `balance_loss`
    holds the last batch's load-balancing loss `E · mean_i Σ_e f_{i,e} P_{i,e}` (f: share of rows sent to expert
    e, P: mean router probability; 1 when the load is even), which `HeMix.loss` adds.
    """

    def __init__(self, num_tokens: int, dim: int, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Parameter(torch.randn(num_tokens, dim, experts) * math.sqrt(0.1 / dim))
        self.w1 = nn.Parameter(torch.empty(num_tokens, experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_tokens, experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_tokens, experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_tokens, experts, dim))
        for w in (*self.w1.flatten(0, 1), *self.w2.flatten(0, 1)):
            nn.init.xavier_uniform_(w)
        self.balance_loss: torch.Tensor | None = None

    def route(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(router probabilities `[B, N, E]`, the 0/1 mask of each row's top-k experts `[B, N, E]`)."""
        probs = torch.softmax(torch.einsum("bnd,nde->bne", y, self.router), dim=-1)
        chosen = torch.zeros_like(probs).scatter(-1, probs.topk(self.top_k, dim=-1).indices, 1.0)
        return probs, chosen

    def load(self, chosen: torch.Tensor) -> torch.Tensor:
        """`[N, E]`: the share of each token's expert choices that go to each expert (rows sum to 1)."""
        return chosen.mean(dim=0) / self.top_k

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        probs, chosen = self.route(y)
        if self.training:
            self.balance_loss = probs.shape[-1] * (self.load(chosen) * probs.mean(dim=0)).sum(-1).mean()
        hidden = F.gelu(torch.einsum("bnd,nedh->bneh", y, self.w1) + self.b1)
        out = torch.einsum("bneh,nehd->bned", hidden, self.w2) + self.b2
        return torch.einsum("bne,bned->bnd", probs * chosen, out)

    def inactive_flops_per_row(self) -> int:
        """Forward FLOPs per row spent on the experts a row does not use (2 per multiply-add of W1 and W2)."""
        tokens, experts, dim, hidden = self.w1.shape
        return 4 * tokens * (experts - self.top_k) * dim * hidden


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class HeteroMixerBlock(nn.Module):
    """A token-mixer block with any mixing sub-layer (None: FFN only).

    pre-norm:  U = X + Mix(LN X);  X' = U + FFN(LN U)
    post-norm: U = LN(X + Mix X);  X' = LN(U + FFN U)   (RankMixer's Add&Norm)
    """

    def __init__(self, mix: nn.Module | None, ffn: nn.Module, dim: int, norm: str = "layernorm",
                 norm_position: str = "pre") -> None:
        super().__init__()
        self.pre_norm = norm_position == "pre"
        self.mix = mix
        self.mix_norm = make_norm(norm, dim) if mix is not None else None
        self.ffn = ffn
        self.ffn_norm = make_norm(norm, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residuals(x)[-1]

    def ffn_input(self, u: torch.Tensor) -> torch.Tensor:
        """What the FFN branch reads of U: LN U pre-norm, U itself post-norm."""
        return self.ffn_norm(u) if self.pre_norm else u

    def residuals(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the mixing branch's output, U, the FFN branch's output, X'); the mixing output is None without one."""
        mix = None
        if self.pre_norm:
            if self.mix is not None:
                mix = self.mix(self.mix_norm(x))
                x = x + mix
            ffn = self.ffn(self.ffn_input(x))
            return mix, x, ffn, x + ffn
        if self.mix is not None:
            mix = self.mix(x)
            x = self.mix_norm(x + mix)
        ffn = self.ffn(self.ffn_input(x))
        return mix, x, ffn, self.ffn_norm(x + ffn)


class FlatMLPMixer(nn.Module):
    """Ablation `mixer="mlp"`: `n_layers` hidden layers of width w on flatten(X^0), then a Linear to d; w is
    solved so the parameter count matches `target_params` (the block stack it replaces)."""

    def __init__(self, in_dim: int, dim: int, n_layers: int, target_params: int) -> None:
        super().__init__()
        # params(w) = (L-1)·w² + (in + L + d)·w + d
        a, b, c = n_layers - 1, in_dim + n_layers + dim, dim - target_params
        width = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
        width = max(1, round(width))
        self.net = mlp([in_dim, *[width] * n_layers, dim], activation=nn.GELU, last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


# §11 Serving ----------------------------------------------------------------------------------------------------


@dataclass
class UserCache:
    """What `HeMix.encode_user` computes once per request (R requests; usually R = 1).

    query_request_part: `A^req x_req` of the dynamic-query tokenizer `[R, (n_g+n_r)·d]` (with `query_cross`, the
        request-level columns of u themselves).
    keys, values: per branch, the sequence K and V `[R, H_q, L_b, d/H_q]` (the costly part, 2·L_s·d²).
    masks: per branch `[R, L_b]`, True on events.
    fixed_outputs: per branch, the fixed queries' outputs `[R, m_b, d]` (candidate-independent; empty with
        `target_match`, where they depend on the candidate).
    event_ids: with `target_match`, per branch the events' item-field ids `[R, L_b, F_it]`; else empty.
    """

    query_request_part: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    masks: list[torch.Tensor]
    fixed_outputs: list[torch.Tensor]
    event_ids: list[torch.Tensor] = field(default_factory=list)
    query_ids: torch.Tensor | None = None  # with `query_match`: the matched request fields' ids `[R, P]`
    stream_ids: list[torch.Tensor] = field(default_factory=list)  # with `match_counts`: per stream `[R, L, F_it]`

    @property
    def num_requests(self) -> int:
        return self.query_request_part.shape[0]

    def select(self, rows: torch.Tensor) -> UserCache:
        """The cache rows of each candidate (`rows [C]` indexes requests)."""
        def take(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.index_select(0, rows) for t in tensors]
        return UserCache(self.query_request_part.index_select(0, rows), take(self.keys), take(self.values),
                         take(self.masks), take(self.fixed_outputs), take(self.event_ids),
                         None if self.query_ids is None else self.query_ids.index_select(0, rows),
                         take(self.stream_ids))


# The model ------------------------------------------------------------------------------------------------------


def _norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of ‖a_row‖ / ‖b_row‖ (each row's values flattened)."""
    return float((a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())


PARAMETER_GROUPS = (
    ("fixed_queries", r"extractors\.\w+\.fixed_queries$"),
    ("extraction", r"extractors\."),
    ("tokenizer", r"tokenizer\."),
    ("sequence_projection", r"sequence_tokens\.|recency\.|target_match$"),
    ("mixing", r"blocks\.\d+\.mix\.|mlp_mixer\."),
    ("ffn", r"blocks\.\d+\.ffn\."),
    ("block_norms", r"blocks\.\d+\.(mix|ffn)_norm\."),
    ("towers", r"towers\."),
)


class HeMix(RankingModel):
    """HeMix ranker: `logits(batch) -> [B, T]` (reference path), `encode_user` + `score` (serving path)."""

    def __init__(self, layout: FieldLayout, config: HeMixConfig) -> None:
        super().__init__(layout, esmm=config.esmm)
        self.config = config
        e, d = config.embedding_dim, config.dim
        self.embedder = FieldEmbedder(layout, e)
        # (request field, item field index) pairs that share an embedding table, read by `query_match`
        items = {group: i for i, (_, group) in enumerate(layout.target)}
        self.query_pairs = [(key, items[group]) for key, group in layout.ns
                            if config.query_match and group in items and layout.level_of(key) == "request"]
        if config.query_match and not self.query_pairs:
            raise ConfigError("query_match: no request-level field of this dataset shares an embedding table with an "
                              "item field; set query_match: false.")
        n_queries = config.n_g + config.n_r
        self.tokenizer = DynamicQueryTokenizer(self._query_input_width(), n_queries, d, self._request_columns(),
                                               config.query_hidden, config.query_cross)
        self.sequence_tokens = SequenceTokenizer((self.embedder.num_item_fields + 1) * e, d)
        global_events, realtime_events = split_streams(layout, config.realtime_len)
        if not config.use_global and not realtime_events or config.drop_realtime_events and not global_events:
            raise ConfigError("this HeMix ablation leaves no behaviour events to read on this dataset "
                              f"(streams: {[s.role for s in layout.sequences]}); pick another switch.")
        self.branches = plan_branches(config, global_events, realtime_events)
        self.realtime_events = realtime_events
        self.used_streams = sorted({ev.stream for b in self.branches for ev in b.events})
        self.recency = nn.ParameterDict({
            b.name: nn.Parameter(torch.randn(sum(map(self._slice_length, b.events)), d) * 0.02) for b in self.branches
            if config.recency and b.events
        })
        self.target_match = (nn.Parameter(torch.randn(self.embedder.num_item_fields, d) * 0.02)
                             if config.target_match else None)
        self.extractors = nn.ModuleDict({
            b.name: MixedQueryExtractor(d, b.num_dynamic, b.num_fixed, config.extraction_heads,
                                        config.key_padding_mask)
            for b in self.branches
        })
        self.segments = {b.segment: b.num_dynamic + b.num_fixed for b in self.branches} | {"Q": n_queries}
        self.num_tokens = sum(self.segments.values())
        if config.mixer == "mlp":
            stack_params = sum(p.numel() for p in self._blocks(replace(config, mixer="heteromixer")).parameters())
            self.mlp_mixer = FlatMLPMixer(self.num_tokens * d, d, config.n_layers, stack_params)
            self.blocks = nn.ModuleList()
        else:
            self.mlp_mixer = None
            self.blocks = self._blocks(config)
        self.towers = TaskTowers(d * (self.num_tokens if config.readout == "concat" else 1), self.tasks, config.tower)

    # -- construction helpers --

    def _slice_length(self, ev: EventSlice) -> int:
        return len(range(self.layout.sequences[ev.stream].max_len)[ev.start:ev.stop])

    def _query_input_fields(self) -> list[tuple[str, int]]:
        """(batch key, width) of each block of u = [x_ns ; x_dense ; x_t], in column order."""
        e, layout = self.config.embedding_dim, self.layout
        return ([(key, e) for key, _ in layout.ns] + [(key, e) for key, _ in layout.multi_valued]
                + [(key, 1) for key in layout.dense] + [(key, e) for key, _ in layout.target]
                + ([("query_match", len(self.query_pairs))] if self.query_pairs else [])
                + ([("match_counts", len(layout.sequences) * self.embedder.num_item_fields
                     * (1 + len(self.config.match_windows)))]
                   if self.config.match_counts else []))

    def _query_input_width(self) -> int:
        return sum(width for _, width in self._query_input_fields())

    def _request_columns(self) -> list[int]:
        columns, start = [], 0
        target = {key for key, _ in self.layout.target}
        for key, width in self._query_input_fields():
            if key not in target and self.layout.level_of(key) == "request":
                columns.extend(range(start, start + width))
            start += width
        return columns

    def _fusion_groups(self) -> list[list[int]] | None:
        if self.config.fusion_groups is None:
            return None
        first, start = {}, 0
        for name in SEGMENTS:
            if name in self.segments:
                first[name] = range(start, start + self.segments[name])
                start += self.segments[name]
        groups = [[i for name in group if name in first for i in first[name]] for group in self.config.fusion_groups]
        return [g for g in groups if g]

    def _mixing(self, config: HeMixConfig) -> nn.Module | None:
        n, d = self.num_tokens, config.dim
        if config.mixer == "heteromixer":
            return HeteroMixing(n, d, config.mix_heads, config.rank, config.shared_lowrank, self._fusion_groups())
        if config.mixer == "attention":
            return SelfAttentionMixing(d, config.extraction_heads)
        if config.mixer == "rankmixer":
            return TokenMixing(n, d)
        return None

    def _blocks(self, config: HeMixConfig) -> nn.ModuleList:
        return nn.ModuleList(
            HeteroMixerBlock(self._mixing(config), self._ffn(config), config.dim, config.norm, config.norm_position)
            for _ in range(config.n_layers)
        )

    def _ffn(self, config: HeMixConfig) -> nn.Module:
        hidden = config.ffn_mult * config.dim
        if config.ffn == "moe":
            return PerTokenMoE(self.num_tokens, config.dim, hidden, config.moe_experts, config.moe_top_k)
        if config.ffn == "swiglu":
            return PerTokenFFN(self.num_tokens, config.dim, round(2 * hidden / 3), gated=True)
        return PerTokenFFN(self.num_tokens, config.dim, hidden)

    # -- shared pieces of both paths --

    def _stream_tokens(self, streams: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                       ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {i: (self.sequence_tokens(*streams[i]), streams[i][2]) for i in self.used_streams}

    def _branch_ids(self, ids: list[torch.Tensor], branch: Branch, like: torch.Tensor) -> torch.Tensor:
        """A branch's event item-field ids `[B, L_b, F_it]`, sliced and joined as `_branch_events` does its tokens
        (a branch without events: one padded event; `like` gives B and the device)."""
        if not branch.events:
            return torch.zeros((like.shape[0], 1, self.embedder.num_item_fields), dtype=torch.long, device=like.device)
        return torch.cat([ids[ev.stream][:, ev.start:ev.stop] for ev in branch.events], dim=1)

    def _query_matches(self, query_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """`[B, P]`: 1 where a `query_pairs` request field equals its item field of the candidate."""
        items = [i for _, i in self.query_pairs]
        return target_matches(query_ids.unsqueeze(1), target_ids[:, items])[:, 0]

    def _query_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([batch[key] for key, _ in self.query_pairs], dim=-1)

    def _match_terms(self, event_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """`[B, L, d]`: the sum of the `target_match` vectors of the fields on which each event equals the
        candidate (0 on padding)."""
        assert self.target_match is not None
        return target_matches(event_ids, target_ids) @ self.target_match

    def _branch_events(self, tokens: dict[int, tuple[torch.Tensor, torch.Tensor]], branch: Branch,
                       like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A branch's sequence tokens `[B, L_b, d]` and mask; a branch without events reads one padded token."""
        if not branch.events:
            return (like.new_zeros((like.shape[0], 1, self.config.dim)),
                    torch.zeros((like.shape[0], 1), dtype=torch.bool, device=like.device))
        parts = [(tokens[ev.stream][0][:, ev.start:ev.stop], tokens[ev.stream][1][:, ev.start:ev.stop])
                 for ev in branch.events]
        if branch.name in self.recency:
            parts = [(events + recency * mask.unsqueeze(-1).to(recency.dtype), mask)
                     for (events, mask), recency in zip(parts, self._recency_slots(branch, parts))]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _recency_slots(self, branch: Branch, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Each part's rows of the branch's recency table, counted from the part's newest end, so that a stream
        padded to another width than its `max_len` keeps its events' slots (extra left slots are padding: zeros)."""
        table, rows, end = self.recency[branch.name], [], 0
        for ev, (events, _) in zip(branch.events, parts):
            length = self._slice_length(ev)
            end += length
            width = events.shape[1]
            rows.append(F.pad(table[end - min(width, length):end], (0, 0, max(width - length, 0), 0)))
        return rows

    def interact(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer stack over X^0 `[B, N, d]` and the readout: mean-pooled `[B, d]`, or `[B, N·d]` with `concat`."""
        if self.mlp_mixer is not None:
            return self.mlp_mixer(x)
        for block in self.blocks:
            x = block(x)
        return x.flatten(1) if self.config.readout == "concat" else x.mean(dim=1)

    # -- reference path --

    def _extraction_inputs(self, batch: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """u = [x_ns ; x_dense ; x_t (; match features)], the dynamic queries Q and each used stream's tokens
        (with the `target_match` terms) and mask."""
        emb = self.embedder(batch)
        parts = [emb.ns.flatten(1), emb.dense, emb.target.flatten(1)]
        target = target_item_ids(self.layout, batch)  # the ids the match options compare (a stack of F_it columns)
        if self.query_pairs:
            parts.append(self._query_matches(self._query_ids(batch), target))
        if self.config.match_counts:
            parts.append(match_count_features(stream_item_ids(self.layout, batch), target, self.config.match_windows))
        u = torch.cat(parts, dim=1)
        stream_tokens = self._stream_tokens(emb.streams)
        if self.target_match is not None:
            ids = stream_item_ids(self.layout, batch)
            stream_tokens = {i: (tokens + self._match_terms(ids[i], target), mask)
                             for i, (tokens, mask) in stream_tokens.items()}
        return u, self.tokenizer(u), stream_tokens

    def tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """X^0 = [Z_r ; Z_g ; Q] `[B, N, d]`."""
        u, queries, stream_tokens = self._extraction_inputs(batch)
        z = []
        for branch, extractor in zip(self.branches, self.extractors.values()):
            events, mask = self._branch_events(stream_tokens, branch, u)
            z.append(extractor(queries[:, branch.dynamic_start:branch.dynamic_stop], events, mask))
        return torch.cat([*z, queries], dim=1)

    @torch.no_grad()
    def diagnostics(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """hemix.md §6's diagnostics on one batch, as `{name: value}`:

        - `<branch>_slot<j>_entropy`: the attention entropy (nats) of query slot j (dynamic slots first, then
          fixed), averaged over heads and over the rows with at least one real event; `<branch>_dynamic_entropy`
          and `<branch>_fixed_entropy` average the two kinds of slot, and `<branch>_uniform_entropy` is the
          reference of equal weights on every real event (the mean of log n over the same rows);
        - `<branch>_realtime_mass`: the share of the branch's attention on the real-time events S_r (the newest
          `realtime_len` of a single history): 1 for the real-time branch and 0 for the global one by
          construction, informative when a branch reads both (`use_realtime: false`);
        - `padding_mass`: the largest attention weight sum on padded events of any query (0 with the key-padding
          mask; the re-impl's `key_padding_mask: false` gives it weight);
        - `layer<l>_mix_ratio` ‖Mix‖/‖X‖ and `layer<l>_ffn_ratio` ‖FFN‖/‖U‖ of block l (per row over its N·d
          values, averaged over the rows);
        - with `ffn: moe`, the share of a token's expert choices that go to its busiest expert, times the number
          of experts (1: even load; E/k: every row picks the same k experts), averaged over the tokens
          (`layer<l>_moe_load`) and the largest of any token (`layer<l>_moe_max_load`).
        """
        u, queries, stream_tokens = self._extraction_inputs(batch)
        report: dict[str, float] = {}
        padding, z = 0.0, []
        for branch, extractor in zip(self.branches, self.extractors.values()):
            events, mask = self._branch_events(stream_tokens, branch, u)
            dynamic = queries[:, branch.dynamic_start:branch.dynamic_stop]
            z.append(extractor(dynamic, events, mask))
            weights = extractor.attention(dynamic, events, mask)  # [B, H, n_b + m_b, L]
            padding = max(padding, float(weights.masked_fill(mask[:, None, None, :], 0).sum(-1).max()))
            rows = mask.any(dim=1)
            if not rows.any():
                continue
            weights = weights[rows]
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 1))  # per query slot
            report[f"{branch.name}_uniform_entropy"] = float(mask[rows].sum(1).double().log().mean())
            report |= {f"{branch.name}_slot{j}_entropy": float(h) for j, h in enumerate(entropy)}
            kinds = {"dynamic": entropy[:branch.num_dynamic], "fixed": entropy[branch.num_dynamic:]}
            report |= {f"{branch.name}_{kind}_entropy": float(h.mean()) for kind, h in kinds.items() if len(h)}
            recent = self._realtime_keys(stream_tokens, branch).to(weights.device)
            report[f"{branch.name}_realtime_mass"] = float(weights[..., recent].sum(-1).mean())
        report["padding_mass"] = padding
        if self.mlp_mixer is None:
            x = torch.cat([*z, queries], dim=1)
            for layer, block in enumerate(self.blocks):
                mix, residual, ffn, out = block.residuals(x)
                if mix is not None:
                    report[f"layer{layer}_mix_ratio"] = _norm_ratio(mix, x)
                report[f"layer{layer}_ffn_ratio"] = _norm_ratio(ffn, residual)
                if isinstance(block.ffn, PerTokenMoE):
                    _, chosen = block.ffn.route(block.ffn_input(residual))
                    busiest = block.ffn.load(chosen).max(dim=-1).values * chosen.shape[-1]
                    report[f"layer{layer}_moe_load"] = float(busiest.mean())
                    report[f"layer{layer}_moe_max_load"] = float(busiest.max())
                x = out
        return report

    def _realtime_keys(self, stream_tokens: dict[int, tuple[torch.Tensor, torch.Tensor]], branch: Branch
                       ) -> torch.Tensor:
        """`[L_b]` bool: which of the branch's events (as `_branch_events` joins them) are real-time events."""
        if not branch.events:
            return torch.zeros(1, dtype=torch.bool)
        return torch.cat([torch.full((stream_tokens[ev.stream][1][:, ev.start:ev.stop].shape[1],),
                                     ev in self.realtime_events, dtype=torch.bool) for ev in branch.events])

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.towers(self.interact(self.tokens(batch)))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss; with `ffn: moe` plus `moe_balance_weight` × the routers' load-balancing losses."""
        loss = super().loss(batch)
        if self.config.ffn == "moe" and self.training:
            loss = loss + self.config.moe_balance_weight * sum(block.ffn.balance_loss for block in self.blocks)
        return loss

    # -- serving path (§11) --

    def encode_user(self, request: dict[str, torch.Tensor]) -> UserCache:
        """Everything that does not depend on the candidate, for the requests in `request` (one row each; only
        request-level fields and the behaviour streams are read)."""
        embedder = self.embedder
        u_request = torch.cat([embedder.ns_vectors(request, "request").flatten(1),
                               embedder.dense_values(request, "request")], dim=1)
        stream_tokens = self._stream_tokens(embedder.stream_vectors(request))
        ids = stream_item_ids(self.layout, request) if self.target_match is not None else []
        keys, values, masks, fixed, event_ids = [], [], [], [], []
        for branch, extractor in zip(self.branches, self.extractors.values()):
            events, mask = self._branch_events(stream_tokens, branch, u_request)
            k, v = extractor.keys_values(events)
            keys.append(k)
            values.append(v)
            masks.append(mask)
            if self.target_match is None:
                fixed.append(extractor.read_fixed(k, v, mask))
            else:
                event_ids.append(self._branch_ids(ids, branch, u_request))
        return UserCache(self.tokenizer.request_part(u_request), keys, values, masks, fixed, event_ids,
                         self._query_ids(request) if self.query_pairs else None,
                         stream_item_ids(self.layout, request) if self.config.match_counts else [])

    def score_logits(self, cache: UserCache, candidates: dict[str, torch.Tensor],
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[C, T]` of candidates (candidate-level fields and the target item) given a `UserCache`.

        rows: the cache row (request) of each candidate; None broadcasts a one-request cache to all of them.
        """
        if rows is None and cache.num_requests != 1:
            raise ValueError(f"the cache holds {cache.num_requests} requests; pass `rows` to say which request "
                             "each candidate belongs to")
        if rows is not None:
            cache = cache.select(rows)
        embedder = self.embedder
        parts = [embedder.ns_vectors(candidates, "candidate").flatten(1), embedder.dense_values(candidates, "candidate"),
                 embedder.target_vectors(candidates).flatten(1)]
        target = target_item_ids(self.layout, candidates)
        if self.query_pairs:
            assert cache.query_ids is not None
            parts.append(self._query_matches(cache.query_ids.expand(target.shape[0], -1), target))
        if self.config.match_counts:
            parts.append(match_count_features(cache.stream_ids, target, self.config.match_windows))
        u_candidate = torch.cat(parts, dim=1)
        size = u_candidate.shape[0]
        queries = self.tokenizer.from_parts(cache.query_request_part, u_candidate)
        z = []
        for i, (branch, extractor) in enumerate(zip(self.branches, self.extractors.values())):
            keys, values, mask, shared = cache.keys[i], cache.values[i], cache.masks[i], rows is None
            match = None
            if self.target_match is not None:
                # K and V of the events as this candidate sees them are the cached ones plus the match terms;
                # `read` adds their effect on the scores and outputs without forming per-candidate K and V.
                match = extractor.match_terms(target_matches(cache.event_ids[i], target), self.target_match)
                fixed = extractor.read_fixed(keys, values, mask, size, shared, match)
            else:
                fixed = cache.fixed_outputs[i].expand(size, -1, -1)
            if branch.num_dynamic:
                dynamic = extractor.read_dynamic(queries[:, branch.dynamic_start:branch.dynamic_stop],
                                                 keys, values, mask, shared, match)
                fixed = torch.cat([dynamic, fixed], dim=1)
            z.append(fixed)
        return self.towers(self.interact(torch.cat([*z, queries], dim=1)))

    def score(self, cache: UserCache, candidates: dict[str, torch.Tensor],
              rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-task probabilities `[C, T]`, equal to `forward` on the same rows (ESMM: p(click), p(click∧order))."""
        return self.probabilities(self.score_logits(cache, candidates, rows))

    # -- accounting (§4) --

    def count_params(self) -> dict[str, int]:
        """Dense parameters by part (`tokenizer`, `sequence_projection`, `fixed_queries`, `extraction`,
        `mixing`, `ffn`, `block_norms`, `towers`), their total `dense`, and `embeddings`."""
        return parameter_breakdown(self, PARAMETER_GROUPS)
