"""The one training loop for every non-LLM rankstack model (retrieval towers, pre-rankers, rankers, relevance).

A `Trainer` takes a model with ``loss(batch)`` / ``predict(batch)``, a training loader (an iterable of
``dict[str, Tensor]`` batches with ``__len__``, ``set_epoch``, ``state_dict`` and ``load_state_dict``), an optional
``evaluate(model) -> dict[str, float]`` and a `TrainerConfig`, and trains it in a run folder::

    rank, world_size, _ = init_distributed()     # (0, 1, 0) without torchrun
    seed_everything(config.seed)                  # before building the model, so its init is reproducible
    model = build_model(...)
    loader = build_loader(..., rank=rank, world_size=world_size)
    metrics = Trainer(model, loader, config, run_dir, evaluate=evaluate).fit(resume=True)
    cleanup()

What it does: embedding tables (``nn.Embedding`` / ``nn.EmbeddingBag`` parameters) and the other ("dense")
parameters get separate optimisers and learning rates, embeddings without weight decay; gradients are clipped by
their global norm over both groups; the forward pass runs under bf16 autocast on CUDA by default. Evaluation runs
every ``eval_every_steps``, at each epoch end and when training stops; the best weights by the monitored metric
are saved to ``best.safetensors`` (``best.pt`` without safetensors) and training stops early when the metric has
not improved for ``early_stopping_patience`` evaluations.

The run folder holds ``checkpoint.pt`` (written atomically every ``checkpoint_every_steps``, at each epoch end and
at the end), ``train_log.csv``, TensorBoard events under ``tb/`` and, at the end, ``metrics.json``. A run killed at
any moment and resumed with ``fit(resume=True)`` finishes with exactly the parameters and metrics of an
uninterrupted run: the checkpoint holds the model, both optimisers, the loader position, the early-stopping state,
the partial logging window and every random generator, for every rank.

Data parallel: under ``torchrun`` the model is wrapped in DistributedDataParallel (the loader shards the data by
rank). Evaluation runs on rank 0 only, with the unwrapped model, while the other ranks wait; rank 0 then broadcasts
the metrics so every rank takes the same early-stopping decision. The validation loader behind ``evaluate`` should
therefore cover the whole validation set, and one evaluation must finish within the process group's timeout
(30 minutes by default). Only rank 0 writes files; every rank reads the checkpoint on resume, which needs the same
number of processes as the run that wrote it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rankstack.errors import ConfigError, RankstackError
from rankstack.train.checkpoint import (
    CHECKPOINT_NAME,
    best_weights_path,
    load_checkpoint,
    save_checkpoint,
    save_json,
    save_weights,
)
from rankstack.train.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
)
from rankstack.train.logging import RunLogger, progress_bar
from rankstack.train.rng import rng_state, seed_everything, set_rng_state

CHECKPOINT_FORMAT = 1
METRICS_NAME = "metrics.json"

Evaluate = Callable[[nn.Module], Mapping[str, float]]


class TrainLoader(Protocol):
    """What the trainer needs from a training loader (owned by `rankstack.data`).

    ``len()`` is the number of batches this rank yields per epoch and must be the same on every rank. `fit` calls
    ``set_epoch(e)`` before each epoch except the one a checkpoint is resumed in: there ``load_state_dict`` has
    already placed the loader right after the last batch the checkpointed run consumed.
    """

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochCursor:
    """Where a `TrainLoader` stands: its epoch and how many of that epoch's batches it has yielded.

    The resumable half of the protocol, shared by every loader: `__iter__` starts after `batches_yielded` batches
    (the shuffle is seeded by the epoch, so the skipped batches are the consumed ones), raises the count with each
    batch it yields, and calls `end_epoch()` once the epoch is exhausted.
    """

    epoch: int = 0
    batches_yielded: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_yielded = epoch, 0

    def end_epoch(self) -> None:
        self.epoch, self.batches_yielded = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batches_yielded = int(state["epoch"]), int(state["batches_yielded"])


@dataclass
class TrainerConfig:
    """Configuration of a `Trainer`.

    Parameters:
        epochs (`int`, *optional*, defaults to `1`):
            Number of passes over the training loader.
        max_steps (`int` or `None`, *optional*, defaults to `None`):
            Stop after this many optimiser steps even if epochs remain; `None` means no cap.
        lr_dense (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the dense (non-embedding) parameters.
        lr_embedding (`float`, *optional*, defaults to `1e-2`):
            Learning rate of the embedding tables (parameters of `nn.Embedding` / `nn.EmbeddingBag` modules).
        weight_decay (`float`, *optional*, defaults to `0.0`):
            Weight decay of the dense optimiser. Embeddings never get weight decay: it would shrink the rows of
            rare ids at every step although their gradient is almost always zero.
        dense_optimizer (`str`, *optional*, defaults to `"adamw"`):
            Optimiser of the dense parameters: `"adamw"` (decoupled weight decay) or `"adam"` (L2 penalty).
        embedding_optimizer (`str`, *optional*, defaults to `"adam"`):
            Optimiser of the embedding tables: `"adam"` or `"adagrad"`.
        warmup_steps (`int`, *optional*, defaults to `0`):
            Linear learning-rate warm-up: optimiser step s (counted from 1) uses `lr · min(1, s / warmup_steps)` in
            both groups, then the rate stays constant (hemix.md §6 warms up over the first 2 % of the steps). `0`
            disables it. The rate is a function of the step alone, so a resumed run follows the same schedule.
        lr_plateau_factor (`float` or `None`, *optional*, defaults to `None`):
            Reduce-on-plateau: after each evaluation whose `early_stopping_metric` does not improve, multiply both
            learning rates by this factor in (0, 1) (FuxiCTR's and Keras' schedule; FuxiCTR uses 0.1). The cut
            composes with the warm-up and survives a resume. `None` keeps the rates. Requires
            `early_stopping_metric`.
        lr_plateau_min (`float`, *optional*, defaults to `1e-6`):
            No cut takes a learning rate below this floor (a rate configured below it stays as configured).
        grad_clip_norm (`float` or `None`, *optional*, defaults to `None`):
            Clip the global L2 norm of all gradients (both groups together) to this value; `None` disables
            clipping (the norm is still computed and logged).
        eval_every_steps (`int` or `None`, *optional*, defaults to `None`):
            Evaluate every this many steps, in addition to each epoch end and the last step; `None` evaluates only
            at those.
        early_stopping_metric (`str` or `None`, *optional*, defaults to `None`):
            Name of the metric returned by `evaluate` that decides the best model and early stopping; `None`
            tracks no best model.
        early_stopping_mode (`str`, *optional*, defaults to `"max"`):
            `"max"` if a larger metric is better (AUC), `"min"` if a smaller one is (log loss).
        early_stopping_patience (`int` or `None`, *optional*, defaults to `None`):
            Stop after this many consecutive evaluations without a strict improvement of the metric; `None` never
            stops early. Requires `early_stopping_metric`.
        checkpoint_every_steps (`int` or `None`, *optional*, defaults to `1000`):
            Write `checkpoint.pt` every this many steps; it is also written at each epoch end and at the end of
            training. `None` writes only those.
        log_every_steps (`int`, *optional*, defaults to `50`):
            Write a training row (mean loss over the window, learning rates, gradient norm, samples/s) every this
            many steps, and at the last step.
        seed (`int`, *optional*, defaults to `42`):
            Seed of Python, NumPy and torch at the start of a fresh run (rank r uses `seed + r`, so dropout
            differs across ranks). Seed the model's initialisation yourself with `seed_everything(seed)`.
        device (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (this rank's GPU if CUDA is available, else the CPU), `"cpu"`, `"cuda"` or `"cuda:N"`.
        precision (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (bf16 autocast on a CUDA device that supports it, fp32 otherwise), `"fp32"` or `"bf16"`
            (autocast to bf16 on any device).
        progress_bar (`bool`, *optional*, defaults to `True`):
            Show a tqdm bar with the loss and samples/s on rank 0; it is hidden anyway when stderr is not a
            terminal.
        tensorboard (`bool`, *optional*, defaults to `True`):
            Write TensorBoard event files under `<run_dir>/tb`.
        resume (`bool`, *optional*, defaults to `False`):
            Continue from `<run_dir>/checkpoint.pt` if it exists (the `resume` argument of `Trainer.fit`
            overrides it).
        ddp_find_unused_parameters (`bool`, *optional*, defaults to `False`):
            Passed to DistributedDataParallel; set it when some parameters get no gradient in some steps (for
            example a task head skipped for batches without that label).
    """

    epochs: int = 1
    max_steps: int | None = None
    lr_dense: float = 1e-3
    lr_embedding: float = 1e-2
    weight_decay: float = 0.0
    dense_optimizer: Literal["adamw", "adam"] = "adamw"
    embedding_optimizer: Literal["adam", "adagrad"] = "adam"
    warmup_steps: int = 0
    lr_plateau_factor: float | None = None
    lr_plateau_min: float = 1e-6
    grad_clip_norm: float | None = None
    eval_every_steps: int | None = None
    early_stopping_metric: str | None = None
    early_stopping_mode: Literal["max", "min"] = "max"
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int | None = 1000
    log_every_steps: int = 50
    seed: int = 42
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    progress_bar: bool = True
    tensorboard: bool = True
    resume: bool = False
    ddp_find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        def positive_int(name: str, optional: bool) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                hint = "a positive integer or None" if optional else "a positive integer"
                raise ConfigError(
                    f"TrainerConfig.{name} must be {hint}, got {value!r}; fix it in the config."
                )

        positive_int("epochs", optional=False)
        positive_int("log_every_steps", optional=False)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(
                f"TrainerConfig.warmup_steps must be a non-negative integer (0 disables warm-up), got "
                f"{self.warmup_steps!r}; fix it in the config."
            )
        for name in ("max_steps", "eval_every_steps", "checkpoint_every_steps", "early_stopping_patience"):
            positive_int(name, optional=True)
        for name in ("lr_dense", "lr_embedding", "weight_decay", "lr_plateau_min"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(
                    f"TrainerConfig.{name} must be a non-negative number, got {value!r}; fix it in the config."
                )
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(
                f"TrainerConfig.grad_clip_norm must be positive or None, got {self.grad_clip_norm!r}; use None to "
                "disable clipping."
            )
        choices = {
            "dense_optimizer": ("adamw", "adam"),
            "embedding_optimizer": ("adam", "adagrad"),
            "early_stopping_mode": ("max", "min"),
            "precision": ("auto", "fp32", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"TrainerConfig.{name} must be one of {', '.join(map(repr, allowed))}, got "
                    f"{getattr(self, name)!r}; pick one of those."
                )
        if self.lr_plateau_factor is not None and not 0 < self.lr_plateau_factor < 1:
            raise ConfigError(
                f"TrainerConfig.lr_plateau_factor must be between 0 and 1 (exclusive) or None, got "
                f"{self.lr_plateau_factor!r}; 0.1 is FuxiCTR's cut, None disables it."
            )
        if self.lr_plateau_factor is not None and self.early_stopping_metric is None:
            raise ConfigError(
                "TrainerConfig.lr_plateau_factor is set but early_stopping_metric is not; name the metric whose "
                "plateau cuts the learning rates, or remove the factor."
            )
        if self.early_stopping_patience is not None and self.early_stopping_metric is None:
            raise ConfigError(
                "TrainerConfig.early_stopping_patience is set but early_stopping_metric is not; name the metric "
                "to monitor or remove the patience."
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(
                    f"TrainerConfig.device {self.device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
                ) from None


@dataclass
class TrainState:
    """Progress of a run: everything about it, besides tensors, that a checkpoint restores.

    Attributes:
        step: Optimiser steps taken. epoch: The current epoch (0-based). batches_in_epoch: Batches of that epoch
        consumed (equal to the loader's length once the epoch is over). samples: Training samples seen, over all
        ranks, up to the last log row. train_loss: Mean loss of the last log row's window. best_value, best_step,
        best_eval: The best monitored metric, its step and all metrics of that evaluation. bad_evals:
        Consecutive evaluations without improvement. stopped_early: Whether patience ran out. lr_scale: The
        product of the reduce-on-plateau cuts so far (1.0 without any). last_eval: Metrics
        of the latest evaluation. log_rows: Rows in ``train_log.csv`` at the checkpoint. train_time_s: Seconds
        spent in training steps (evaluation and checkpoints excluded). wall_time_s: Wall time of the run.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0
    train_loss: float | None = None
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    lr_scale: float = 1.0
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    log_rows: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the trainable parameters into ``(embedding, dense)``: those owned by `nn.Embedding` or
    `nn.EmbeddingBag` modules, and all others. A parameter shared between both (tied weights) counts as an
    embedding."""
    embedding: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        if module.sparse:
            raise ConfigError(
                f"The embedding module {name or type(module).__name__} has sparse=True, but the trainer clips and "
                "all-reduces dense gradients; build it with sparse=False."
            )
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                embedding.append(param)
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return embedding, dense


class _LossForward(nn.Module):
    """Routes ``forward`` to ``model.loss`` so that DistributedDataParallel, which only hooks ``forward``,
    prepares its gradient all-reduce for every training step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


def _resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"TrainerConfig.device is {spec!r} but CUDA is not available here; use 'auto' or 'cpu'."
            )
        if device.index is None:
            # Under torchrun, init_distributed() made this rank's GPU the current one.
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _lr(optimizer: torch.optim.Optimizer | None) -> float | None:
    return optimizer.param_groups[0]["lr"] if optimizer is not None else None


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0


class Trainer:
    """Trains `model` on `train_loader` in `run_dir` (see the module docstring for the whole behaviour).

    Args:
        model: An `nn.Module` with ``loss(batch) -> scalar tensor`` and ``predict(batch) -> dict``. It is moved
            to the configured device.
        train_loader: This rank's training loader (sharded by rank under torchrun).
        config: The `TrainerConfig`.
        run_dir: Folder for the checkpoint, logs, best weights and ``metrics.json``; created if missing.
        evaluate: ``evaluate(model) -> {metric: value}``, called on rank 0 with the unwrapped model in eval mode
            under ``torch.no_grad()``; `None` trains without evaluation.

    Attributes:
        model: The unwrapped model.
        dense_optimizer / embedding_optimizer: The two optimisers (`None` when a group has no parameters).
        state: The `TrainState` of the run.
        device: The device the model trains on.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: TrainLoader,
        config: TrainerConfig,
        run_dir: str | Path,
        evaluate: Evaluate | None = None,
    ) -> None:
        if not callable(getattr(model, "loss", None)):
            raise RankstackError(
                f"{type(model).__name__} has no loss(batch) method; the trainer needs a model that returns its "
                "scalar training loss from loss(batch)."
            )
        if config.early_stopping_metric is not None and evaluate is None:
            raise RankstackError(
                f"TrainerConfig.early_stopping_metric is {config.early_stopping_metric!r} but no evaluate "
                "function was given; pass evaluate= or unset the metric."
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.train_loader = train_loader
        self.evaluate = evaluate
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.device = _resolve_device(config.device)
        bf16 = config.precision == "bf16" or (
            config.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self._autocast_dtype = torch.bfloat16 if bf16 else None
        self.model = model.to(self.device)
        self.model.train()

        embedding_params, dense_params = split_parameters(self.model)
        self._params = embedding_params + dense_params
        if not self._params:
            raise RankstackError(
                f"{type(model).__name__} has no trainable parameters; there is nothing to train."
            )
        self.dense_optimizer: torch.optim.Optimizer | None = None
        self.embedding_optimizer: torch.optim.Optimizer | None = None
        if dense_params:
            dense_cls = torch.optim.AdamW if config.dense_optimizer == "adamw" else torch.optim.Adam
            self.dense_optimizer = dense_cls(
                dense_params, lr=config.lr_dense, weight_decay=config.weight_decay
            )
        if embedding_params:
            emb_cls = torch.optim.Adam if config.embedding_optimizer == "adam" else torch.optim.Adagrad
            self.embedding_optimizer = emb_cls(embedding_params, lr=config.lr_embedding, weight_decay=0.0)

        self._base_lrs = [
            (optimizer, lr)
            for optimizer, lr in ((self.dense_optimizer, config.lr_dense), (self.embedding_optimizer, config.lr_embedding))
            if optimizer is not None
        ]

        self._loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] = self.model.loss
        if self.world_size > 1:
            # Building DDP broadcasts rank 0's parameters, so every rank starts from the same weights.
            self._loss_fn = DistributedDataParallel(
                _LossForward(self.model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.ddp_find_unused_parameters,
            )

        self.state = TrainState()
        self._reset_window()
        self._last_grad_norm: torch.Tensor | None = None
        self._tick = self._wall_start = time.perf_counter()
        self._wall_base = 0.0

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        """``<run_dir>/checkpoint.pt``."""
        return self.run_dir / CHECKPOINT_NAME

    @property
    def best_weights_path(self) -> Path:
        """Where the best model's weights are saved (``best.safetensors`` or ``best.pt``)."""
        return best_weights_path(self.run_dir)

    def fit(self, resume: bool | None = None) -> dict[str, Any]:
        """Train until the epochs, `max_steps` or early stopping end the run; return what ``metrics.json`` holds.

        With `resume` (default: `config.resume`) and an existing ``checkpoint.pt``, training continues exactly
        where the checkpoint left it; a run that had already finished only rewrites ``metrics.json``. Without
        `resume`, a run folder that already holds a checkpoint is refused rather than overwritten.
        """
        resume = self.config.resume if resume is None else resume
        resuming = self.checkpoint_path.exists()
        if resuming and not resume:
            raise RankstackError(
                f"The run folder {self.run_dir} already holds {CHECKPOINT_NAME}; pass resume=True to continue "
                "that run, or choose an empty run folder."
            )
        steps_per_epoch = len(self.train_loader)
        if steps_per_epoch == 0:
            raise RankstackError(
                f"The training loader of rank {self.rank} has no batches; check the training data and the batch "
                "size."
            )
        if resuming:
            self._load_checkpoint()
        else:
            seed_everything(self.config.seed + self.rank)
        main = self.rank == 0
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        logger = RunLogger(
            self.run_dir,
            enabled=main,
            tensorboard=self.config.tensorboard,
            keep_rows=self.state.log_rows,
            purge_step=self.state.step + 1 if resuming else 0,
        )
        total_steps = self.config.epochs * steps_per_epoch
        if self.config.max_steps is not None:
            total_steps = min(total_steps, self.config.max_steps)
        bar = progress_bar(
            total_steps, initial=min(self.state.step, total_steps), enabled=main and self.config.progress_bar
        )
        self._wall_base = self.state.wall_time_s
        self._wall_start = self._tick = time.perf_counter()
        try:
            while not self._finished(steps_per_epoch):
                if self.state.batches_in_epoch == steps_per_epoch:
                    self.state.epoch += 1
                    self.state.batches_in_epoch = 0
                    continue
                if self.state.batches_in_epoch == 0:
                    self.train_loader.set_epoch(self.state.epoch)
                self._run_epoch(steps_per_epoch, logger, bar)
        finally:
            bar.close()
            logger.close()
        metrics = self._final_metrics(steps_per_epoch)
        if main:
            save_json(metrics, self.run_dir / METRICS_NAME)
        barrier()
        return metrics

    # -- the loop -----------------------------------------------------------------------------------------------

    def _finished(self, steps_per_epoch: int) -> bool:
        state, config = self.state, self.config
        epochs_done = state.epoch + (state.batches_in_epoch == steps_per_epoch)
        return (
            state.stopped_early
            or (config.max_steps is not None and state.step >= config.max_steps)
            or epochs_done >= config.epochs
        )

    def _run_epoch(self, steps_per_epoch: int, logger: RunLogger, bar: Any) -> None:
        state, config = self.state, self.config
        for batch in self.train_loader:
            state.step += 1
            state.batches_in_epoch += 1
            self._train_step(batch)
            bar.update(1)

            end_of_epoch = state.batches_in_epoch == steps_per_epoch
            hit_max_steps = config.max_steps is not None and state.step >= config.max_steps
            last_step = hit_max_steps or (end_of_epoch and state.epoch == config.epochs - 1)
            periodic_eval = config.eval_every_steps is not None and state.step % config.eval_every_steps == 0
            if self.evaluate is not None and (periodic_eval or end_of_epoch or last_step):
                self._evaluate(logger)
            stopping = last_step or state.stopped_early
            if state.step % config.log_every_steps == 0 or stopping:
                self._log_window(logger, bar)
            periodic_ckpt = (
                config.checkpoint_every_steps is not None and state.step % config.checkpoint_every_steps == 0
            )
            if periodic_ckpt or end_of_epoch or stopping:
                self._save_checkpoint(logger)
            if stopping or end_of_epoch:
                return
        if state.batches_in_epoch != steps_per_epoch:
            raise RankstackError(
                f"The training loader of rank {self.rank} yielded {state.batches_in_epoch} batches in epoch "
                f"{state.epoch} but its len() is {steps_per_epoch}; a loader must yield exactly len() batches per "
                "epoch (the same number on every rank)."
            )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def _train_step(self, batch: Mapping[str, Any]) -> None:
        batch = {
            key: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()
        }
        with self._autocast():
            loss = self._loss_fn(batch)
        if loss.dim() != 0:
            raise RankstackError(
                f"{type(self.model).__name__}.loss(batch) returned a tensor of shape {tuple(loss.shape)}; it must "
                "return a scalar (reduce the per-sample losses with .mean())."
            )
        loss.backward()
        # Always measured (max_norm=inf scales by exactly 1.0) so that every log row can report it.
        max_norm = self.config.grad_clip_norm if self.config.grad_clip_norm is not None else math.inf
        self._last_grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if self.config.warmup_steps or self.state.lr_scale != 1.0:
            self._set_learning_rates()
        for optimizer in (self.dense_optimizer, self.embedding_optimizer):
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        # Accumulated on the device so that no step waits for the GPU; read once per log row.
        self._window_loss += loss.detach().to(torch.float64)
        self._window_steps += 1
        self._window_samples += _batch_size(batch)
        now = time.perf_counter()
        self._window_time += now - self._tick
        self.state.train_time_s += now - self._tick
        self._tick = now

    def _set_learning_rates(self) -> None:
        """Each group's rate: its configured rate × the warm-up ramp × the plateau cuts (floored at
        `lr_plateau_min`)."""
        config = self.config
        warmup = min(1.0, self.state.step / config.warmup_steps) if config.warmup_steps else 1.0
        for optimizer, lr in self._base_lrs:
            cut = max(lr * self.state.lr_scale, min(lr, config.lr_plateau_min))
            for group in optimizer.param_groups:
                group["lr"] = cut * warmup

    def _reset_window(self) -> None:
        self._window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._window_steps = 0
        self._window_samples = 0
        self._window_time = 0.0

    def _log_window(self, logger: RunLogger, bar: Any) -> None:
        if self._window_steps == 0:
            return
        local = torch.stack(
            [
                self._window_loss / self._window_steps,
                torch.tensor(float(self._window_samples), dtype=torch.float64, device=self.device),
            ]
        )
        mean_loss, mean_samples = all_reduce_mean(local).tolist()
        samples = round(mean_samples * self.world_size)
        if not math.isfinite(mean_loss):
            raise RankstackError(
                f"The training loss became {mean_loss} by step {self.state.step}; lower lr_dense/lr_embedding or "
                "set grad_clip_norm, and check the inputs for NaN or infinite values."
            )
        samples_per_s = samples / self._window_time if self._window_time > 0 else 0.0
        self.state.samples += samples
        self.state.train_loss = mean_loss
        logger.log_train(
            self.state.step,
            self.state.epoch,
            {
                "loss": mean_loss,
                "lr": _lr(self.dense_optimizer),
                "lr_embedding": _lr(self.embedding_optimizer),
                "grad_norm": float(self._last_grad_norm) if self._last_grad_norm is not None else None,
                "samples_per_s": samples_per_s,
            },
        )
        bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_s=f"{samples_per_s:,.0f}", refresh=False)
        self._reset_window()
        self._tick = time.perf_counter()

    def _evaluate(self, logger: RunLogger) -> None:
        assert self.evaluate is not None
        metrics: dict[str, float] | None = None
        if self.rank == 0:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                metrics = {name: float(value) for name, value in self.evaluate(self.model).items()}
            self.model.train()
        metrics = broadcast_object(metrics)
        state, config = self.state, self.config
        state.last_eval = metrics
        logger.log_eval(state.step, state.epoch, metrics)
        name = config.early_stopping_metric
        if name is not None:
            if name not in metrics:
                raise RankstackError(
                    f"TrainerConfig.early_stopping_metric is {name!r} but evaluate returned only "
                    f"{sorted(metrics)}; set early_stopping_metric to one of those."
                )
            value = metrics[name]
            best = state.best_value
            improved = not math.isnan(value) and (
                best is None or (value > best if config.early_stopping_mode == "max" else value < best)
            )
            if improved:
                state.best_value, state.best_step, state.best_eval = value, state.step, metrics
                state.bad_evals = 0
                if self.rank == 0:
                    save_weights(self.model.state_dict(), self.best_weights_path)
            else:
                state.bad_evals += 1
                if config.lr_plateau_factor is not None:
                    state.lr_scale *= config.lr_plateau_factor
                patience = config.early_stopping_patience
                state.stopped_early = patience is not None and state.bad_evals >= patience
        self._tick = time.perf_counter()

    # -- checkpoints --------------------------------------------------------------------------------------------

    def _save_checkpoint(self, logger: RunLogger) -> None:
        # Each rank has its own generators, loader position and partial log window; rank 0 stores them all.
        per_rank = all_gather_object(
            {
                "rng": rng_state(),
                "loader": self.train_loader.state_dict(),
                "window": {
                    "loss": self._window_loss.cpu(),
                    "steps": self._window_steps,
                    "samples": self._window_samples,
                },
            }
        )
        if self.rank == 0:
            logger.flush()
            self.state.log_rows = logger.rows
            self.state.wall_time_s = self._wall_time()
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "world_size": self.world_size,
                    "model": self.model.state_dict(),
                    "dense_optimizer": self.dense_optimizer.state_dict() if self.dense_optimizer else None,
                    "embedding_optimizer": (
                        self.embedding_optimizer.state_dict() if self.embedding_optimizer else None
                    ),
                    "state": asdict(self.state),
                    "ranks": per_rank,
                    "config": asdict(self.config),
                },
                self.checkpoint_path,
            )
        self._tick = time.perf_counter()

    def _load_checkpoint(self) -> None:
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise RankstackError(
                f"{self.checkpoint_path} has checkpoint format {ckpt.get('format')!r}, not {CHECKPOINT_FORMAT}; "
                "it was written by another rankstack version, so start a fresh run in a new folder."
            )
        if ckpt["world_size"] != self.world_size:
            raise RankstackError(
                f"{self.checkpoint_path} was written by {ckpt['world_size']} processes but this run has "
                f"{self.world_size}; resume with the same --nproc_per_node, since the loader shards depend on it."
            )
        self.model.load_state_dict(ckpt["model"])
        for name in ("dense_optimizer", "embedding_optimizer"):
            optimizer, saved = getattr(self, name), ckpt[name]
            if (optimizer is None) != (saved is None):
                raise RankstackError(
                    f"{self.checkpoint_path} does not match this model: its {name.replace('_', ' ')} state is "
                    f"{'missing' if saved is None else 'present'} but the model "
                    f"{'has' if optimizer is not None else 'has no'} such parameters; resume with the same model."
                )
            if optimizer is not None:
                optimizer.load_state_dict(saved)
        self.state = TrainState(**ckpt["state"])
        mine = ckpt["ranks"][self.rank]
        self.train_loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
        self._window_loss = mine["window"]["loss"].to(self.device)
        self._window_steps = mine["window"]["steps"]
        self._window_samples = mine["window"]["samples"]
        self._window_time = 0.0

    def _wall_time(self) -> float:
        """Wall time of the run so far, including the time before the resumed checkpoint."""
        return self._wall_base + time.perf_counter() - self._wall_start

    def _final_metrics(self, steps_per_epoch: int) -> dict[str, Any]:
        state = self.state
        return {
            "steps": state.step,
            "epochs_completed": state.epoch + state.batches_in_epoch / steps_per_epoch,
            "samples": state.samples,
            "stopped_early": state.stopped_early,
            "train_loss": state.train_loss,
            "final": state.last_eval,
            "best": state.best_eval,
            "best_step": state.best_step,
            "monitor": {
                "metric": self.config.early_stopping_metric,
                "mode": self.config.early_stopping_mode,
                "value": state.best_value,
            },
            "wall_time_s": self._wall_time(),
            "samples_per_s": state.samples / state.train_time_s if state.train_time_s > 0 else 0.0,
        }
