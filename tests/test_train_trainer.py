"""In-process tests of `rankstack.train.Trainer` on the toy click model: learning, the two optimisers, clipping,
early stopping, atomic checkpoints, determinism and the files a run leaves behind."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from _toy_training import ToyLoader, ToyModel, make_dataset, make_evaluate
from torch import nn

from rankstack.errors import ConfigError, RankstackError
from rankstack.train import (
    Trainer,
    TrainerConfig,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    split_parameters,
)
from rankstack.train.logging import TRAIN_COLUMNS


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared cores: intra-op threads would only contend with the other tests.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_config(**overrides) -> TrainerConfig:
    defaults = dict(
        epochs=2,
        lr_dense=1e-2,
        lr_embedding=5e-2,
        eval_every_steps=8,
        checkpoint_every_steps=16,
        log_every_steps=4,
        device="cpu",
        progress_bar=False,
        tensorboard=False,
    )
    return TrainerConfig(**{**defaults, **overrides})


def train_toy(run_dir, config: TrainerConfig) -> tuple[nn.Module, dict]:
    seed_everything(config.seed)
    model = ToyModel(dropout=0.2)
    loader = ToyLoader(make_dataset(512, seed=1), batch_size=16, seed=config.seed)
    evaluate = make_evaluate(make_dataset(256, seed=2))
    return model, Trainer(model, loader, config, run_dir, evaluate=evaluate).fit()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_learns_and_writes_csv_tensorboard_and_metrics(tmp_path):
    config = toy_config(tensorboard=True, early_stopping_metric="logloss", early_stopping_mode="min")
    _, metrics = train_toy(tmp_path, config)

    rows = read_csv(tmp_path / "train_log.csv")
    with open(tmp_path / "train_log.csv") as f:
        header = f.readline().strip().split(",")
    assert header == [*TRAIN_COLUMNS, "eval_logloss", "eval_accuracy"]
    train_rows = [r for r in rows if r["loss"]]
    eval_rows = [r for r in rows if r["eval_logloss"]]
    # 32 steps per epoch, 2 epochs: a train row every 4 steps, an eval every 8 steps (epoch ends included).
    assert [int(r["step"]) for r in train_rows] == list(range(4, 65, 4))
    assert [int(r["step"]) for r in eval_rows] == list(range(8, 65, 8))
    assert {r["epoch"] for r in train_rows} == {"0", "1"}
    assert float(train_rows[-1]["loss"]) < 0.6 * float(train_rows[0]["loss"])
    assert float(eval_rows[-1]["eval_accuracy"]) > max(0.9, float(eval_rows[0]["eval_accuracy"]) + 0.1)
    assert float(eval_rows[-1]["eval_logloss"]) < float(eval_rows[0]["eval_logloss"])
    for row in train_rows:
        assert float(row["lr"]) == config.lr_dense
        assert float(row["lr_embedding"]) == config.lr_embedding
        assert float(row["grad_norm"]) > 0 and float(row["samples_per_s"]) > 0

    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["steps"] == 64 and saved["epochs_completed"] == 2.0 and saved["samples"] == 1024
    assert saved["final"]["accuracy"] == float(eval_rows[-1]["eval_accuracy"])
    assert saved["monitor"] == {"metric": "logloss", "mode": "min", "value": saved["best"]["logloss"]}
    assert saved["best"]["logloss"] == min(float(r["eval_logloss"]) for r in eval_rows)
    assert saved["wall_time_s"] > 0 and saved["samples_per_s"] > 0 and not saved["stopped_early"]

    best = load_weights(
        tmp_path / ("best.safetensors" if (tmp_path / "best.safetensors").exists() else "best.pt")
    )
    assert set(best) == set(ToyModel().state_dict())


def test_linear_warmup_raises_both_rates_to_their_value_then_holds_them(tmp_path):
    config = toy_config(warmup_steps=10, log_every_steps=1, eval_every_steps=None, epochs=1)
    train_toy(tmp_path, config)
    rows = [r for r in read_csv(tmp_path / "train_log.csv") if r["loss"]]
    assert [int(r["step"]) for r in rows] == list(range(1, 33))
    for row in rows:
        scale = min(1.0, int(row["step"]) / 10)
        assert float(row["lr"]) == pytest.approx(config.lr_dense * scale, rel=1e-12)
        assert float(row["lr_embedding"]) == pytest.approx(config.lr_embedding * scale, rel=1e-12)


def test_warmup_changes_training_and_zero_warmup_is_the_default(tmp_path):
    assert TrainerConfig().warmup_steps == 0
    plain, _ = train_toy(tmp_path / "plain", toy_config(epochs=1))
    warm, _ = train_toy(tmp_path / "warm", toy_config(epochs=1, warmup_steps=16))
    differs = [not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), warm.state_dict().values())]
    assert any(differs)


def test_embeddings_and_dense_params_have_their_own_optimizer_and_lr(tmp_path):
    model = ToyModel()
    config = toy_config(lr_dense=1e-3, lr_embedding=5e-2, weight_decay=0.1, embedding_optimizer="adagrad")
    trainer = Trainer(model, ToyLoader(make_dataset(64, seed=1), 16), config, tmp_path)
    embedding, dense = split_parameters(model)
    assert [id(p) for p in embedding] == [id(model.user.weight)]
    assert {id(p) for p in dense} == {id(p) for p in model.mlp.parameters()}

    (emb_group,) = trainer.embedding_optimizer.param_groups
    (dense_group,) = trainer.dense_optimizer.param_groups
    assert isinstance(trainer.embedding_optimizer, torch.optim.Adagrad)
    assert isinstance(trainer.dense_optimizer, torch.optim.AdamW)
    assert [id(p) for p in emb_group["params"]] == [id(model.user.weight)]
    assert {id(p) for p in dense_group["params"]} == {id(p) for p in model.mlp.parameters()}
    assert (emb_group["lr"], emb_group["weight_decay"]) == (5e-2, 0.0)
    assert (dense_group["lr"], dense_group["weight_decay"]) == (1e-3, 0.1)


@pytest.mark.parametrize("frozen", ["dense", "embedding"])
def test_each_learning_rate_drives_only_its_group(tmp_path, frozen):
    seed_everything(0)
    model = ToyModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lrs = (
        {"lr_dense": 0.0, "lr_embedding": 1e-2}
        if frozen == "dense"
        else {"lr_dense": 1e-2, "lr_embedding": 0.0}
    )
    Trainer(model, ToyLoader(make_dataset(64, seed=1), 16), toy_config(epochs=1, **lrs), tmp_path).fit()
    embedding_changed = not torch.equal(before["user.weight"], model.user.weight)
    dense_changed = not torch.equal(before["mlp.0.weight"], model.mlp[0].weight)
    assert (embedding_changed, dense_changed) == ((True, False) if frozen == "dense" else (False, True))


class HugeGradient(nn.Module):
    """A loss whose gradient norm is about 1e6, with an embedding and a dense parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(4, 2)
        self.linear = nn.Linear(2, 1)

    def loss(self, batch):
        return 1e6 * (self.linear(self.table(batch["user"])).sum() + self.table.weight.sum())

    def predict(self, batch):
        return {"click": torch.sigmoid(self.linear(self.table(batch["user"])).squeeze(-1))}


@pytest.mark.parametrize("clip", [None, 1.0])
def test_gradient_clipping_limits_the_global_norm(tmp_path, clip):
    seed_everything(0)
    model = HugeGradient()
    data = {"sample_id": torch.arange(16), "user": torch.arange(4).repeat(4)}
    trainer = Trainer(model, ToyLoader(data, 4), toy_config(epochs=1, grad_clip_norm=clip), tmp_path)
    norms = []
    step = trainer.dense_optimizer.step

    def step_and_record(*args, **kwargs):
        # The dense optimiser steps first, so this sees the gradients of both groups exactly as clipped.
        norms.append(
            float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        )
        return step(*args, **kwargs)

    trainer.dense_optimizer.step = step_and_record
    trainer.fit()
    assert len(norms) == 4
    if clip is None:
        assert min(norms) > 1e5
    else:
        assert max(norms) == pytest.approx(clip, rel=1e-4)
    logged = [float(r["grad_norm"]) for r in read_csv(tmp_path / "train_log.csv") if r["grad_norm"]]
    assert logged and min(logged) > 1e5  # the logged norm is the one before clipping


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    scripted = iter([0.5, 0.6, 0.55, 0.6, 0.59, 0.9, 0.95, 0.99])
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"auc": next(scripted)}

    config = toy_config(
        epochs=3,
        eval_every_steps=2,
        early_stopping_metric="auc",
        early_stopping_mode="max",
        early_stopping_patience=3,
    )
    model = ToyModel()
    trainer = Trainer(model, ToyLoader(make_dataset(512, seed=1), 16), config, tmp_path, evaluate=evaluate)
    metrics = trainer.fit()
    # Best 0.6 at the 2nd evaluation; an equal 0.6 is no improvement, so the 3rd..5th evaluations exhaust patience.
    assert calls == [False] * 5 and model.training
    assert metrics["stopped_early"] and metrics["steps"] == 10
    assert metrics["best_step"] == 4 and metrics["best"] == {"auc": 0.6} and metrics["final"] == {"auc": 0.59}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["stopped_early"]
    # Resuming a run that stopped early trains no further.
    again = Trainer(ToyModel(), ToyLoader(make_dataset(512, seed=1), 16), config, tmp_path, evaluate=evaluate)
    assert again.fit(resume=True)["steps"] == 10 and len(calls) == 5


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    config = toy_config(epochs=1, max_steps=4, checkpoint_every_steps=2, eval_every_steps=None)
    real_save = torch.save
    saves = []

    def save_then_crash(obj, f, *args, **kwargs):
        saves.append(obj["state"]["step"])
        if len(saves) == 2:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    seed_everything(0)
    loader = ToyLoader(make_dataset(128, seed=1), 16)
    with pytest.raises(OSError, match="disk full"):
        Trainer(ToyModel(), loader, config, tmp_path).fit()
    assert saves == [2, 4]
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "train_log.csv"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2 and ckpt["ranks"][0]["loader"] == {"epoch": 0, "yielded": 2}
    assert set(ckpt) >= {"model", "dense_optimizer", "embedding_optimizer", "state", "ranks", "config"}
    assert set(ckpt["ranks"][0]["rng"]) >= {"python", "numpy", "torch"}

    # The surviving checkpoint is a valid resume point.
    resumed = Trainer(ToyModel(), ToyLoader(make_dataset(128, seed=1), 16), config, tmp_path)
    assert resumed.fit(resume=True)["steps"] == 4


def test_save_checkpoint_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_same_seed_gives_identical_parameters_and_metrics(tmp_path):
    model_a, metrics_a = train_toy(tmp_path / "a", toy_config(seed=3))
    model_b, metrics_b = train_toy(tmp_path / "b", toy_config(seed=3))
    model_c, _ = train_toy(tmp_path / "c", toy_config(seed=4))
    for name, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, model_b.state_dict()[name]), name
    assert not torch.equal(model_a.mlp[0].weight, model_c.mlp[0].weight)
    timing = {"wall_time_s", "samples_per_s"}
    assert {k: v for k, v in metrics_a.items() if k not in timing} == {
        k: v for k, v in metrics_b.items() if k not in timing
    }


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    seed_everything(11)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    seed_everything(12)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_fresh_run_refuses_a_folder_with_a_checkpoint(tmp_path):
    config = toy_config(epochs=1, max_steps=2, eval_every_steps=None)
    Trainer(ToyModel(), ToyLoader(make_dataset(64, seed=1), 16), config, tmp_path).fit()
    with pytest.raises(RankstackError, match="resume=True"):
        Trainer(ToyModel(), ToyLoader(make_dataset(64, seed=1), 16), config, tmp_path).fit()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"embedding_optimizer": "sgd"}, "embedding_optimizer must be one of"),
        ({"early_stopping_patience": 2}, "early_stopping_metric is not"),
        ({"precision": "fp16"}, "precision must be one of"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm must be positive"),
        ({"warmup_steps": -1}, "warmup_steps must be a non-negative integer"),
        ({"lr_plateau_factor": 1.0, "early_stopping_metric": "auc"}, "lr_plateau_factor must be between 0 and 1"),
        ({"lr_plateau_factor": 0.1}, "early_stopping_metric is not"),
        ({"device": "gpu0"}, "is not a device"),
    ],
)
def test_invalid_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainerConfig(**overrides)


def test_model_problems_are_reported(tmp_path):
    loader = ToyLoader(make_dataset(64, seed=1), 16)
    with pytest.raises(RankstackError, match="no loss"):
        Trainer(nn.Linear(2, 1), loader, toy_config(), tmp_path)
    sparse = ToyModel()
    sparse.user = nn.Embedding(32, 4, sparse=True)
    with pytest.raises(ConfigError, match="sparse=False"):
        Trainer(sparse, loader, toy_config(), tmp_path)
    with pytest.raises(RankstackError, match="returned only"):
        Trainer(
            ToyModel(), loader, toy_config(early_stopping_metric="auc"), tmp_path, evaluate=lambda m: {}
        ).fit()


def plateau_run(run_dir, auc_by_eval: list[float], **overrides) -> tuple[nn.Module, dict]:
    """The toy model with a scripted monitored metric: the k-th evaluation (every 4 steps) returns
    `auc_by_eval[k - 1]`, a function of the step alone, so a resumed run sees the same metrics."""
    seed_everything(0)
    model, holder = ToyModel(), {}
    config = toy_config(epochs=1, eval_every_steps=4, log_every_steps=1, early_stopping_metric="auc",
                        lr_plateau_factor=0.5, **overrides)
    trainer = Trainer(model, ToyLoader(make_dataset(512, seed=1), 16), config, run_dir,
                      evaluate=lambda m: {"auc": auc_by_eval[holder["trainer"].state.step // 4 - 1]})
    holder["trainer"] = trainer
    return model, trainer.fit(resume=config.resume)


def test_reduce_on_plateau_cuts_both_rates_after_each_evaluation_without_improvement(tmp_path):
    aucs = [0.5, 0.6, 0.55, 0.58, 0.7, 0.65, 0.66, 0.8]  # evaluations at steps 4, 8, ..., 32; 12, 16, 24, 28 are bad
    full, metrics = plateau_run(tmp_path / "full", aucs)
    assert metrics["best_step"] == 32
    rows = [r for r in read_csv(tmp_path / "full" / "train_log.csv") if r["loss"]]
    for row in rows:
        step = int(row["step"])
        scale = 0.5 ** sum(bad < step for bad in (12, 16, 24, 28))
        assert float(row["lr"]) == pytest.approx(1e-2 * scale, rel=1e-12), step
        assert float(row["lr_embedding"]) == pytest.approx(5e-2 * scale, rel=1e-12), step
    # Stopped after step 20 (two cuts so far) and resumed: the cuts come back with the checkpoint, bit for bit.
    _, first = plateau_run(tmp_path / "cut", aucs, max_steps=20)
    assert first["steps"] == 20 and load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["state"]["lr_scale"] == 0.25
    resumed, _ = plateau_run(tmp_path / "cut", aucs, resume=True)
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name

    def untimed(run):
        return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in read_csv(run / "train_log.csv")]

    assert untimed(tmp_path / "cut") == untimed(tmp_path / "full")


def test_reduce_on_plateau_stops_at_the_floor_and_is_off_by_default(tmp_path):
    assert TrainerConfig().lr_plateau_factor is None
    plateau_run(tmp_path, [0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], lr_embedding=1e-3, lr_plateau_min=2e-3)
    last = [r for r in read_csv(tmp_path / "train_log.csv") if r["loss"]][-1]
    # 1e-2 is cut to 5e-3, then held at the 2e-3 floor; 1e-3 starts below the floor and keeps its rate.
    assert float(last["lr"]) == pytest.approx(2e-3) and float(last["lr_embedding"]) == pytest.approx(1e-3)
