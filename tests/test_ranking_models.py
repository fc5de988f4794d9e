"""Every ranking model (hemix.md §5, §12.1): shapes, masking, empty sequences, ONNX export, learning, determinism.

Models run on small hand-built datasets with each stream layout rankstack supports (a real-time stream only, one
undivided `history`, separate `longterm_seq` + `realtime_seq`), with dense numerics at request and candidate
level, and on the tiny synthetic world.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from rankstack.config import from_dict
from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader
from rankstack.errors import ConfigError
from rankstack.nn.features import match_count_features, target_matches
from rankstack.ranking import MODELS
from rankstack.ranking.base import RankingModel
from rankstack.ranking.run import load_run_config
from tests._ranking import (
    CONFIG_DIR,
    MODEL_NAMES,
    feature_keys,
    first_batch,
    left_pad,
    make_model,
    one_request,
    perturb,
    sequence_columns,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# -- tests -----------------------------------------------------------------------------------------------------


def test_every_model_is_registered():
    assert set(MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("dataset", ["world_medium", "world_small", "beauty", "sports"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_has_a_valid_config_per_benchmark_dataset(name, dataset):
    path = CONFIG_DIR / f"{name}_{dataset}.yaml"
    config = load_run_config(path, {"data": "overridden"})
    assert config.model.name == name
    model_config = from_dict(MODELS[name][1], config.model.args, where=str(path))
    if path.name == "dlrm_world_small.yaml":
        return  # the foundation demo's config (`make demo`), smaller than the benchmark recipe
    assert model_config.embedding_dim == 16 and model_config.tower == [128, 64]
    assert config.trainer.embedding_optimizer == "adagrad" and config.trainer.grad_clip_norm == 10.0


@pytest.mark.parametrize("streams", ["realtime", "history", "two"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_loss_and_gradients(name, streams, datasets):
    dataset = datasets[streams]
    model = make_model(name, dataset)
    batch = first_batch(dataset, 32)
    probs = model(batch)
    assert probs.shape == (32, len(model.tasks))
    assert ((probs > 0) & (probs < 1)).all()
    assert set(model.predict(batch)) == set(model.tasks)
    loss = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    dense = [(n, p) for n, p in model.named_parameters() if not n.startswith("embedder.") and p.numel()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in dense)
    no_gradient = [n for n, p in dense if p.grad.abs().sum() == 0]
    # A dataset with only a real-time stream gives HeMix's global branch nothing to read (its Z_g is 0).
    expected = [n for n, _ in dense if n.startswith("extractors.global_branch.")] if (name, streams) == (
        "hemix", "realtime") else []
    assert no_gradient == expected, f"{name}: parameters without gradient: {no_gradient}"


@pytest.mark.parametrize("streams", ["history", "two"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_does_not_change_outputs(name, streams, datasets):
    dataset = datasets[streams]
    model = make_model(name, dataset).eval()
    layout = model.layout
    with torch.no_grad():
        for p in model.embedder.parameters():  # embeddings large enough that a leak would show
            p.normal_()
        batch = first_batch(dataset, 64)
        reference = model(batch)
        assert torch.allclose(model(perturb(batch, layout, "padding")), reference, atol=1e-6)
        # The same perturbation at real events does reach the output, so the check above can fail.
        assert not torch.allclose(model(perturb(batch, layout, "events")), reference, atol=1e-4)
        if name != "transformer":  # its recency table has one row per slot of the dataset's max_len
            assert torch.allclose(model(left_pad(batch, layout, 5)), reference, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_sequences_give_finite_outputs_and_gradients(name, datasets):
    dataset = datasets["two"]
    model = make_model(name, dataset)
    batch = first_batch(dataset, 16)
    for column in sequence_columns(model.layout):
        batch[column] = torch.zeros_like(batch[column])
    assert torch.isfinite(model(batch)).all()
    model.loss(batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.eval()(batch)).all()


@pytest.mark.parametrize(("name", "overrides"), [(name, {}) for name in MODEL_NAMES]
                         + [("hemix", {"target_match": True}), ("hemix", {"query_hidden": 32}), ("hemix", {"query_cross": 1}),
                            ("hemix", {"match_counts": True, "target_match": True}),
                            ("hemix", {"target_match": True, "recency": True}),
                            ("hemix", {"ffn": "swiglu"}), ("hemix", {"ffn": "moe", "moe_top_k": 2}),
                            ("din", {"target_match": True}), ("dcnv2", {"match_counts": True}),
                            ("dcnv2", {"match_counts": True, "match_windows": [1, 3]})])
def test_onnx_export_matches_pytorch(name, overrides, datasets):
    """The torch.export-based ONNX exporter (needs `onnxscript`), with a dynamic batch axis."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    dataset = datasets["two"]
    model = make_model(name, dataset, **overrides).eval()
    keys = feature_keys(model.layout)
    batch = {k: v for k, v in first_batch(dataset, 8).items() if k in keys}
    size = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (), kwargs={"batch": batch}, dynamo=True, optimize=False,
                                    dynamic_shapes={"batch": {k: {0: size} for k in batch}}, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [f"batch_{k}" for k in batch]
    for rows in (8, 3):
        inputs = {k: v[:rows] for k, v in batch.items()}
        (onnx_probs,) = session.run(None, {n: v.numpy() for n, v in zip(names, inputs.values())})
        with torch.no_grad():
            torch_probs = model(inputs).numpy()
        assert onnx_probs.shape == torch_probs.shape == (rows, len(model.tasks))
        np.testing.assert_allclose(onnx_probs, torch_probs, rtol=0, atol=1e-5)


def train_steps(model: RankingModel, dataset: Dataset, steps: int, batch_size: int = 128, seed: int = 0,
                lr: float = 3e-3) -> list[float]:
    """`steps` Adam steps (embeddings at 10× the dense rate, as the trainer's defaults); the losses."""
    embedding = list(model.embedder.parameters())
    dense = [p for n, p in model.named_parameters() if not n.startswith("embedder.")]
    optimizer = torch.optim.Adam([{"params": dense, "lr": lr}, {"params": embedding, "lr": 10 * lr}])
    loader = BatchLoader(dataset, "train", batch_size, shuffle=True, seed=seed)
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
        loader.set_epoch(loader.epoch + 1)
    return losses


@torch.no_grad()
def train_loss(model: RankingModel, dataset: Dataset, rows: int = 2048) -> float:
    """Mean loss over the first `rows` training rows, in evaluation mode."""
    model.eval()
    batch = first_batch(dataset, rows)
    return model.loss(batch).item()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_lowers_the_loss_on_the_toy_dataset(name, datasets):
    dataset = datasets["realtime"]
    model = make_model(name, dataset)
    before = train_loss(model, dataset)
    train_steps(model, dataset, steps=40)
    after = train_loss(model, dataset)
    assert after < before - 0.01, f"{name}: training loss {before:.4f} → {after:.4f}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_lowers_the_loss_on_the_tiny_world(name, tiny_world):
    model = make_model(name, tiny_world)
    before = train_loss(model, tiny_world, rows=1024)
    train_steps(model, tiny_world, steps=10)
    after = train_loss(model, tiny_world, rows=1024)
    # Mostly the click and order base rates, far below the 0.5 of a fresh model: a smoke test on real-sized
    # streams (100 long-term + 20 real-time events), not a quality bar.
    assert after < before - 0.1, f"{name}: training loss {before:.4f} → {after:.4f}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_fixed_seed_gives_the_same_model_and_the_same_training(name, datasets):
    dataset = datasets["two"]
    first, second, other = (make_model(name, dataset, seed=s) for s in (3, 3, 4))
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))
    assert train_steps(first, dataset, steps=4, seed=1) == train_steps(second, dataset, steps=4, seed=1)


# -- benchmarks (rankstack.ranking.bench, benchmarks/ranking_gpu.py) ---------------------------------------------


def test_synthetic_request_shares_user_fields_and_cached_serving_matches():
    from rankstack.ranking.bench import serving_throughput, synthetic_layout, synthetic_request
    from rankstack.ranking.hemix import HeMixConfig

    layout = synthetic_layout(request_ns=3, candidate_ns=2, item_fields=3, sequence_item_fields=2,
                              streams=(("longterm_seq", 12), ("realtime_seq", 4)), item_vocab=50)
    request = synthetic_request(layout, 9)
    for key, _ in layout.ns:
        shared = bool((request[key] == request[key][0]).all())
        assert shared == (layout.level_of(key) == "request"), key
    assert (request["longterm_seq_action"] == request["longterm_seq_action"][0]).all()
    result = serving_throughput(layout, HeMixConfig(dim=16, n_layers=1, rank=4, realtime_len=4, tower=[8]),
                                candidates=9, repeats=1)
    assert result["cached_equals_uncached"] and result["max_abs_difference"] < 1e-5
    assert result["min_score_spread"] > 1e-4, "candidates must score differently for the check to mean anything"
    assert result["candidates_per_s"]["cached"] > 0 and result["candidates_per_s"]["uncached"] > 0


def test_serve_with_switches_parse_flags_and_counts():
    from rankstack.errors import ConfigError
    from rankstack.ranking.bench import switch_values

    assert switch_values(["target_match", "query_cross=2"]) == {"target_match": True, "query_cross": 2}
    for bad in ["query_cross", "recency=1", "query_cross=two", "dim=64"]:
        with pytest.raises(ConfigError, match="--serve-with takes target_match, query_match, recency or query_cross=N"):
            switch_values([bad])


def test_mixing_cost_model_equals_the_counted_macs():
    from rankstack.ranking.bench import mixing_vs_attention

    result = mixing_vs_attention(tokens=6, dim=32, batch=4, rank=4, attention_heads=4, repeats=1)
    counted, model = result["counted_macs_per_sample"], result["cost_model"]
    assert counted["heteromixing"] == model["heteromixing_macs"]
    assert counted["self_attention"] == model["attention_macs"]
    assert counted["heteromixer_block"] == model["heteromixing_macs"] + model["ffn_macs"]
    assert set(result["seconds_median"]) == {"heteromixing", "self_attention", "heteromixer_block", "attention_block"}


def test_gpu_benchmark_script_runs_on_the_cpu_in_smoke_mode(tmp_path, monkeypatch):
    import json
    import runpy

    out = tmp_path / "gpu.json"
    script = CONFIG_DIR.parent.parent / "benchmarks" / "ranking_gpu.py"
    monkeypatch.setattr("sys.argv", [str(script), "--device", "cpu", "--smoke", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["smoke"] and result["samples_per_s"] > 0
    assert result["train_flops_per_sample"] > 2 * result["forward_flops_per_sample"] > 0
    assert result["bf16_vs_fp32"]["within_tolerance"]
    assert result["params"]["dense"] > 0


def test_sweep_runs_once_reads_finished_runs_back_and_tabulates(tiny_world_dir, tmp_path):
    from rankstack.ranking.sweep import format_table, model_cost, run_or_load, summarise

    config = CONFIG_DIR / "dlrm_world_small.yaml"
    overrides = {"data": str(tiny_world_dir / "ranking"), "trainer.max_steps": 2, "model.args.top_mlp": [16],
                 "eval_max_rows": 500}
    first = run_or_load(config, overrides, tmp_path / "dlrm")
    stamp = (tmp_path / "dlrm" / "results.json").stat().st_mtime_ns
    again = run_or_load(config, {**overrides, "trainer.max_steps": 1000}, tmp_path / "dlrm")
    assert again == json.loads(json.dumps(first)) and (tmp_path / "dlrm" / "results.json").stat().st_mtime_ns == stamp
    assert first["train"]["steps"] == 2

    other = {**first["test"], "click_auc": first["test"]["click_auc"] + 0.01}
    rows = [{"model": "dlrm", "test": first["test"]}, {"model": "dlrm", "test": other}]
    summary = summarise(rows, "model", ("click", "order"))
    mean, std = summary["dlrm"]["click_auc"]
    assert summary["dlrm"]["runs"] == 2
    assert mean == pytest.approx(first["test"]["click_auc"] + 0.005) and std == pytest.approx(0.01 / np.sqrt(2))
    table = format_table(summary, ("click", "order"))
    assert "| dlrm | 2 |" in table and "| bayes |" in table and "| popularity |" in table
    cost = model_cost(config, overrides)
    assert cost["dense_params"] > 0 and cost["forward_flops_per_sample"] > 0


def test_sweep_trains_runs_in_parallel_processes_as_it_would_one_by_one(tiny_world_dir, tmp_path):
    from rankstack.ranking.sweep import run_all

    config = CONFIG_DIR / "dlrm_world_small.yaml"
    runs = [(config, {"data": str(tiny_world_dir / "ranking"), "trainer.max_steps": 2, "model.args.top_mlp": [16],
                      "eval_max_rows": 500, "trainer.seed": seed}, tmp_path / "parallel" / f"seed{seed}")
            for seed in (0, 1)]
    assert run_all(runs, collect_only=True) == [None, None]  # nothing finished, nothing trained
    assert not (tmp_path / "parallel").exists()
    parallel = run_all(runs, jobs=2)
    alone = run_all([(config, runs[1][1], tmp_path / "alone")])
    assert parallel[1]["test"] == alone[0]["test"] and parallel[0]["test"] != parallel[1]["test"]
    assert run_all(runs, collect_only=True) == parallel


def test_din_activation_unit_equals_the_concatenation_formula_and_dice_reads_real_events_only():
    """The fast first layer (the target's term once per row) is DIN's MLP on [h̄ ; x ; h̄ − x ; h̄ ⊙ x] with Dice,
    whose batch moments and running averages come from the real events only."""
    from rankstack.ranking.din import ActivationUnit

    torch.manual_seed(0)
    unit = ActivationUnit(12, [8, 4])
    for dice in unit.dice:
        torch.nn.init.normal_(dice.alpha)
    history, target = torch.randn(5, 7, 12), torch.randn(5, 12)
    mask = torch.rand(5, 7) > 0.3

    def reference(history: torch.Tensor) -> torch.Tensor:
        x = target.unsqueeze(1).expand_as(history)
        h = torch.cat([history, x, history - x, history * x], dim=-1)
        for linear, dice in zip(unit.linears, unit.dice):
            s = linear(h)
            real = s[mask]
            mean, var = real.mean(0), real.var(0, unbiased=False)
            p = torch.sigmoid((s - mean) / torch.sqrt(var + dice.eps))
            h = p * s + (1 - p) * dice.alpha * s
        return unit.score(h).squeeze(-1)

    expected = reference(history)
    got = unit(history, target, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    x = target.unsqueeze(1).expand_as(history)
    first = unit.linears[0](torch.cat([history, x, history - x, history * x], dim=-1)[mask])
    torch.testing.assert_close(unit.dice[0].running_mean, 0.1 * first.mean(0), atol=1e-6, rtol=1e-5)
    noisy = history.masked_fill(~mask.unsqueeze(-1), 1e3)  # padded events: other values, same real-event outputs
    torch.testing.assert_close(unit(noisy, target, mask)[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_din_fuxictr_options_pool_items_only_and_take_dice_moments_like_batchnorm(datasets):
    """`pool_actions: false` makes the score independent of the events' actions; `dice_padding: true` gives
    Dice the moments of `BatchNorm1d(affine=False)` over the flattened history, padded events included (FuxiCTR)."""
    from rankstack.ranking.din import Dice

    dataset = datasets["two"]
    batch = first_batch(dataset, 32)
    actions = {s.action_column for s in make_model("din", dataset).layout.sequences} - {None}
    assert actions
    shuffled = {k: (v[torch.randperm(len(v))] if k in actions else v) for k, v in batch.items()}
    for pool, independent in ((True, False), (False, True)):
        model = make_model("din", dataset, pool_actions=pool).eval()
        with torch.no_grad():
            for p in model.embedder.parameters():
                p.normal_()
            same = torch.allclose(model(shuffled), model(batch), atol=1e-6)
        assert same == independent, f"pool_actions={pool}"
    torch.manual_seed(0)
    s, mask = torch.randn(6, 9, 5), torch.rand(6, 9) > 0.4
    dice, bn = Dice(5), torch.nn.BatchNorm1d(5, affine=False, eps=1e-8)
    torch.nn.init.normal_(dice.alpha)
    p = torch.sigmoid(bn(s.reshape(-1, 5))).reshape_as(s)
    torch.testing.assert_close(dice(s, torch.ones_like(mask)), p * s + (1 - p) * dice.alpha * s)
    assert not torch.allclose(dice(s, mask), p * s + (1 - p) * dice.alpha * s, atol=1e-3)
    model = make_model("din", dataset, dice_padding=True)
    captured = []
    model.activation_unit.dice[0].register_forward_hook(lambda m, args, out: captured.append(args[1]))
    model(batch)
    assert captured[0].all()


def test_din_fuxictr_init_and_dice_momentum_options(datasets):
    """`linear_init: xavier_normal` redraws every Linear Xavier-normal with zero biases and leaves the embeddings
    alone; `dice_momentum` is the weight of a training batch in every Dice's running moments."""
    dataset = datasets["two"]
    torch.manual_seed(0)
    default = make_model("din", dataset)
    torch.manual_seed(0)
    model = make_model("din", dataset, linear_init="xavier_normal", dice_momentum=0.01)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None or not m.bias.any() for m in linears)
    widest = max(linears, key=lambda m: m.weight.numel())
    fan_out, fan_in = widest.weight.shape
    assert widest.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    assert any(m.bias.any() for m in default.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    for mine, theirs in zip(model.embedder.parameters(), default.embedder.parameters()):
        torch.testing.assert_close(mine, theirs)
    batch = first_batch(dataset, 32)
    torch.manual_seed(0)
    fast = make_model("din", dataset, linear_init="xavier_normal", dice_momentum=0.1)  # the same weights
    model(batch)  # training-mode forwards: each Dice's running mean moves by `momentum` × the batch mean
    fast(batch)
    for slow_dice, fast_dice in zip(model.activation_unit.dice, fast.activation_unit.dice, strict=True):
        assert slow_dice.momentum == 0.01 and slow_dice.running_mean.abs().max() > 0
        torch.testing.assert_close(fast_dice.running_mean, 10 * slow_dice.running_mean, atol=1e-6, rtol=1e-4)
    with pytest.raises(ConfigError, match="dice_momentum"):
        make_model("din", dataset, dice_momentum=0.0)

# -- target_match (HeMix and DIN's option) and match_counts (the others') -------------------------------------------


def test_target_matches_marks_equal_fields_and_never_padding():
    events = torch.tensor([[[3, 7], [3, 0], [0, 0], [5, 7]]])  # [B=1, L=4, F=2]; event 2 is padding
    assert target_matches(events, torch.tensor([[3, 7]])).tolist() == [[[1, 1], [1, 0], [0, 0], [0, 1]]]
    assert target_matches(events, torch.tensor([[0, 0]])).sum() == 0  # a padding id matches nothing


#: Each model's match option: per-event bits for the sequence models, dense counts for the others (and for HeMix,
#: so that it can take the baselines' input too).
MATCH_OPTIONS = [("hemix", "target_match"), ("hemix", "match_counts"), ("din", "target_match"),
                 ("dlrm", "match_counts"), ("dcnv2", "match_counts"), ("rankmixer", "match_counts"),
                 ("transformer", "match_counts")]


def test_match_counts_count_the_events_equal_to_the_candidate(datasets):
    model = make_model("dcnv2", datasets["two"], match_counts=True)
    batch = first_batch(datasets["two"], 4)
    key, _ = model.layout.target[0]
    for seq in model.layout.sequences:  # every real event shares the candidate's first item field
        column = seq.item_columns[0]
        batch[column] = torch.where(batch[column] != 0, batch[key].unsqueeze(1), 0)
    counts = model.embedder.match_count_values(batch).unflatten(1, (len(model.layout.sequences), -1))
    for s, seq in enumerate(model.layout.sequences):
        events = (batch[seq.item_columns[0]] != 0).sum(1).float()
        assert torch.allclose(counts[:, s, 0], torch.log1p(events))
    emb = model.embedder(batch)
    assert emb.dense.shape[1] == model.embedder.num_dense == len(model.layout.dense) + counts[0].numel()


def test_match_windows_count_the_newest_events_only(datasets):
    """`match_windows` adds the counts over each stream's newest w slots (newest event last, padding on the left)."""
    events = torch.tensor([[[0], [3], [5], [3]], [[3], [3], [3], [5]]])  # [B=2, L=4, F=1]
    counts = match_count_features([events], torch.tensor([[3], [3]]), windows=(1, 2, 3))
    assert torch.equal(counts, torch.log1p(torch.tensor([[2.0, 1, 1, 2], [3, 0, 1, 2]])))
    assert match_count_features([], torch.tensor([[3], [3]]), windows=(1,)).shape == (2, 0)  # no behaviour streams
    model = make_model("dcnv2", datasets["two"], match_counts=True, match_windows=[1, 3])
    batch = first_batch(datasets["two"], 4)
    per_count = len(model.layout.sequences) * model.embedder.num_item_fields
    assert model.embedder(batch).dense.shape[1] == model.embedder.num_dense == len(model.layout.dense) + 3 * per_count
    with pytest.raises(ConfigError, match="match_windows needs match_counts"):
        make_model("dcnv2", datasets["two"], match_windows=[1])
    with pytest.raises(ConfigError, match="newest events ≥ 1"):
        make_model("dlrm", datasets["two"], match_counts=True, match_windows=[0])
    with pytest.raises(ConfigError, match="match_windows needs match_counts"):
        make_model("hemix", datasets["two"], match_windows=[1])
    counts_only = make_model("hemix", datasets["two"], match_counts=True)
    windows = make_model("hemix", datasets["two"], match_counts=True, match_windows=[1, 3])
    assert windows._query_input_width() == counts_only._query_input_width() + 2 * per_count
    assert torch.isfinite(windows(batch)).all()


@pytest.mark.parametrize("streams", ["two", "history"])
@pytest.mark.parametrize(("name", "option"), MATCH_OPTIONS)
def test_target_match_reads_equality_not_embeddings(name, option, streams, datasets):
    """Give two ids the same embedding and swap one for the other in the events: a model that sees only
    embeddings cannot tell; with its match option (`target_match`, or `match_counts` for the models without a
    per-event module) the events stop matching the candidate and the score moves. HeMix's serving cache agrees
    with its forward on the matching request."""
    dataset = datasets[streams]
    for on in (False, True):
        model = make_model(name, dataset, **{option: on}).eval()
        request = one_request(first_batch(dataset, 16), model, candidates=5)
        key, group = model.layout.target[0]
        own, other = int(request[key][0]), int(request[key][0]) % 40 + 1
        with torch.no_grad():
            for param_name, param in model.named_parameters():  # unit scale, so that every input shows
                if param_name.startswith("embedder.") or "match" in param_name:
                    param.normal_()
            model.embedder.tables[group].weight[other] = model.embedder.tables[group].weight[own]
        matching, swapped = dict(request), dict(request)
        for seq in model.layout.sequences:
            column, mask = seq.item_columns[0], request[seq.item_columns[0]] != 0
            matching[column] = torch.where(mask, own, 0)
            swapped[column] = torch.where(mask, other, 0)
        with torch.no_grad():
            moved = (model(matching)[0] - model(swapped)[0]).abs().max()
            if name == "hemix":
                cached = model.score(model.encode_user({k: v[:1] for k, v in matching.items()}), matching)
                assert (cached - model(matching)).abs().max() < 1e-5
        # The counts reach DLRM through its freshly initialised bottom MLP, which moves the score less.
        floor = 1e-3 if option == "target_match" else 1e-5
        assert moved > floor if on else moved < 1e-7, f"{name} {option}={on}: the score moved by {moved}"
    if option == "target_match" and name == "hemix":
        assert model.count_params()["sequence_projection"] == sum(
            p.numel() for p in (*model.sequence_tokens.parameters(), model.target_match))
