"""Every ranking model (hemix.md §5, §12.1): shapes, masking, empty sequences, ONNX export, learning, determinism.

Models run on small hand-built datasets with each stream layout rankstack supports (a real-time stream only, one
undivided `history`, separate `longterm_seq` + `realtime_seq`), with dense numerics at request and candidate
level, and on the tiny synthetic world.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rankstack.config import from_dict
from rankstack.data.dataset import Dataset, DatasetWriter
from rankstack.data.loader import BatchLoader
from rankstack.data.schema import Schema
from rankstack.nn.features import FieldLayout
from rankstack.ranking import MODELS, build_model
from rankstack.ranking.base import RankingModel
from rankstack.ranking.run import load_run_config
from tests._datasets import SCHEMA, toy_rows, write_toy_dataset

# Small sizes so that every test runs in well under a second per model.
SMALL_ARGS: dict[str, dict] = {
    "dlrm": {"top_mlp": [32, 16], "tower": [16]},
    "dcnv2": {"dnn": [32, 16], "tower": [16]},
    "din": {"attention": [16, 8], "mlp": [32, 16], "tower": [16]},
    "rankmixer": {"num_tokens": 6, "dim": 24, "n_layers": 2, "history_heads": 2, "tower": [16]},
    "transformer": {"dim": 24, "heads": 2, "n_layers": 2, "tower": [16]},
    "hemix": {"dim": 24, "n_layers": 2, "rank": 4, "realtime_len": 3, "tower": [16]},
}
MODEL_NAMES = sorted(SMALL_ARGS)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "ranking"


# -- datasets --------------------------------------------------------------------------------------------------


def write_stream_dataset(out: Path, streams: str, rows: int = 1200, seed: int = 0) -> Path:
    """The toy dataset with another stream layout and two dense numerics (`age`: user, request level; `price`:
    item, candidate level).

    streams: `history` (one undivided history of up to 8 events, the toy's real-time events) or `two`
        (`longterm_*` of up to 6 older events beside the toy's `realtime_*`).
    """
    spec = copy.deepcopy(SCHEMA)
    spec["columns"] += [{"name": "age", "kind": "numeric", "role": "user"},
                        {"name": "price", "kind": "numeric", "role": "item"}]
    if streams == "history":
        for col in spec["columns"]:
            if col["name"].startswith("realtime_"):
                col.update(name=col["name"].replace("realtime_", "history_"), role="history", max_len=8)
    else:
        spec["columns"] += [
            {"name": "longterm_poi_id", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "poi_id"},
            {"name": "longterm_category", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "category", "vocab": {"min_count": 2}},
            {"name": "longterm_action", "kind": "sequence", "role": "longterm_seq", "max_len": 6,
             "embedding_group": "action"},
        ]
    schema = from_dict(Schema, spec)
    with DatasetWriter(out, schema, row_group_size=256) as writer:
        for i, split in enumerate(schema.splits):
            n = rows if split == "train" else rows // 4
            data = toy_rows(n, seed + i, start=i * rows)
            rng = np.random.default_rng(seed + 10 + i)
            data["age"] = rng.normal(40, 12, n).astype(np.float32)
            data["price"] = rng.exponential(20, n).astype(np.float32)
            if streams == "history":
                data = {k.replace("realtime_", "history_"): v for k, v in data.items()}
            else:
                older = toy_rows(n, seed + 100 + i)
                for name in ("poi_id", "category", "action"):
                    data[f"longterm_{name}"] = older[f"realtime_{name}"]
            writer.write(split, data)
    return out


def write_datasets(root: Path) -> dict[str, Dataset]:
    """The three stream layouts: `realtime` (the toy dataset), `history` and `two` (`write_stream_dataset`)."""
    return {
        "realtime": Dataset.open(write_toy_dataset(root / "toy", rows=2000)),
        "history": Dataset.open(write_stream_dataset(root / "history", "history")),
        "two": Dataset.open(write_stream_dataset(root / "two", "two")),
    }


def write_tiny_world(root: Path) -> Dataset:
    from rankstack.world import WorldConfig, generate

    return Dataset.open(generate(WorldConfig.preset("tiny"), seed=0, out=root / "world") / "ranking")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Dataset]:
    return write_datasets(tmp_path_factory.mktemp("ranking_models"))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Dataset:
    return write_tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(name: str, dataset: Dataset, seed: int = 0, **overrides) -> RankingModel:
    torch.manual_seed(seed)
    return build_model(name, {**SMALL_ARGS[name], **overrides}, FieldLayout.from_dataset(dataset))


def first_batch(dataset: Dataset, size: int = 64, split: str = "train") -> dict[str, torch.Tensor]:
    return next(iter(BatchLoader(dataset, split, size)))


def sequence_columns(layout: FieldLayout) -> list[str]:
    return [c for s in layout.sequences for c in (*s.item_columns, s.action_column) if c is not None]


def feature_keys(layout: FieldLayout) -> list[str]:
    """The batch keys a model reads, in a fixed order (the inputs of an exported graph)."""
    return ([k for k, _ in layout.ns] + [k for k, _ in layout.multi_valued] + list(layout.dense)
            + [k for k, _ in layout.target] + sequence_columns(layout))


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


def perturb(batch: dict[str, torch.Tensor], layout: FieldLayout, where: str,
            roles: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """A copy of `batch` with new ids in every sequence column except the first of each stream (which defines the
    mask) at padded positions (`where="padding"`) or at the newest event of non-empty rows (`"events"`); only in
    the streams of `roles` when given."""
    out = dict(batch)
    generator = torch.Generator().manual_seed(7)
    for seq in layout.sequences:
        if roles is not None and seq.role not in roles:
            continue
        columns = [c for c in (*seq.item_columns, seq.action_column) if c is not None]
        mask = batch[columns[0]] != 0
        where_mask = ~mask if where == "padding" else mask & (torch.arange(mask.shape[1]) == mask.shape[1] - 1)
        for column in columns[1:]:
            noise = torch.randint(2, 5, batch[column].shape, generator=generator)
            out[column] = torch.where(where_mask, noise, batch[column])
    return out


def left_pad(batch: dict[str, torch.Tensor], layout: FieldLayout, extra: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for column in sequence_columns(layout):
        out[column] = torch.nn.functional.pad(batch[column], (extra, 0))
    return out


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


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_matches_pytorch(name, datasets):
    """The torch.export-based ONNX exporter (needs `onnxscript`), with a dynamic batch axis."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    dataset = datasets["two"]
    model = make_model(name, dataset).eval()
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
