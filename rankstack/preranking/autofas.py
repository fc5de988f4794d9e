"""AutoFAS: feature and architecture search for pre-ranking under a latency budget (autofas.md §3–§5).

Li et al., *AutoFAS: Automatic Feature and Architecture Selection for Pre-Ranking System*, KDD 2022.

- `FieldGate`: one logit β_f per field; binary-concrete samples while searching, straight-through (hard 0/1 in
  the forward pass, the relaxed gradient backwards) in the last `straight_through_frac` of the search, and
  `1[σ(β_f) > 0.5]` at evaluation (§3.2).
- `MixOp` / `Supernet`: a chain of L mixed operators; layer l's candidates are FC layers of the `widths` (one
  shared matrix, channel-masked to each width) plus identity from layer `identity_from_layer` on (§3.4). Op
  weights are a Gumbel-softmax of α_l. Layer 1 is split by level like the served student.
- `AutoFASSearch.run`: warm-up (gates open, uniform ops, weight steps only), then alternating first-order
  weight steps on a training batch and architecture steps on a held-out batch (§3.6). The latency penalty
  `λ·[max(0, LAT/T_b − 1) + ε·LAT/T_b]` uses `latency.expected_latency`.
- `derive`: keep fields with π_f > 0.5, drop kept fields in ascending π_f/ĉ_f while the predicted latency exceeds
  the budget, argmax op per layer, identity removes a layer, at least one FC (§4.4); then (`derive_fill`, ours)
  add dropped fields back in descending π_f/ĉ_f while the prediction stays within the budget. Returns a `StudentSpec`;
  the student is an `MLPStudent` retrained with distillation by `rankstack.preranking.run`.

Our teacher is a frozen rankstack ranking run whose logits over every candidate are precomputed, so β gets its
importance signal through the supernet's KD and click losses; the spec's in-graph teacher that keeps training on
the masked input (§3.3) is not built (docs/preranking.md lists this difference).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn

from rankstack.nn.features import FieldLayout
from rankstack.preranking.data import PrerankField, PrerankSplit
from rankstack.preranking.distill import bce_on_shown, listwise_kd, pointwise_kd
from rankstack.preranking.latency import LatencyTable, expected_latency, predict_mlp
from rankstack.preranking.student import FieldInputs


@dataclass
class AutoFASConfig:
    """AutoFAS search hyper-parameters (autofas.md §5; CPU-scale values where the spec's do not fit here).

    n_layers, widths: the supernet (L MixOps; FC candidates of these widths, plus identity from
        `identity_from_layer` on). embedding_dim: d_f of every field.
    gate_init_logit: β_f at the start (3.0: π ≈ 0.95). gate_noise: binary-concrete noise (False: plain σ).
    tau_start, tau_end: temperature, annealed exponentially. straight_through_frac: hard gates at the end.
    warmup_frac: share of steps with open gates and uniform ops, weight steps only.
    search_steps, batch_requests: search length and requests per batch (each request brings N_c candidates).
    lr_weights, lr_embedding: Adam for supernet weights and embeddings.
    lr_arch: Adam for α (betas (0.5, 0.999), weight decay 1e-3). The spec's 3e-4 assumes ~4 k steps; a few
        hundred steps on this machine need a larger rate.
    gate_optimizer, lr_gate: the optimiser of β: `sgd` (momentum 0.9; default, see `AutoFASSearch`) or `adam`.
    gate_gradient: how β learns the task signal: `relaxed` (§3.2: binary-concrete / straight-through gates,
        autograd through the masked input) or `contrast` (`contrast_fields` random fields per architecture step
        get the exact-in-expectation gradient of the Bernoulli-relaxed loss, L(f on) − L(f off); see
        `AutoFASSearch._contrast`). The latency term reaches β through π by autograd in both.
    kd_weight (γ), bce_weight (μ), listwise_weight: guidance terms of both steps (listwise = ranking
        consistency, per-request KL to the teacher).
    latency_lambda (λ), latency_eps (ε): the hinge penalty. heldout_frac: held-out share of training requests.
    search_features, search_arch, teacher_guidance, latency_reg: ablation switches of §9.
    derive_fill: after §4.4's trimming, add dropped fields back in descending π/ĉ while the predicted latency
        stays within the budget (our addition: the search can leave much of the budget unused).
    derive_test_z: when > 0, derivation keeps (and `derive_fill` re-admits) only fields whose held-out benefit is
        significant: the search loss on the held-out requests rises when the field is permuted across requests, by
        at least `derive_test_z` standard errors over requests (our addition; see `AutoFASSearch.field_test`).
        0 (default) is §4.4 as written.
    """

    n_layers: int = 3
    widths: list[int] = field(default_factory=lambda: [256, 128, 64, 32])
    identity_from_layer: int = 2
    embedding_dim: int = 16
    gate_init_logit: float = 3.0
    gate_noise: bool = True
    tau_start: float = 1.0
    tau_end: float = 0.1
    straight_through_frac: float = 0.3
    warmup_frac: float = 0.2
    search_steps: int = 400
    batch_requests: int = 8
    lr_weights: float = 1e-3
    lr_embedding: float = 1e-2
    lr_arch: float = 0.03
    gate_optimizer: str = "sgd"
    gate_gradient: str = "relaxed"
    contrast_fields: int = 8
    lr_gate: float = 5.0
    kd_weight: float = 1.0
    bce_weight: float = 0.5
    listwise_weight: float = 0.5
    latency_lambda: float = 1.0
    latency_eps: float = 0.01
    heldout_frac: float = 0.1
    search_features: bool = True
    search_arch: bool = True
    teacher_guidance: bool = True
    latency_reg: bool = True
    fixed_widths: list[int] = field(default_factory=lambda: [256, 128, 64])  # used when search_arch is False
    derive_fill: bool = True
    derive_test_z: float = 0.0

    def __post_init__(self) -> None:
        if self.n_layers < 1 or not self.widths:
            raise ValueError("AutoFAS needs n_layers >= 1 and at least one width")
        if self.identity_from_layer < 2 or self.identity_from_layer > self.n_layers + 1:
            raise ValueError("identity_from_layer must be between 2 and n_layers + 1 (layer 1 is always an FC)")


class FieldGate(nn.Module):
    """Relaxed per-field keep gates (binary concrete / straight-through / hard at evaluation)."""

    def __init__(self, n_fields: int, init_logit: float = 3.0, pinned: torch.Tensor | None = None) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((n_fields,), float(init_logit)))
        self.register_buffer("pinned", torch.zeros(n_fields, dtype=torch.bool) if pinned is None else pinned)

    def keep_prob(self) -> torch.Tensor:
        """π_f = σ(β_f) (1 for pinned fields)."""
        return torch.where(self.pinned, torch.ones_like(self.logit), torch.sigmoid(self.logit))

    def sample(self, tau: float, hard: bool, noise: bool = True) -> torch.Tensor:
        """A mask `[F]`: binary concrete at temperature `tau`; straight-through 0/1 if `hard`."""
        logit = self.logit
        if noise:
            u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
            logit = logit + torch.log(u) - torch.log1p(-u)
        g = torch.sigmoid(logit / tau)
        if hard:
            g = (g > 0.5).to(g.dtype) + g - g.detach()
        return torch.where(self.pinned, torch.ones_like(g), g)

    def hard(self) -> torch.Tensor:
        return (self.keep_prob() > 0.5).to(self.logit.dtype)


class MixOp(nn.Module):
    """Layer l of the supernet: `h = a_id·h_in + (Σ_k a_k μ_k) ⊙ ReLU(W h_in + b)` with one `W` (channel masks μ_k
    keep the first w_k units); layer 1 reads `[x_req ; x_cand]` split by level and has no identity."""

    def __init__(self, in_width: int, widths: list[int], identity: bool, request_width: int | None = None) -> None:
        super().__init__()
        self.widths = list(widths)
        self.identity = identity
        top = max(widths)
        self.first = request_width is not None
        if request_width is not None:
            self.request = nn.Linear(request_width, top)
            self.linear = nn.Linear(in_width, top, bias=False)
        else:
            self.linear = nn.Linear(in_width, top)
        masks = torch.stack([(torch.arange(top) < w).float() for w in widths])
        self.register_buffer("masks", masks, persistent=False)

    @property
    def n_ops(self) -> int:
        return len(self.widths) + int(self.identity)

    def forward(self, h: torch.Tensor, weights: torch.Tensor, x_req: torch.Tensor | None = None) -> torch.Tensor:
        """h `[R, N_c, in]` (layer 1: x_cand, with x_req `[R, D_req]`); weights `[n_ops]` (identity last)."""
        pre = self.linear(h)
        if self.first:
            pre = pre + self.request(x_req).unsqueeze(1)
        out = (weights[:len(self.widths)] @ self.masks) * torch.relu(pre)
        if self.identity:
            out = out + weights[-1] * h
        return out


class Supernet(nn.Module):
    """Gated field embeddings → L MixOps → logit (autofas.md §3.4)."""

    def __init__(self, layout: FieldLayout, fields: list[PrerankField], config: AutoFASConfig) -> None:
        super().__init__()
        self.config = config
        self.inputs = FieldInputs(layout, fields, config.embedding_dim)
        self.fields = self.inputs.request_fields + self.inputs.candidate_fields
        self.gate = FieldGate(len(self.fields), config.gate_init_logit)
        top = max(config.widths)
        self.layers = nn.ModuleList()
        for layer in range(1, config.n_layers + 1):
            if layer == 1:
                self.layers.append(MixOp(self.inputs.candidate_width, config.widths, False,
                                         max(self.inputs.request_width, 1)))
            else:
                self.layers.append(MixOp(top, config.widths, layer >= config.identity_from_layer))
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(m.n_ops)) for m in self.layers)
        self.head = nn.Linear(top, 1)
        self.n_req = len(self.inputs.request_fields)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.gate.logit, *self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def op_weights(self, tau: float, noise: bool = True) -> list[torch.Tensor]:
        out = []
        for a in self.alpha:
            logits = a
            if noise:
                u = torch.rand_like(a).clamp(1e-6, 1 - 1e-6)
                logits = a - torch.log(-torch.log(u))
            out.append(torch.softmax(logits / tau, -1))
        return out

    def logits(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, ops: list[torch.Tensor]) -> torch.Tensor:
        x_req = self.inputs.request_vectors(batch) * mask[:self.n_req, None]
        x_cand = self.inputs.candidate_vectors(batch) * mask[self.n_req:, None]
        x_req = x_req.flatten(1)
        if x_req.shape[1] == 0:
            x_req = x_req.new_zeros((x_req.shape[0], 1))
        h = self.layers[0](x_cand.flatten(2), ops[0], x_req)
        for layer, w in zip(self.layers[1:], ops[1:]):
            h = layer(h, w)
        return self.head(h).squeeze(-1)


TARGETS = ("shown", "click", "teacher")  # what the search loss reads from a batch besides the fields


@dataclass
class StudentSpec:
    """What the search selected: kept fields and hidden widths, with the predicted latency (ms)."""

    fields: list[str]
    widths: list[int]
    predicted_ms: dict[str, float]
    keep_prob: dict[str, float]
    op_probs: list[list[float]]
    trimmed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    benefit: dict[str, float] = field(default_factory=dict)
    benefit_z: dict[str, float] = field(default_factory=dict)
    failed_test: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


class AutoFASSearch:
    """Runs the search (§3.6, §4.2–4.3) on in-memory training requests with precomputed teacher logits."""

    def __init__(self, layout: FieldLayout, fields: list[PrerankField], config: AutoFASConfig,
                 table: LatencyTable, budget_ms: float, cost_scale: float, n_cand: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.n_cand = n_cand
        self.net = Supernet(layout, fields, config)
        self.fields = self.net.fields
        self.table = table
        self.budget_ms = budget_ms
        self.cost_scale = cost_scale
        self.seed = seed
        c = config
        weights = self.net.weight_parameters()
        embeddings = [p for p in weights if any(p is t.weight for t in self.net.inputs.embedder.tables.values())]
        dense = [p for p in weights if all(p is not e for e in embeddings)]
        self.opt_w = torch.optim.Adam([{"params": dense, "lr": c.lr_weights},
                                       {"params": embeddings, "lr": c.lr_embedding}])
        # α: Adam with DARTS's values. β: SGD with momentum by default. Adam divides each gate's step by its own
        # gradient scale, so under an active hinge every field falls at the same speed whatever its cost and
        # importance; plain gradient steps keep the trade-off ĉ_f/T_b against the task gradient that §3.5 intends.
        # (And no weight decay on β: it would pull every idle gate towards π = 0.5.)
        self.opt_arch = (torch.optim.Adam(self.net.alpha, lr=c.lr_arch, betas=(0.5, 0.999), weight_decay=1e-3)
                         if c.search_arch else None)
        self.opt_gate = None
        if c.search_features:
            self.opt_gate = (torch.optim.SGD([self.net.gate.logit], lr=c.lr_gate, momentum=0.9)
                             if c.gate_optimizer == "sgd" else
                             torch.optim.Adam([self.net.gate.logit], lr=c.lr_gate, betas=(0.5, 0.999)))
        if not c.search_arch:
            self._fix_arch(c.fixed_widths)

    def _fix_arch(self, widths: list[int]) -> None:
        """FSCD-style control: α fixed to the given widths (identity for layers beyond them)."""
        with torch.no_grad():
            for layer, a in enumerate(self.net.alpha):
                a.fill_(-1e4)
                if layer < len(widths):
                    a[self.config.widths.index(widths[layer])] = 0.0
                else:
                    a[-1] = 0.0

    def latency(self, ops: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        ops = ops if ops is not None else [torch.softmax(a, -1) for a in self.net.alpha]
        return expected_latency(self.fields, self.net.gate.keep_prob(), ops, self.config.widths, self.table,
                                self.n_cand, self.config.embedding_dim, self.cost_scale)

    def _losses(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, ops: list[torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return self._objective(self.net.logits(batch, mask, ops), batch)

    def _objective(self, z: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The search loss of the logits `z` `[R, N_c]` of `batch`: μ·BCE on shown rows + γ·KD (+ listwise KD)."""
        c = self.config
        ls = bce_on_shown(z, batch)
        total = c.bce_weight * ls
        logs = {"L_S": float(ls.detach())}
        if c.teacher_guidance:
            kd = pointwise_kd(z, batch["teacher"])
            total = total + c.kd_weight * kd
            logs["L_KD"] = float(kd.detach())
            if c.listwise_weight:
                lw = listwise_kd(z, batch["teacher"])
                total = total + c.listwise_weight * lw
                logs["L_list"] = float(lw.detach())
        return total, logs

    @torch.no_grad()
    def _contrast_losses(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, ops: list[torch.Tensor],
                         fields: np.ndarray) -> torch.Tensor:
        """L(m with f on) − L(m with f off) for each field index in `fields`, the rest of `m` fixed."""
        out = []
        for f in fields:
            on, off = mask.clone(), mask.clone()
            on[f], off[f] = 1.0, 0.0
            out.append(self._losses(batch, on, ops)[0] - self._losses(batch, off, ops)[0])
        return torch.stack(out)

    def _contrast(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, ops: list[torch.Tensor],
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The `contrast` gate gradient: for Bernoulli(π) masks the expected loss is multilinear in π, and
        ∂E[L]/∂π_f = E[L(m_f = 1) − L(m_f = 0)]; one sample of it for `contrast_fields` random fields per step.
        Returns a surrogate whose gradient through π is that estimate, and the 0/1 vector of measured fields."""
        c = self.config
        pick = rng.choice(len(self.fields), size=min(c.contrast_fields, len(self.fields)), replace=False)
        delta = self._contrast_losses(batch, mask, [torch.softmax(a.detach(), -1) for a in self.net.alpha]
                                      if ops is None else [o.detach() for o in ops], pick)
        sampled = torch.zeros(len(self.fields))
        sampled[torch.as_tensor(pick)] = 1.0
        weights = torch.zeros(len(self.fields))
        weights[torch.as_tensor(pick)] = delta
        return (weights * self.net.gate.keep_prob()).sum(), sampled

    def _sample(self, tau: float, hard: bool, warm: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field mask and op weights of one step (open gates and uniform ops during warm-up)."""
        c = self.config
        if warm or not c.search_features:
            mask = torch.ones(len(self.fields))
        else:
            mask = self.net.gate.sample(tau, hard, c.gate_noise)
        if warm and c.search_arch:
            return mask, [torch.full((m.n_ops,), 1.0 / m.n_ops) for m in self.net.layers]
        return mask, self.net.op_weights(tau, noise=c.search_arch)

    def run(self, train: PrerankSplit, trace_path: str | Path | None = None, log_every: int = 50) -> StudentSpec:
        """Search on `train` (its `teacher` logits precomputed), write the trace, return the derived student."""
        with open(trace_path or os.devnull, "w") as trace:
            held = self._search(train, trace, log_every)
        return self.derive(train.subset(held) if self.config.derive_test_z > 0 else None)

    def _search(self, train: PrerankSplit, trace: TextIO, log_every: int) -> np.ndarray:
        """The search loop; returns the indices of the held-out requests of the architecture steps."""
        c = self.config
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(train.num_requests)
        n_held = max(1, int(round(c.heldout_frac * train.num_requests)))
        held, fit = order[:n_held], order[n_held:]
        warm_steps = int(c.warmup_frac * c.search_steps)
        hard_from = int((1 - c.straight_through_frac) * c.search_steps)
        for step in range(c.search_steps):
            tau = c.tau_start * (c.tau_end / c.tau_start) ** (step / max(c.search_steps - 1, 1))
            hard, warm = step >= hard_from, step < warm_steps
            # Weight step on a training batch: embeddings and supernet weights.
            batch = train.take(rng.choice(fit, size=min(c.batch_requests, len(fit)), replace=False))
            loss, logs = self._losses(batch, *self._sample(tau, hard, warm))
            self.opt_w.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_w.step()
            penalty, lat = torch.zeros((), dtype=torch.float64), None
            arch_opts = [o for o in (self.opt_arch, self.opt_gate) if o is not None]
            if not warm and arch_opts:
                # Architecture step on a held-out batch: β and α, with the latency penalty.
                batch = train.take(rng.choice(held, size=min(c.batch_requests, len(held)), replace=False))
                mask, ops = self._sample(tau, hard, warm)
                contrast = c.search_features and c.gate_gradient == "contrast"
                if contrast:
                    mask = (torch.rand(len(self.fields)) < self.net.gate.keep_prob().detach()).float()
                loss, _ = self._losses(batch, mask, ops)
                lat = self.latency([torch.softmax(a / tau, -1) for a in self.net.alpha])
                if c.latency_reg:
                    ratio = lat["total"] / self.budget_ms
                    penalty = c.latency_lambda * (torch.relu(ratio - 1) + c.latency_eps * ratio)
                surrogate, sampled = (self._contrast(batch, mask, ops, rng) if contrast else (0.0, None))
                for opt in arch_opts:
                    opt.zero_grad(set_to_none=True)
                (loss + penalty.float() + surrogate).backward()
                if sampled is not None:
                    # Only the fields whose contrast was measured this step move.
                    self.net.gate.logit.grad *= sampled
                for opt in arch_opts:
                    opt.step()
                self.opt_w.zero_grad(set_to_none=True)
            if step % log_every == 0 or step == c.search_steps - 1:
                lat = lat or self.latency()
                pi = self.net.gate.keep_prob().detach()
                trace.write(json.dumps({
                    "step": step, "tau": round(tau, 4), "warm": warm, "hard": hard, **logs, "P": float(penalty.detach()),
                    "LAT_feat": float(lat["feat"].detach()), "LAT_arch": float(lat["arch"].detach()),
                    "LAT": float(lat["total"].detach()),
                    "budget_ms": self.budget_ms, "pi": {f.name: round(float(p), 4) for f, p in zip(self.fields, pi)},
                    "ops": [[round(float(x), 4) for x in torch.softmax(a.detach(), -1)] for a in self.net.alpha],
                }) + "\n")
        return held

    @torch.no_grad()
    def field_test(self, held: PrerankSplit, repeats: int = 2) -> dict[str, tuple[float, float]]:
        """Held-out benefit of every field, as (mean rise, z). Per held-out request: the search loss with the
        field's values permuted across a batch of held-out requests (request fields across requests, candidate
        fields across all candidate rows), averaged over `repeats` permutations, minus the loss with every field as
        is. Mean over requests, and z = mean / standard error. A field the supernet ignores, or whose use does not
        carry over to requests it was not trained on, scores near 0; a field it needs scores high.

        Permutation rather than §3.2's zeros: the supernet was trained with its gates mostly open, so zeros are
        an input it has rarely seen and every field would look needed (docs/preranking.md)."""
        c = self.config
        mask = torch.ones(len(self.fields))
        ops = [torch.softmax(a, -1) for a in self.net.alpha]
        generator = torch.Generator().manual_seed(self.seed)
        rises: dict[str, list[float]] = {f.name: [] for f in self.fields}

        def per_request(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            # One forward for the batch (rows are independent), then the loss of each request on its own.
            z = self.net.logits(batch, mask, ops)
            return torch.stack([self._objective(z[r:r + 1], {k: batch[k][r:r + 1] for k in TARGETS})[0]
                                for r in range(z.shape[0])])

        for batch in held.batches(c.batch_requests):
            base = per_request(batch)
            for f in self.fields:
                rise = torch.zeros_like(base)
                for _ in range(repeats):
                    values = batch[f.key]
                    order = torch.randperm(values.numel(), generator=generator)
                    rise += (per_request({**batch, f.key: values.flatten()[order].view_as(values)}) - base) / repeats
                rises[f.name].extend(rise.tolist())
        out = {}
        for name, r in rises.items():
            r = np.asarray(r)
            se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
            out[name] = (float(r.mean()), float(r.mean() / se) if se > 0 else 0.0)
        return out

    @torch.no_grad()
    def derive(self, held: PrerankSplit | None = None) -> StudentSpec:
        """§4.4: fields with π > 0.5, trimmed by π/ĉ to the budget; argmax op per layer; ≥ 1 FC layer. With
        `held` (and `derive_test_z` > 0), fields whose held-out benefit is not significant (`field_test`) are
        neither kept nor re-admitted by `derive_fill`, and trimming and filling rank fields by measured benefit per
        cost instead of π/ĉ: once the gates saturate near π = 1, π/ĉ only ranks by cost, and the costliest field
        goes first however much it is needed."""
        c = self.config
        pi = self.net.gate.keep_prob()
        widths = []
        for layer, a in zip(self.net.layers, self.net.alpha):
            k = int(torch.argmax(a))
            if layer.identity and k == len(c.widths):
                continue
            widths.append(c.widths[k])
        if not widths:
            widths = [c.widths[int(torch.argmax(self.net.alpha[0]))]]
        kept = [f for f, p in zip(self.fields, pi) if p > 0.5] if c.search_features else list(self.fields)
        value = {f.name: float(p) for f, p in zip(self.fields, pi)}
        tested: dict[str, tuple[float, float]] = {}
        failed: set[str] = set()
        if held is not None and c.derive_test_z > 0 and c.search_features:
            # Every field is tested with all others as they are, so that the fill below can rely on the same test.
            tested = self.field_test(held)
            failed = {name for name, (_, z) in tested.items() if z < c.derive_test_z}
            kept = [f for f in kept if f.name not in failed]
            value = {name: max(rise, 0.0) for name, (rise, _) in tested.items()}
        if not kept:
            kept = [self.fields[int(torch.argmax(pi))]]
        trimmed = []
        predicted = self._predict(kept, widths)
        ratio = {f.name: value[f.name] / max(f.request_cost_ms(self.n_cand), 1e-9) for f in self.fields}
        while predicted["total"] > self.budget_ms and len(kept) > 1:
            drop = min(kept, key=lambda f: ratio[f.name])
            kept.remove(drop)
            trimmed.append(drop.name)
            predicted = self._predict(kept, widths)
        added = []
        if c.derive_fill and c.search_features:
            # The gates can overshoot below the budget (the hinge pushes, then nothing pulls back), so dropped
            # fields return in descending value per cost while the predicted latency stays within the budget.
            for f in sorted((f for f in self.fields if f not in kept and f.name not in failed),
                            key=lambda f: -ratio[f.name]):
                trial = self._predict([*kept, f], widths)
                if trial["total"] <= self.budget_ms:
                    kept.append(f)
                    added.append(f.name)
                    predicted = trial
            kept = [f for f in self.fields if f in kept]
        return StudentSpec(
            fields=[f.name for f in kept], widths=widths, predicted_ms=predicted,
            keep_prob={f.name: round(float(p), 4) for f, p in zip(self.fields, pi)},
            op_probs=[[round(float(x), 4) for x in torch.softmax(a, -1)] for a in self.net.alpha], trimmed=trimmed,
            added=added, benefit={k: float(f"{r:.3g}") for k, (r, _) in tested.items()},
            benefit_z={k: round(z, 2) for k, (_, z) in tested.items()}, failed_test=sorted(failed))

    def _predict(self, kept: list[PrerankField], widths: list[int]) -> dict[str, float]:
        return predict_mlp(self.fields, [f.name for f in kept], widths, self.table, self.n_cand,
                           self.config.embedding_dim, self.cost_scale)



def next_to_drop(spec: StudentSpec, fields: list[PrerankField], n_cand: int) -> str | None:
    """The kept field with the lowest value per cost (the one derivation drops next: measured held-out benefit
    when `derive_test_z` tested the fields, else π_f), or None if one field is left. Used when the measured
    latency of a derived student exceeds the budget (§4.6 calibration)."""
    if len(spec.fields) <= 1:
        return None
    cost = {f.name: max(f.request_cost_ms(n_cand), 1e-9) for f in fields}
    value = {name: max(spec.benefit[name], 0.0) for name in spec.fields} if spec.benefit else spec.keep_prob
    return min(spec.fields, key=lambda name: value[name] / cost[name])
