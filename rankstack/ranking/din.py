"""DIN baseline (Zhou et al., 2018): target attention over the behaviour history, as hemix.md §5 defines it.

All behaviour streams form one history, in time order. For each event the activation unit scores
`a_t = MLP_att([h̄_t ; x_t ; h̄_t − x_t ; h̄_t ⊙ x_t])`, where `h̄_t` is the event's item part and `x_t` the target
item; padding is masked and, as in the DIN paper, the weights are not softmax-normalised (softmax is an option).
The pooled interest `p = Σ_t a_t·[E(item_t) ; E(action_t)]` joins `[x_ns ; x_dense ; x_t]` in an MLP, then
the per-task towers. With `target_match` (our option, as HeMix's), the activation unit also reads the event's
match bits with the candidate (1 per item field the event shares with it), and `p` gains `Σ_t a_t·match_t`.
Four options reproduce FuxiCTR's DIN for the peer check: `pool_actions: false` pools the items only,
`dice_padding: true` takes Dice's batch moments over padded events too, `dice_momentum: 0.01` is its BatchNorm's
momentum, and `linear_init: xavier_normal` its initialisation of every Linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from rankstack.errors import ConfigError
from rankstack.nn.attention import masked_softmax
from rankstack.nn.features import (
    FieldEmbedder,
    FieldLayout,
    concat_streams,
    mlp,
    stream_item_ids,
    target_item_ids,
    target_matches,
)
from rankstack.nn.params import parameter_breakdown
from rankstack.ranking.base import RankingModel, TaskTowers


@dataclass
class DINConfig:
    """DIN hyper-parameters.

    embedding_dim: width e of every field embedding (16).
    attention: hidden widths of the activation unit, each followed by Dice ([64, 32]).
    attention_softmax: normalise the activation weights with a masked softmax (False, as in the DIN paper).
    mlp: widths of the MLP over [x_ns ; x_dense ; x_t ; p] ([512, 256, 128]).
    tower: hidden widths of each task tower ([128, 64]).
    dropout: dropout in the MLP and towers (0.0).
    esmm: train conversion ESMM-style as p(click)·p(order | click) (False).
    target_match: give the activation unit and the pooled interest each event's match bits with the candidate
        (`rankstack.nn.features.target_matches`; False).
    pool_actions: pool the events' action embeddings with their items (True); False pools the items only, as the
        DIN paper and FuxiCTR do.
    dice_padding: Dice's batch moments also count the padded events (False); True is FuxiCTR's BatchNorm over the
        flattened history.
    dice_momentum: the weight of each training batch in Dice's running moments, which evaluation uses (0.1, as
        PyTorch's BatchNorm; FuxiCTR's Dice uses 0.01).
    linear_init: `torch` keeps PyTorch's default initialisation of the Linear layers; `xavier_normal` draws their
        weights Xavier-normal with zero biases, as FuxiCTR does. The embedding tables are not touched.
    """

    embedding_dim: int = 16
    attention: list[int] = field(default_factory=lambda: [64, 32])
    attention_softmax: bool = False
    mlp: list[int] = field(default_factory=lambda: [512, 256, 128])
    tower: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0
    esmm: bool = False
    target_match: bool = False
    pool_actions: bool = True
    dice_padding: bool = False
    dice_momentum: float = 0.1
    linear_init: Literal["torch", "xavier_normal"] = "torch"

    def __post_init__(self) -> None:
        if not 0.0 < self.dice_momentum <= 1.0:
            raise ValueError(f"dice_momentum must be in (0, 1], got {self.dice_momentum}")


class Dice(nn.Module):
    """DIN's data-adaptive activation `p(s)·s + (1 − p(s))·α·s`, `p(s) = σ((s − E[s]) / sqrt(Var[s] + ε))`.

    The moments are batch statistics over real events only (padding would otherwise shift them) in training and
    running averages in evaluation, as in BatchNorm without affine parameters.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Masked sums as one [1, B·L] × [B·L, d] product each, instead of weighting every element of s first.
            weight, d = mask.reshape(1, -1).to(s.dtype), s.shape[-1]
            count = weight.sum().clamp(min=1.0)
            mean = (weight @ s.reshape(-1, d)).squeeze(0) / count
            centred = s - mean
            var = (weight @ centred.square().reshape(-1, d)).squeeze(0) / count
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().float(), self.momentum)
                self.running_var.lerp_(var.detach().float(), self.momentum)
        else:
            centred, var = s - self.running_mean, self.running_var
        p = torch.sigmoid(centred * torch.rsqrt(var + self.eps))
        # p·s + (1 − p)·α·s = s·(α + p·(1 − α))
        return s * torch.lerp(self.alpha, torch.ones_like(self.alpha), p)


class ActivationUnit(nn.Module):
    """`a_t = MLP_att([h̄_t ; x_t ; h̄_t − x_t ; h̄_t ⊙ x_t])` with Dice, one scalar per event `[B, L]`."""

    def __init__(self, item_dim: int, hidden: list[int], match_fields: int = 0, dice_momentum: float = 0.1) -> None:
        super().__init__()
        sizes = [4 * item_dim, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.match = nn.Linear(match_fields, hidden[0], bias=False) if match_fields else None
        self.dice = nn.ModuleList(Dice(b, dice_momentum) for b in hidden)
        self.score = nn.Linear(sizes[-1], 1)

    def forward(self, history: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                match: torch.Tensor | None = None) -> torch.Tensor:
        # The first layer on [h̄ ; x ; h̄ − x ; h̄ ⊙ x] is W_h·h̄ + W_x·x + W_d·(h̄ − x) + W_p·(h̄ ⊙ x)
        # = (W_h + W_d)·h̄ + W_p·(h̄ ⊙ x) + (W_x − W_d)·x: the target's term is computed once per row, not per event.
        first = self.linears[0]
        w_h, w_x, w_d, w_p = first.weight.chunk(4, dim=1)
        target = target.unsqueeze(1)
        per_event = torch.cat([history, history * target], dim=-1) @ torch.cat([w_h + w_d, w_p], dim=1).T
        if self.match is not None:
            per_event = per_event + self.match(match)
        h = self.dice[0](per_event + nn.functional.linear(target, w_x - w_d, first.bias), mask)
        for linear, dice in zip(self.linears[1:], self.dice[1:]):
            h = dice(linear(h), mask)
        return self.score(h).squeeze(-1)


class DIN(RankingModel):
    def __init__(self, layout: FieldLayout, config: DINConfig) -> None:
        super().__init__(layout, esmm=config.esmm)
        if not layout.sequences:
            raise ConfigError("DIN attends over a behaviour sequence, but this dataset has none; use dlrm or dcnv2.")
        self.config = config
        e = config.embedding_dim
        self.embedder = FieldEmbedder(layout, e)
        n_item = self.embedder.num_item_fields
        match_fields = n_item if config.target_match else 0
        self.activation_unit = ActivationUnit(n_item * e, config.attention, match_fields, config.dice_momentum)
        pooled = (n_item + config.pool_actions) * e + match_fields
        width = self.embedder.num_ns * e + len(layout.dense) + n_item * e + pooled
        self.mlp = mlp([width, *config.mlp], config.dropout)
        self.towers = TaskTowers(config.mlp[-1], self.tasks, config.tower, config.dropout)
        if config.linear_init == "xavier_normal":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def interest(self, items: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                 match: torch.Tensor | None = None) -> torch.Tensor:
        """`p = Σ_t a_t·[E(item_t) (; E(action_t)) (; match_t)]` `[B, (F_it (+ 1))·e (+ F_it)]`; padding weighs 0."""
        history = items.flatten(2)
        dice_mask = torch.ones_like(mask) if self.config.dice_padding else mask
        scores = self.activation_unit(history, target, dice_mask, match)
        weights = (masked_softmax(scores, mask) if self.config.attention_softmax
                   else scores * mask.to(scores.dtype))
        pooled = [history] + ([actions] if self.config.pool_actions else []) + ([match] if match is not None else [])
        return torch.einsum("bl,bld->bd", weights, torch.cat(pooled, dim=-1))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedder(batch)
        target = emb.target.flatten(1)
        match = None
        if self.config.target_match:
            match = target_matches(torch.cat(stream_item_ids(self.layout, batch), dim=1),
                                   target_item_ids(self.layout, batch))
        p = self.interest(*concat_streams(emb.streams), target, match)
        return self.towers(self.mlp(torch.cat([emb.ns.flatten(1), emb.dense, target, p], dim=1)))

    def count_params(self) -> dict[str, int]:
        return parameter_breakdown(self)
