"""HeMix (hemix.md): parameter accounting, HeteroMixing algebra, stream split, masking, the serving cache, the
§8 ablation switches and gradients reaching every per-head and per-token weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rankstack.config import from_dict
from rankstack.data.loader import BatchLoader
from rankstack.errors import ConfigError
from rankstack.nn.attention import attention_weights
from rankstack.nn.features import FieldLayout, SequenceLayout
from rankstack.ranking.hemix import (
    EventSlice,
    FlatMLPMixer,
    HeMix,
    HeMixConfig,
    HeteroMixing,
    LowRankHeads,
    MixedQueryExtractor,
    PerTokenFFN,
    PerTokenMoE,
    SelfAttentionMixing,
    TokenMixing,
    fuse,
    split_streams,
    unfuse,
)
from tests._ranking import (
    first_batch,
    left_pad,
    one_request,
    perturb,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"dim": 24, "n_layers": 2, "rank": 4, "realtime_len": 3, "tower": [16]}


def fake_layout(streams: tuple[tuple[str, int], ...] = (("history", 100),), num_ns: int = 13, num_items: int = 6,
                tasks: tuple[str, ...] = ("click", "cart", "fav", "buy")) -> FieldLayout:
    """A layout with the field counts of hemix.md §4's reference (13 NS fields, 6 item fields, an action)."""
    ns = tuple((f"ns_{i}", f"ns_{i}") for i in range(num_ns))
    target = tuple((f"item_{i}", f"item_{i}") for i in range(num_items))
    sequences = tuple(SequenceLayout(role, tuple(f"{role}_item_{i}" for i in range(num_items)), f"{role}_action",
                                     max_len) for role, max_len in streams)
    tables = {group: 50 for _, group in ns + target} | {"action": 5}
    return FieldLayout(ns, (), (), target, sequences, tables, (), {key: "request" for key, _ in ns}, tasks)


def hemix(dataset, seed: int = 0, **overrides) -> HeMix:
    torch.manual_seed(seed)
    return HeMix(FieldLayout.from_dataset(dataset), HeMixConfig(**{**SMALL, **overrides}))


def randomise_embeddings(model: HeMix) -> HeMix:
    """Unit-scale embeddings, so that outputs depend visibly on every input (the 1e-4 init hides mistakes)."""
    with torch.no_grad():
        for table in model.embedder.tables.values():
            table.weight.normal_()
    return model


# -- §4 parameter accounting -----------------------------------------------------------------------------------


def test_reference_config_has_the_spec_parameter_breakdown():
    model = HeMix(fake_layout(), HeMixConfig())
    assert model.num_tokens == 12
    assert model.tokenizer.proj.in_features == 304 and model.sequence_tokens.proj.in_features == 112
    counts = model.count_params()
    counts.pop("embeddings")
    assert counts == {
        "dense": 20_654_436, "ffn": 18_920_448, "extraction": 917_504, "tokenizer": 314_368,
        "mixing": 304_224, "towers": 164_868, "sequence_projection": 28_928, "block_norms": 3_072,
        "fixed_queries": 1_024,
    }
    # §4's formula for HeteroMixing: H(2·D_h·r + r + D_h) per layer, D_h = N·d/H.
    d_h = 12 * 256 // 2
    assert counts["mixing"] == 3 * 2 * (2 * d_h * 16 + 16 + d_h)
    # Separate long-term and real-time streams change nothing in the dense parameters.
    two_streams = HeMix(fake_layout((("longterm_seq", 80), ("realtime_seq", 20))), HeMixConfig())
    assert two_streams.count_params()["dense"] == 20_654_436
    batch = {key: torch.randint(0, 50, (2,)) for key in [f"ns_{i}" for i in range(13)] + [f"item_{i}" for i in range(6)]}
    for i in range(6):
        batch[f"history_item_{i}"] = torch.randint(0, 50, (2, 100))
    batch["history_action"] = torch.randint(0, 5, (2, 100))
    assert model.eval()(batch).shape == (2, 4)


# -- HeteroMixing algebra (§3.4) -------------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "dim", "heads"), [(12, 256, 2), (12, 24, 4), (5, 30, 5), (3, 8, 8)])
def test_unfuse_inverts_fuse_and_fuse_gathers_chunk_h_of_every_token(tokens, dim, heads):
    y = torch.randn(2, tokens, dim)
    g = fuse(y, heads)
    c = dim // heads
    assert g.shape == (2, heads, tokens * c)
    for h in range(heads):
        assert torch.equal(g[:, h], torch.cat([y[:, i, h * c:(h + 1) * c] for i in range(tokens)], dim=1))
    assert torch.equal(unfuse(g, tokens), y)


def test_token_mixing_is_rankmixers_when_n_divides_d_and_a_permutation_otherwise():
    y = torch.randn(2, 4, 8)
    out = TokenMixing(4, 8)(y)
    for h in range(4):
        assert torch.equal(out[:, h], torch.cat([y[:, i, 2 * h:2 * h + 2] for i in range(4)], dim=1))
    y = torch.arange(12 * 256, dtype=torch.float).view(1, 12, 256)  # value = token·256 + column
    out = TokenMixing(12, 256)(y)  # HeMix's N = 12 does not divide d = 256
    assert torch.equal(out.flatten().sort().values, y.flatten())
    source_tokens = (out // 256).long()[0]
    assert all(len(set(row.tolist())) == 12 for row in source_tokens), "each output token mixes every token"


def test_hetero_mixing_mixes_across_tokens_and_fusion_groups_keep_groups_apart():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8)
    changed = x.clone()
    changed[:, 0] += 1.0
    whole = HeteroMixing(6, 8, heads=2, rank=4)
    delta = (whole(changed) - whole(x)).abs().sum((0, 2))
    assert (delta[1:] > 0).all(), "one group: every token sees token 0"
    grouped = HeteroMixing(6, 8, heads=2, rank=4, groups=[[0, 1], [2, 3, 4, 5]])
    delta = (grouped(changed) - grouped(x)).abs().sum((0, 2))
    assert delta[1] > 0 and (delta[2:] == 0).all(), "tokens of another group never see token 0"
    assert len(grouped.mlps) == 2 and grouped.mlps[1].down.shape == (2, 4 * 8 // 2, 4)


# -- streams and extraction (§3.2, §3.3) -----------------------------------------------------------------------


def test_split_streams_follows_the_spec():
    assert split_streams(fake_layout((("history", 100),)), 20) == ((EventSlice(0, None, -20),),
                                                                  (EventSlice(0, -20, None),))
    assert split_streams(fake_layout((("history", 20),)), 20) == ((), (EventSlice(0),))
    two = fake_layout((("longterm_seq", 80), ("realtime_seq", 20)))
    assert split_streams(two, 5) == ((EventSlice(0),), (EventSlice(1),))
    long_and_history = fake_layout((("longterm_seq", 80), ("history", 50)))
    assert split_streams(long_and_history, 20) == ((EventSlice(0),), (EventSlice(1, -20, None),))
    assert split_streams(fake_layout((("realtime_seq", 20),)), 5) == ((), (EventSlice(0),))


def test_extractor_masks_padded_keys_and_returns_zeros_for_an_empty_sequence():
    torch.manual_seed(0)
    extractor = MixedQueryExtractor(dim=8, num_dynamic=2, num_fixed=2, heads=2)
    queries, tokens = torch.randn(3, 2, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = extractor(queries, tokens, mask)
    assert out.shape == (3, 4, 8)
    noisy = torch.where(mask.unsqueeze(-1), tokens, torch.randn(3, 5, 8))
    assert torch.equal(extractor(queries, noisy, mask), out)
    assert torch.equal(out[2], torch.zeros(4, 8)), "an all-padding branch gives Z_b = 0"
    k, _ = extractor.keys_values(tokens)
    weights = attention_weights(torch.randn(3, 2, 4, 4), k, mask)
    assert (weights.masked_select(~mask[:, None, None, :]) == 0).all(), "no attention mass on padding"
    assert torch.allclose(weights[:2].sum(-1), torch.ones(2, 2, 4))
    # The re-implementation's quirk: without the mask, padded keys (tokens are 0 there) dilute the softmax.
    quirk = MixedQueryExtractor(dim=8, num_dynamic=2, num_fixed=2, heads=2, key_padding_mask=False)
    quirk.load_state_dict(extractor.state_dict())
    zeroed = tokens * mask.unsqueeze(-1)
    assert not torch.allclose(quirk(queries, zeroed, mask)[:2], extractor(queries, zeroed, mask)[:2])


# -- the serving cache (§11) -----------------------------------------------------------------------------------


CACHE_CONFIGS = {
    "default": {},
    "no_dynamic": {"use_dynamic_queries": False},
    "no_fixed": {"use_fixed_queries": False},
    "no_split": {"use_realtime": False},
    "drop_realtime": {"drop_realtime_events": True},
    "realtime_only": {"use_global": False},
    "attention_mixer": {"mixer": "attention"},
    "mlp_mixer": {"mixer": "mlp"},
    "recency": {"recency": True},
    "recency_no_split": {"recency": True, "use_realtime": False},
    "target_match": {"target_match": True},
    "target_match_one_branch": {"target_match": True, "use_global": False},
    "target_match_no_fixed": {"target_match": True, "use_fixed_queries": False},
    "target_match_recency": {"target_match": True, "recency": True},
    "match_counts": {"match_counts": True},
    "match_counts_and_bits": {"match_counts": True, "target_match": True},
    "match_windows_bits_recency": {"match_counts": True, "match_windows": [1, 3], "target_match": True,
                                   "recency": True},
    "query_mlp": {"query_hidden": 32},
    "query_cross": {"query_cross": 2, "target_match": True, "recency": True},
    "readout_concat": {"readout": "concat", "target_match": True, "recency": True},
    "swiglu": {"ffn": "swiglu", "target_match": True, "recency": True},
    "moe": {"ffn": "moe", "moe_top_k": 2, "target_match": True},
}


@pytest.mark.parametrize("streams", ["two", "history"])
@pytest.mark.parametrize("config", sorted(CACHE_CONFIGS))
def test_cached_scores_equal_the_full_forward(config, streams, datasets):
    dataset = datasets[streams]
    model = randomise_embeddings(hemix(dataset, **CACHE_CONFIGS[config])).eval()
    request = one_request(first_batch(dataset, 16), model, candidates=7)
    with torch.no_grad():
        reference = model(request)
        cache = model.encode_user({k: v[:1] for k, v in request.items()})
        cached = model.score(cache, request)
    assert cache.num_requests == 1 and len(cache.keys) == len(model.branches)
    assert (reference.max(0).values - reference.min(0).values > 1e-3).all(), "candidates score differently"
    assert (cached - reference).abs().max() < 1e-5


@pytest.mark.parametrize("config", ["default", "target_match", "match_counts", "query_cross"])
def test_cache_rows_serve_several_requests_at_once(config, datasets):
    dataset = datasets["two"]
    model = randomise_embeddings(hemix(dataset, **CACHE_CONFIGS[config])).eval()
    batch = first_batch(dataset, 32)
    first, second = one_request(batch, model, 4), one_request({k: v[8:] for k, v in batch.items()}, model, 3)
    both = {k: torch.cat([first[k], second[k]]) for k in batch}
    with torch.no_grad():
        cache = model.encode_user({k: torch.cat([first[k][:1], second[k][:1]]) for k in batch})
        cached = model.score(cache, both, rows=torch.tensor([0, 0, 0, 0, 1, 1, 1]))
        assert (cached - model(both)).abs().max() < 1e-5
        with pytest.raises(ValueError, match="pass `rows`"):
            model.score(cache, both)


def test_cached_scores_on_a_world_request_with_esmm(tiny_world):
    model = randomise_embeddings(hemix(tiny_world, realtime_len=20, esmm=True)).eval()
    batch = next(iter(BatchLoader(tiny_world, "test", 64)))
    request = {k: v[batch["request_id"] == batch["request_id"][0]] for k, v in batch.items()}
    assert len(request["request_id"]) > 1
    for key in model.layout.levels:
        if model.layout.level_of(key) == "request" and key in request:
            assert (request[key] == request[key][0]).all(), f"{key} is request-level"
    with torch.no_grad():
        reference = model(request)
        cached = model.score(model.encode_user({k: v[:1] for k, v in request.items()}), request)
    assert (reference[:, 1] <= reference[:, 0]).all(), "ESMM: p(click and order) <= p(click)"
    assert (cached - reference).abs().max() < 1e-5


@pytest.mark.parametrize("on", [False, True])
def test_query_match_reads_the_query_category_equality(on, tiny_world, datasets):
    """The world's search requests carry the query's category, in the item category's table. Give two categories
    the same embedding and set the query to the candidate's category or to the other one: only `query_match` tells
    them apart. The serving cache agrees with the forward."""
    model = randomise_embeddings(hemix(tiny_world, realtime_len=20, query_match=on)).eval()
    items = [key for key, _ in model.layout.target]
    # the query's category, and where the user is (district, grid cell) against where the candidate is
    assert model.query_pairs == ([("query_category_l2", items.index("category_l2")),
                                  ("user_district", items.index("district")),
                                  ("user_grid", items.index("poi_grid"))] if on else [])
    batch = next(iter(BatchLoader(tiny_world, "test", 64)))
    request = {k: v[batch["request_id"] == batch["request_id"][0]] for k, v in batch.items()}
    own = int(request["category_l2"][0])
    other = next(c for c in range(1, 40) if c != own)
    group = dict(model.layout.ns)["query_category_l2"]
    with torch.no_grad():
        for name, param in model.tokenizer.named_parameters():
            if name == "proj.weight":
                param.normal_()  # unit scale, so that the match column shows
        model.embedder.tables[group].weight[other] = model.embedder.tables[group].weight[own]
        scores = []
        for query in (own, other):
            rows = dict(request, query_category_l2=torch.full_like(request["query_category_l2"], query))
            scores.append(model(rows))
            cached = model.score(model.encode_user({k: v[:1] for k, v in rows.items()}), rows)
            assert (cached - scores[-1]).abs().max() < 1e-5
    moved = (scores[0][0] - scores[1][0]).abs().max()
    assert moved > 1e-4 if on else moved < 1e-7, f"query_match={on}: the score moved by {moved}"
    if on:
        with pytest.raises(ConfigError, match="query_match"):
            hemix(datasets["two"], query_match=True)


# -- §8 ablation switches --------------------------------------------------------------------------------------


def branch_summary(model: HeMix) -> list[tuple[str, int, int, tuple[str, ...]]]:
    roles = [s.role for s in model.layout.sequences]
    return [(b.name, b.num_dynamic, b.num_fixed, tuple(roles[e.stream] for e in b.events)) for b in model.branches]


BRANCH_SWITCHES = {
    "default": ({}, 12, [("realtime_branch", 2, 2, ("realtime_seq",)), ("global_branch", 2, 2, ("longterm_seq",))]),
    "use_fixed_queries": ({"use_fixed_queries": False}, 8,
                          [("realtime_branch", 2, 0, ("realtime_seq",)), ("global_branch", 2, 0, ("longterm_seq",))]),
    "use_dynamic_queries": ({"use_dynamic_queries": False}, 8,
                            [("realtime_branch", 0, 2, ("realtime_seq",)), ("global_branch", 0, 2, ("longterm_seq",))]),
    "use_realtime": ({"use_realtime": False}, 12, [("merged_branch", 4, 4, ("longterm_seq", "realtime_seq"))]),
    "drop_realtime_events": ({"drop_realtime_events": True}, 12, [("global_branch", 4, 4, ("longterm_seq",))]),
    "use_global": ({"use_global": False}, 12, [("realtime_branch", 4, 4, ("realtime_seq",))]),
}


@pytest.mark.parametrize("switch", sorted(BRANCH_SWITCHES))
def test_branch_switches_change_the_structure_and_what_the_model_reads(switch, datasets):
    overrides, num_tokens, branches = BRANCH_SWITCHES[switch]
    dataset = datasets["two"]
    model = randomise_embeddings(hemix(dataset, **overrides)).eval()
    assert model.num_tokens == num_tokens
    assert branch_summary(model) == branches
    assert model.tokenizer.num_queries == 4, "Q is appended whatever the switches"
    assert model.blocks[0].ffn.w1.shape[0] == num_tokens
    batch = first_batch(dataset, 64)
    with torch.no_grad():
        reference = model(batch)
        assert model.tokens(batch).shape == (64, num_tokens, 24)
        for role in ("longterm_seq", "realtime_seq"):
            read = any(role in b[3] for b in branches)
            changed = not torch.allclose(model(perturb(batch, model.layout, "events", (role,))), reference)
            assert changed == read, f"{switch}: reads {role}: {read}, output changed: {changed}"


def test_history_split_ablations_read_the_right_events(datasets):
    """On one undivided history (L_s = 8, L_r = 3): the real-time branch reads only the newest 3 events."""
    dataset = datasets["history"]
    batch = first_batch(dataset, 64)
    older = {k: v.clone() for k, v in batch.items()}
    for column in ("history_category", "history_action"):
        older[column][:, :-3] = torch.where(older["history_poi_id"][:, :-3] != 0, 3, 0)
    newest = {k: v.clone() for k, v in batch.items()}
    for column in ("history_category", "history_action"):
        newest[column][:, -3:] = torch.where(newest["history_poi_id"][:, -3:] != 0, 3, 0)
    expectations = {"default": (True, True), "realtime_only": (False, True), "drop_realtime": (True, False)}
    for name, (reads_older, reads_newest) in expectations.items():
        model = randomise_embeddings(hemix(dataset, **CACHE_CONFIGS[name])).eval()
        with torch.no_grad():
            reference = model(batch)
            assert (not torch.allclose(model(older), reference)) == reads_older, name
            assert (not torch.allclose(model(newest), reference)) == reads_newest, name


def reverse_events(batch: dict[str, torch.Tensor], layout: FieldLayout) -> dict[str, torch.Tensor]:
    """Every row's real events in reverse order (padding stays on the left), the same multiset of events."""
    out = dict(batch)
    for seq in layout.sequences:
        columns = [c for c in (*seq.item_columns, seq.action_column) if c is not None]
        real = batch[columns[0]] != 0
        lengths = real.sum(1, keepdim=True)
        slots = torch.arange(real.shape[1]).expand_as(real)
        first = real.shape[1] - lengths
        source = torch.where(real, first + (real.shape[1] - 1 - slots), slots)
        for column in columns:
            out[column] = batch[column].gather(1, source)
    return out


@pytest.mark.parametrize("split", [True, False])
def test_recency_makes_extraction_see_event_order(split, datasets):
    """Without positions, extraction is a masked softmax over a set: reversing each stream's events changes
    nothing. With `recency` every slot has its own vector, so it does; padding, also extra padding, never matters."""
    dataset = datasets["two"]
    batch = first_batch(dataset, 64)
    for recency in (False, True):
        model = randomise_embeddings(hemix(dataset, recency=recency, use_realtime=split)).eval()
        reversed_batch = reverse_events(batch, model.layout)
        assert any(not torch.equal(reversed_batch[k], batch[k]) for k in batch)
        with torch.no_grad():
            reference = model(batch)
            changed = not torch.allclose(model(reversed_batch), reference, atol=1e-6)
            assert changed == recency, f"recency={recency}: order changed the output: {changed}"
            assert torch.allclose(model(perturb(batch, model.layout, "padding")), reference, atol=1e-6)
            assert torch.allclose(model(left_pad(batch, model.layout, 5)), reference, atol=1e-6)
    assert {name: p.shape for name, p in model.recency.items()} == {
        b.name: (sum(model._slice_length(ev) for ev in b.events), 24) for b in model.branches if b.events}


def mixer_stack_params(model: HeMix) -> int:
    counts = model.count_params()
    return sum(counts.get(part, 0) for part in ("mixing", "ffn", "block_norms"))


def test_mixer_switches_at_the_reference_size():
    layout = fake_layout()
    full = HeMix(layout, HeMixConfig())
    reference = full.count_params()
    d, layers, d_h = 256, 3, 12 * 256 // 2

    attention = HeMix(layout, HeMixConfig(mixer="attention"))
    assert all(isinstance(b.mix, SelfAttentionMixing) for b in attention.blocks)
    assert attention.count_params()["mixing"] == layers * 4 * d * d

    none = HeMix(layout, HeMixConfig(mixer="none"))
    assert all(b.mix is None and b.mix_norm is None for b in none.blocks)
    assert "mixing" not in none.count_params() and none.count_params()["block_norms"] == layers * 2 * d

    rankmixer = HeMix(layout, HeMixConfig(mixer="rankmixer"))
    assert all(isinstance(b.mix, TokenMixing) for b in rankmixer.blocks)
    assert "mixing" not in rankmixer.count_params()

    flat = HeMix(layout, HeMixConfig(mixer="mlp"))
    assert len(flat.blocks) == 0 and isinstance(flat.mlp_mixer, FlatMLPMixer)
    assert len([m for m in flat.mlp_mixer.net if isinstance(m, torch.nn.Linear)]) == layers + 1
    assert abs(flat.count_params()["mixing"] / mixer_stack_params(full) - 1) < 0.1

    shared = HeMix(layout, HeMixConfig(shared_lowrank=True))
    assert shared.count_params()["mixing"] == reference["mixing"] // 2 == layers * (2 * d_h * 16 + 16 + d_h)

    grouped = HeMix(layout, HeMixConfig(fusion_groups=[["Zr"], ["Zg"], ["Q"]]))
    mix = grouped.blocks[0].mix
    assert isinstance(mix, HeteroMixing) and mix.sizes == [4, 4, 4] and len(mix.mlps) == 3

    rms_post = HeMix(layout, HeMixConfig(norm="rmsnorm", norm_position="post"))
    assert isinstance(rms_post.blocks[0].ffn_norm, torch.nn.RMSNorm) and not rms_post.blocks[0].pre_norm


def test_swiglu_ffn_is_the_gated_formula_at_the_gelu_ffns_size():
    """§10's SwiGLU HeteroFFN: per token, W2 (SiLU(W3 y + b3) ⊙ (W1 y + b1)) + b2, hidden round(2k·d/3)."""
    layout = fake_layout()
    gelu, swiglu = (HeMix(layout, HeMixConfig(ffn=ffn)).count_params()["ffn"] for ffn in ("gelu", "swiglu"))
    assert abs(swiglu / gelu - 1) < 0.01
    torch.manual_seed(0)
    ffn = PerTokenFFN(3, 8, 5, gated=True)
    with torch.no_grad():
        ffn.b1.normal_()
        ffn.b2.normal_()
    y = torch.randn(4, 3, 8)
    for i in range(3):
        w1, w3 = ffn.w1[i, :, :5], ffn.w1[i, :, 5:]
        b1, b3 = ffn.b1[i, :5], ffn.b1[i, 5:]
        expected = (F.silu(y[:, i] @ w3 + b3) * (y[:, i] @ w1 + b1)) @ ffn.w2[i] + ffn.b2[i]
        assert torch.allclose(ffn(y)[:, i], expected, atol=1e-6)


def moe_reference(moe: PerTokenMoE, y: torch.Tensor) -> torch.Tensor:
    """§10's sparse-MoE FFN row by row and token by token: the top-k experts of softmax(y W_r), each weighted by
    its router probability."""
    out = torch.zeros_like(y)
    for b in range(y.shape[0]):
        for i in range(y.shape[1]):
            probs = torch.softmax(y[b, i] @ moe.router[i], dim=-1)
            for e in probs.topk(moe.top_k).indices.tolist():
                hidden = F.gelu(y[b, i] @ moe.w1[i, e] + moe.b1[i, e])
                out[b, i] += probs[e] * (hidden @ moe.w2[i, e] + moe.b2[i, e])
    return out


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_moe_ffn_is_the_top_k_mixture_of_each_tokens_experts(top_k):
    torch.manual_seed(0)
    moe = PerTokenMoE(3, 8, 5, experts=4, top_k=top_k)
    with torch.no_grad():
        moe.router.normal_()  # decisive routing, so that rows choose different experts
        moe.b1.normal_()
        moe.b2.normal_()
    y = torch.randn(16, 3, 8)
    assert torch.allclose(moe(y), moe_reference(moe, y), atol=1e-5)
    chosen = moe.route(y)[1].bool()
    assert (chosen.sum(-1) == top_k).all()
    assert top_k == 4 or len({tuple(row) for row in chosen[:, 0].tolist()}) > 1, "rows pick different experts"


def test_moe_balance_loss_is_one_at_even_load_and_higher_when_experts_idle():
    moe = PerTokenMoE(2, 4, 3, experts=4, top_k=1).train()
    y = torch.zeros(8, 2, 4)
    y[:, :, 0] = 1.0
    with torch.no_grad():
        moe.router.zero_()
        moe.router[:, 0, 2] = 50.0  # every row of both tokens to expert 2, probability ≈ 1
    moe(y)
    assert float(moe.balance_loss.detach()) == pytest.approx(4.0, rel=1e-4)
    with torch.no_grad():  # rows 0-1 to expert 0, rows 2-3 to expert 1, … at probability ≈ 1
        moe.router.zero_()
        y = torch.zeros(8, 2, 4)
        for row in range(8):
            y[row, :, row // 2] = 1.0
            moe.router[:, row // 2, row // 2] = 50.0
    moe(y)
    assert float(moe.balance_loss.detach()) == pytest.approx(1.0, rel=1e-4)
    pair = PerTokenMoE(2, 4, 3, experts=4, top_k=2).train()
    with torch.no_grad():  # top-2: every row to experts 0 and 1 at 0.5 each, half the experts idle
        pair.router.zero_()
        pair.router[:, 0, :2] = 50.0
    pair(torch.ones(8, 2, 4))
    assert float(pair.balance_loss.detach()) == pytest.approx(2.0, rel=1e-4)


def test_moe_adds_parameters_not_active_flops_and_its_balance_loss_enters_training_only(datasets):
    torch.manual_seed(0)
    dense, moe = PerTokenFFN(12, 16, 64), PerTokenMoE(12, 16, 64, experts=4, top_k=1)
    assert sum(p.numel() for p in moe.parameters()) == 4 * sum(p.numel() for p in dense.parameters()) + 12 * 16 * 4
    y = torch.randn(32, 12, 16)
    counted = []
    for module in (dense, moe):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(y)
        counted.append(counter.get_total_flops() / 32)
    router_and_combine = 2 * 12 * 16 * 4 * 2
    assert counted[1] - moe.inactive_flops_per_row() == counted[0] + router_and_combine

    dataset = datasets["history"]
    model = randomise_embeddings(hemix(dataset, ffn="moe", moe_balance_weight=0.5))
    batch = first_batch(dataset, 32)
    task = super(HeMix, model).loss(batch)
    balance = sum(block.ffn.balance_loss for block in model.blocks)
    assert balance.requires_grad and balance > 0  # it trains the routers
    assert torch.allclose(model.loss(batch), task + 0.5 * balance)
    assert torch.allclose(model.eval().loss(batch), task)
    diagnostics = model.diagnostics(batch)
    for layer in range(len(model.blocks)):
        assert 1.0 <= diagnostics[f"layer{layer}_moe_load"] <= diagnostics[f"layer{layer}_moe_max_load"] <= 4.0
    with torch.no_grad():  # a zero router ties every expert, and top-1 then sends every row to expert 0
        for block in model.blocks:
            block.ffn.router.zero_()
    assert model.diagnostics(batch)["layer0_moe_load"] == pytest.approx(4.0)


@pytest.mark.parametrize("mixer", ["heteromixer", "attention", "mlp", "none", "rankmixer"])
def test_every_mixer_runs_forward_and_backward(mixer, datasets):
    dataset = datasets["history"]
    model = hemix(dataset, mixer=mixer, norm_position="post" if mixer == "rankmixer" else "pre")
    batch = first_batch(dataset, 16)
    model.loss(batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_norm_and_padding_mask_switches_change_the_outputs(datasets):
    dataset = datasets["two"]
    batch = first_batch(dataset, 32)
    default = randomise_embeddings(hemix(dataset, seed=1)).eval()
    with torch.no_grad():
        reference = default(batch)
        for switch in ({"norm": "rmsnorm"}, {"norm_position": "post"}, {"key_padding_mask": False}):
            other = randomise_embeddings(hemix(dataset, seed=1, **switch)).eval()
            other.load_state_dict(default.state_dict(), strict=False)  # RMSNorm has no bias
            assert not torch.allclose(other(batch), reference, atol=1e-6), switch
        quirk = randomise_embeddings(hemix(dataset, seed=1, key_padding_mask=False)).eval()
        assert not torch.allclose(quirk(left_pad(batch, quirk.layout, 5)), quirk(batch), atol=1e-6), \
            "without the mask, more padding dilutes attention"
        assert torch.allclose(default(left_pad(batch, default.layout, 5)), reference, atol=1e-6)


def test_invalid_configs_are_clear_errors(datasets):
    for bad, message in [({"dim": 30, "mix_heads": 4}, "divisible by mix_heads"),
                         ({"use_fixed_queries": False, "use_dynamic_queries": False}, "keep at least one"),
                         ({"use_global": False, "drop_realtime_events": True}, "cannot be combined"),
                         ({"fusion_groups": [["Zr", "X"]]}, "segment `X`"),
                         ({"ffn": "moe", "moe_experts": 2, "moe_top_k": 3}, "between 1 and moe_experts")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(HeMixConfig, bad)
    with pytest.raises(ConfigError, match="no behaviour events"):
        hemix(datasets["realtime"], drop_realtime_events=True)


# -- §12.1 gradients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", ["gelu", "swiglu", "moe"])
def test_every_per_slot_per_head_and_per_token_weight_gets_a_gradient(ffn, datasets):
    dataset = datasets["history"]
    model = randomise_embeddings(hemix(dataset, ffn=ffn))
    model.loss(first_batch(dataset, 64)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for module in model.modules():
        if isinstance(module, MixedQueryExtractor):
            slices = [*module.fixed_queries.grad, *module.query_weight.grad]
        elif isinstance(module, LowRankHeads):
            slices = [*module.down.grad, *module.up.grad]
        elif isinstance(module, PerTokenFFN):  # SwiGLU: the value and the gate half of w1 apart
            halves = 2 if module.gated else 1
            slices = [half for w in module.w1.grad for half in w.chunk(halves, dim=-1)] + [*module.w2.grad]
        else:
            continue
        assert all(s.abs().sum() > 0 for s in slices), type(module).__name__



# -- §6 diagnostics ----------------------------------------------------------------------------------------------


def uniform_extraction(model: HeMix) -> HeMix:
    """W^Q = 0: every query slot scores every real event 0, so it reads them with equal weights."""
    with torch.no_grad():
        for extractor in model.extractors.values():
            extractor.query_weight.zero_()
    return model


@pytest.mark.parametrize("split", [True, False])
def test_diagnostics_measure_entropy_and_realtime_mass_of_the_attention(split, datasets):
    """With uniform attention over a row's n real events the entropy is log n, and a branch over the whole
    history (L_s = 8) puts the share (real events among the newest L_r = 3) / n on the real-time events."""
    dataset = datasets["history"]
    batch = first_batch(dataset, 64)
    model = uniform_extraction(randomise_embeddings(hemix(dataset, use_realtime=split))).eval()
    report = model.diagnostics(batch)
    real = batch["history_poi_id"] != 0
    newest = torch.arange(8) >= 8 - 3
    spans = ({"realtime_branch": (real[:, -3:], newest[-3:]), "global_branch": (real[:, :-3], newest[:-3])} if split
             else {"merged_branch": (real, newest)})
    for name, (events, recent) in spans.items():
        n = events.sum(1)
        rows = n > 0
        expected = n[rows].double().log().mean().item()
        for j in range(4):  # 2 dynamic and 2 fixed slots per branch
            assert report[f"{name}_slot{j}_entropy"] == pytest.approx(expected, abs=1e-5)
        assert report[f"{name}_dynamic_entropy"] == pytest.approx(expected, abs=1e-5)
        assert report[f"{name}_fixed_entropy"] == pytest.approx(expected, abs=1e-5)
        assert report[f"{name}_uniform_entropy"] == pytest.approx(expected, abs=1e-9)
        share = ((events & recent).sum(1)[rows] / n[rows]).mean().item()
        assert report[f"{name}_realtime_mass"] == pytest.approx(share, abs=1e-5)
    assert report["padding_mass"] == 0.0
    if split:
        assert report["realtime_branch_realtime_mass"] == pytest.approx(1.0)
        assert report["global_branch_realtime_mass"] == 0.0


def test_diagnostics_report_padding_mass_without_the_key_padding_mask(datasets):
    dataset = datasets["history"]
    batch = first_batch(dataset, 64)
    trained = randomise_embeddings(hemix(dataset)).eval()
    assert trained.diagnostics(batch)["padding_mass"] == 0.0
    quirk = randomise_embeddings(hemix(dataset, key_padding_mask=False)).eval()
    assert quirk.diagnostics(batch)["padding_mass"] > 0.1  # the re-impl's padded keys take weight
    # learned attention is sharper than uniform: each slot's entropy sits between 0 and the uniform value
    report = trained.diagnostics(batch)
    uniform = uniform_extraction(trained).diagnostics(batch)
    for key in (k for k in report if k.endswith("_entropy")):
        assert 0.0 <= report[key] <= uniform[key] + 1e-6, key
        branch = next(b.name for b in trained.branches if key.startswith(b.name))
        assert report[key] <= report[f"{branch}_uniform_entropy"] + 1e-6, key


@pytest.mark.parametrize(("mixer", "norm_position"), [("heteromixer", "pre"), ("heteromixer", "post"),
                                                      ("none", "pre"), ("mlp", "pre")])
def test_diagnostics_give_each_blocks_branch_to_residual_norm_ratios(mixer, norm_position, datasets):
    dataset = datasets["history"]
    batch = first_batch(dataset, 64)
    model = randomise_embeddings(hemix(dataset, mixer=mixer, norm_position=norm_position)).eval()
    report = model.diagnostics(batch)
    ratios = sorted(k for k in report if k.startswith("layer"))
    if mixer == "mlp":  # no blocks
        assert ratios == []
        return
    expected = [f"layer{i}_{part}_ratio" for i in range(2) for part in (["ffn", "mix"] if mixer != "none" else ["ffn"])]
    assert ratios == sorted(expected)
    assert all(0 < report[k] < 100 for k in ratios)
    with torch.no_grad():  # a block whose FFN outputs zero adds nothing to its residual stream
        model.blocks[1].ffn.w2.zero_()
        model.blocks[1].ffn.b2.zero_()
        if mixer != "none":
            for p in model.blocks[0].mix.parameters():
                p.zero_()
    zeroed = model.diagnostics(batch)
    assert zeroed["layer1_ffn_ratio"] == 0.0 and zeroed["layer0_ffn_ratio"] > 0
    if mixer != "none":
        assert zeroed["layer0_mix_ratio"] == 0.0
    x = model.tokens(batch)
    for block in model.blocks:
        assert torch.equal(block.residuals(x)[-1], block(x))
        x = block(x)
