"""AutoFAS building blocks on toy fields (autofas.md §13.1): gates, MixOps, the latency function, derivation and
the request-split student. No dataset; each test runs in well under a second."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rankstack.nn.features import FieldLayout
from rankstack.preranking.autofas import AutoFASConfig, AutoFASSearch, FieldGate, MixOp
from rankstack.preranking.data import PrerankField
from rankstack.preranking.distill import listwise_kd, pointwise_kd
from rankstack.preranking.latency import LatencyTable, expected_latency, fit_linear, predict_mlp
from rankstack.preranking.student import MLPStudent

N_CAND = 6


def toy_fields() -> list[PrerankField]:
    return [
        PrerankField("hour", "hour", "hour", "embed", "request", 0.2, "context"),
        PrerankField("age", "age", "", "dense", "request", 0.1, "user"),
        PrerankField("poi_id", "poi_id", "poi_id", "embed", "candidate", 0.001, "item"),
        PrerankField("tags", "tags", "tag", "multi", "candidate", 0.002, "item"),
        PrerankField("ctr", "ctr__bucket", "ctr__bucket", "embed", "candidate", 0.01, "cross"),
    ]


def toy_layout() -> FieldLayout:
    return FieldLayout(ns=(), multi_valued=(), dense=("age",), target=(), sequences=(),
                       tables={"hour": 26, "poi_id": 50, "tag": 9, "ctr__bucket": 18}, dense_moments=((40.0, 10.0),))


def toy_batch(requests: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (requests, N_CAND)
    hour = torch.randint(2, 26, (requests, 1), generator=g).expand(shape)
    age = (20 + 40 * torch.rand(requests, 1, generator=g)).expand(shape)
    shown = torch.zeros(shape)
    shown[:, :3] = 1.0
    return {"hour": hour, "age": age, "poi_id": torch.randint(2, 50, shape, generator=g),
            "tags": torch.randint(0, 9, (*shape, 4), generator=g), "ctr__bucket": torch.randint(2, 18, shape, generator=g),
            "shown": shown, "click": (torch.rand(shape, generator=g) < 0.3).float() * shown,
            "teacher": torch.randn(shape, generator=g)}


def linear_table(widths: list[int], t0: float = 0.01, t1: float = 1e-6) -> LatencyTable:
    """A table whose FC cost is exactly t0 + t1·n·d_in·d_out (so expectations are exact)."""
    grid = [0, 16, 32, 64, 128, 256]
    d_out = sorted(set(widths) | {1})
    fc = {str(n): [[t0 + t1 * n * i * o for i in grid] for o in d_out] for n in (1, N_CAND)}
    return LatencyTable("test", 1, N_CAND, grid, d_out, fc, {"1": 0.001, str(N_CAND): 0.002}, 0.005)


def test_straight_through_gates_are_binary_with_gradients():
    gate = FieldGate(5, init_logit=0.5)
    with torch.no_grad():
        gate.logit.copy_(torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]))
    torch.manual_seed(0)
    m = gate.sample(tau=0.5, hard=True)
    assert set(m.detach().tolist()) <= {0.0, 1.0}
    (m * torch.arange(1.0, 6.0)).sum().backward()
    assert (gate.logit.grad.abs() > 0).all()
    relaxed = gate.sample(tau=1.0, hard=False)
    assert ((relaxed > 0) & (relaxed < 1)).all()
    assert gate.hard().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    pinned = FieldGate(2, -5.0, pinned=torch.tensor([True, False]))
    assert pinned.sample(1.0, True).tolist()[0] == 1.0 and pinned.keep_prob()[0] == 1.0


def test_channel_mask_mixop_equals_weighted_sum_of_width_masked_fcs():
    torch.manual_seed(0)
    widths = [16, 8, 4]
    op = MixOp(16, widths, identity=True)
    h = torch.randn(2, N_CAND, 16)
    weights = torch.softmax(torch.randn(4), -1)
    expected = weights[-1] * h
    for k, w in enumerate(widths):
        fc = torch.relu(op.linear(h))
        fc[..., w:] = 0.0
        expected = expected + weights[k] * fc
    torch.testing.assert_close(op(h, weights), expected, rtol=0, atol=1e-6)


def test_expected_latency_is_differentiable_and_matches_brute_force():
    """L = 2, 3 fields: §3.5's expected latency equals the expectation over every (mask, op) choice."""
    fields = [toy_fields()[0], toy_fields()[2], toy_fields()[4]]
    widths = [32, 16]
    table = linear_table(widths)
    pi = torch.tensor([0.3, 0.8, 0.6], dtype=torch.float64, requires_grad=True)
    a1 = torch.softmax(torch.tensor([0.2, -0.4], dtype=torch.float64), -1).detach().requires_grad_()
    a2 = torch.softmax(torch.tensor([0.1, 0.5, -0.3], dtype=torch.float64), -1).detach().requires_grad_()
    lat = expected_latency(fields, pi, [a1, a2], widths, table, N_CAND, dim=8, cost_scale=2.0)
    lat["total"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (pi, a1, a2))

    brute = 0.0
    for mask in itertools.product([0, 1], repeat=3):
        p_mask = float(torch.prod(torch.tensor([p if m else 1 - p for p, m in zip(pi.tolist(), mask)])))
        for k1, k2 in itertools.product(range(2), range(3)):
            p = p_mask * float(a1[k1].detach()) * float(a2[k2].detach())
            # A discrete net (k2 = 2 is the identity: no second FC) is the formula at 0/1 masks and one-hot ops.
            ops = [torch.eye(2, dtype=torch.float64)[k1], torch.eye(3, dtype=torch.float64)[k2]]
            one = expected_latency(fields, torch.tensor(mask, dtype=torch.float64), ops, widths, table, N_CAND, 8, 2.0)
            brute += p * float(one["total"])
    assert abs(float(lat["total"]) - brute) < 1e-6


def test_linear_fit_recovers_a_linear_table():
    fit = fit_linear(linear_table([32, 16], t0=0.02, t1=3e-6))
    assert fit["r2"] > 0.999999 and abs(fit["t1_ms"] - 3e-6) < 1e-9


def test_request_split_forward_equals_plain_forward():
    torch.manual_seed(0)
    student = MLPStudent(toy_layout(), toy_fields(), [16, 8], dim=4)
    batch = toy_batch()
    split = student.logits(batch)
    student.mlp.request_split = False
    torch.testing.assert_close(student.logits(batch), split, rtol=0, atol=1e-5)
    assert split.shape == (3, N_CAND)


def test_kd_losses_vanish_when_the_student_matches_the_teacher():
    z = torch.randn(4, N_CAND)
    assert float(listwise_kd(z, z)) < 1e-6
    assert float(listwise_kd(z + 3.0, z)) < 1e-6  # per-request shifts do not change a ranking
    assert float(pointwise_kd(z, z)) < float(pointwise_kd(-z, z))


def _search(config: AutoFASConfig, budget: float) -> AutoFASSearch:
    return AutoFASSearch(toy_layout(), toy_fields(), config, linear_table(config.widths), budget, 1.0, N_CAND)


def test_derive_takes_argmax_widths_and_trims_fields_to_the_budget():
    config = AutoFASConfig(n_layers=3, widths=[32, 16, 8], embedding_dim=4, derive_fill=False)
    search = _search(config, budget=100.0)
    with torch.no_grad():
        search.net.alpha[0].copy_(torch.tensor([0.0, 2.0, 0.0]))   # 16
        search.net.alpha[1].copy_(torch.tensor([0.0, 0.0, 0.0, 3.0]))   # identity: layer removed
        search.net.alpha[2].copy_(torch.tensor([0.0, 0.0, 4.0, 0.0]))   # 8
        search.net.gate.logit.copy_(torch.tensor([2.0, -2.0, 2.0, 2.0, 2.0]))
    spec = search.derive()
    assert spec.widths == [16, 8]
    assert spec.fields == ["hour", "poi_id", "tags", "ctr"]
    assert spec.predicted_ms["total"] == pytest.approx(predict_mlp(
        search.fields, spec.fields, [16, 8], search.table, N_CAND, 4, 1.0)["total"])
    # A budget below the kept fields' retrieval drops the lowest π/ĉ first: `hour` (0.2 ms a request) goes.
    search.budget_ms = spec.predicted_ms["total"] - 0.1
    tight = search.derive()
    assert tight.trimmed[0] == "hour" and tight.predicted_ms["total"] <= search.budget_ms
    # With `derive_fill`, the budget left over takes the dropped field back (here there is room for `age`).
    search.config.derive_fill = True
    search.budget_ms = 100.0
    filled = search.derive()
    assert filled.added == ["age"] and filled.fields == [f.name for f in search.fields]


def test_search_steps_move_gates_towards_the_budget():
    """With a budget far below the all-fields latency, the hinge lowers the costly gates' π during search."""
    from rankstack.preranking.data import PrerankSplit

    torch.manual_seed(0)
    batch = toy_batch(requests=24, seed=1)
    split = PrerankSplit(batch, request_ids=torch.arange(24).numpy(), fields=toy_fields())
    config = AutoFASConfig(n_layers=2, widths=[16, 8], embedding_dim=4, search_steps=40, batch_requests=4)
    search = _search(config, budget=0.05)
    before = search.net.gate.keep_prob().detach().clone()
    spec = search.run(split)
    after = search.net.gate.keep_prob().detach()
    assert after[0] < before[0] - 0.2  # `hour`, the costliest field
    assert spec.predicted_ms["total"] <= 0.05 or len(spec.fields) == 1


def test_field_test_keeps_what_the_teacher_needs_and_drops_what_the_net_cannot_see():
    """`derive_test_z`: the teacher here depends on `ctr` alone, and `tags` reaches the supernet as zeros (its
    embedding table is zero and frozen). The held-out permutation test finds `ctr` needed and `tags` worth exactly
    nothing, so derivation drops `tags` and `derive_fill` does not bring it back under a loose budget."""
    from rankstack.preranking.data import PrerankSplit

    torch.manual_seed(0)
    batch = toy_batch(requests=48, seed=2)
    batch["teacher"] = (batch["ctr__bucket"].float() - 10.0) / 2.0
    split = PrerankSplit(batch, request_ids=np.arange(48), fields=toy_fields())
    config = AutoFASConfig(n_layers=1, widths=[16], embedding_dim=4, search_steps=150, batch_requests=8,
                           lr_weights=1e-2, lr_embedding=0.1, heldout_frac=0.5, derive_test_z=2.0)
    search = _search(config, budget=100.0)
    tags = search.net.inputs.embedder.tables["tag"].weight
    with torch.no_grad():
        tags.zero_()
    tags.requires_grad_(False)
    spec = search.run(split)
    assert spec.benefit_z["tags"] == 0.0 and "tags" in spec.failed_test
    assert "tags" not in spec.fields and "tags" not in spec.added
    assert spec.benefit_z["ctr"] >= 2.0 and "ctr" in spec.fields
    assert spec.benefit["ctr"] > max(spec.benefit[name] for name in ("hour", "age", "tags"))
