"""`rankstack train ranking` and `rankstack eval`: a ranking run from a YAML config to a run folder.

A run folder holds `config.yaml` (the resolved config), the trainer's `checkpoint.pt`, `train_log.csv`, `tb/`,
`metrics.json`, the best weights, and `results.json`: test metrics per task beside the Bayes-optimal figures
when the dataset is a synthetic world. Works under `torchrun` (the loader shards by rank; rank 0 evaluates).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankstack.config import dump_yaml, load_yaml
from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader
from rankstack.errors import ConfigError
from rankstack.nn.features import FieldLayout
from rankstack.ranking import build_model
from rankstack.ranking.base import RankingModel
from rankstack.ranking.evaluate import evaluate_ranking, model_diagnostics
from rankstack.train.checkpoint import best_weights_path, load_weights, save_json
from rankstack.train.distributed import cleanup, init_distributed, is_main_process
from rankstack.train.rng import seed_everything
from rankstack.train.trainer import Trainer, TrainerConfig


@dataclass
class ModelSpec:
    """Which model and its hyper-parameters (validated against the model's own config dataclass)."""

    name: str = "dlrm"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankingRunConfig:
    """A ranking run.

    data: dataset folder (relative paths are resolved from the current directory).
    model: `name` (see `rankstack.ranking.MODELS`) and `args` for its config.
    tasks: label columns to train (default: every label of the dataset).
    features: feature columns to use (default: every feature column).
    batch_size: training batch size (default 1024); eval_batch_size for evaluation (4096).
    eval_max_rows: cap on validation rows per evaluation during training (default: the whole split).
    shuffle_window: row groups shuffled together by the loader (4).
    trainer: the `TrainerConfig`; its seed also seeds the model and the loader.
    """

    data: str
    model: ModelSpec = field(default_factory=ModelSpec)
    tasks: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    batch_size: int = 1024
    eval_batch_size: int = 4096
    eval_max_rows: int | None = None
    shuffle_window: int = 4
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RankingRunConfig:
    """Read a YAML run config; `overrides` maps dotted keys to values (`trainer.seed: 1`)."""
    return load_yaml(RankingRunConfig, path, overrides)


def build_for(config: RankingRunConfig, where: str = "config") -> tuple[Dataset, FieldLayout, RankingModel]:
    dataset = Dataset.open(config.data, columns=config.features or None)
    try:
        layout = FieldLayout.from_dataset(dataset, config.tasks or None)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return dataset, layout, build_model(config.model.name, config.model.args, layout, where)


def train_ranking(config: RankingRunConfig, run_dir: str | Path, where: str = "config") -> dict[str, Any]:
    """Train, keep the best validation checkpoint, and evaluate it on the test split."""
    run_dir = Path(run_dir)
    rank, world_size, _ = init_distributed()
    seed_everything(config.trainer.seed)
    dataset, layout, model = build_for(config, where)
    trainer_config = config.trainer
    if trainer_config.early_stopping_metric is None:
        trainer_config = dataclasses.replace(trainer_config, early_stopping_metric=f"{layout.labels[0]}_auc")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(dataclasses.replace(config, trainer=trainer_config), run_dir / "config.yaml")
    loader = BatchLoader(dataset, "train", config.batch_size, shuffle=True, seed=trainer_config.seed,
                         shuffle_window=config.shuffle_window, rank=rank, world_size=world_size)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        device = next(m.parameters()).device
        report = evaluate_ranking(m, dataset, "valid", config.eval_batch_size, device, config.eval_max_rows,
                                  with_bayes=False)
        diagnostics = model_diagnostics(m, dataset, "valid", config.eval_batch_size, device)
        return {k: v for k, v in report.items() if isinstance(v, float)} | {f"diag_{k}": v for k, v in diagnostics.items()}

    trainer = Trainer(model, loader, trainer_config, run_dir, evaluate=evaluate)
    train_metrics = trainer.fit()
    device = trainer.device
    results: dict[str, Any] = {}
    if is_main_process():
        best = best_weights_path(run_dir)
        if best.exists():
            model.load_state_dict(load_weights(best))
        model.to(device)
        results = {
            "model": config.model.name,
            "data": str(config.data),
            "params": sum(p.numel() for p in model.parameters()),
            "train": train_metrics,
            "test": evaluate_ranking(model, dataset, "test", config.eval_batch_size, device),
        }
        diagnostics = model_diagnostics(model, dataset, "test", config.eval_batch_size, device)
        if diagnostics:
            results["diagnostics"] = diagnostics
        save_json(results, run_dir / "results.json")
    del trainer  # its DistributedDataParallel wrapper holds the process group that cleanup() destroys
    cleanup()
    return results


def load_run(run_dir: str | Path) -> tuple[RankingRunConfig, Dataset, RankingModel]:
    """A finished run's config, dataset and model with its best weights (the config is read from the folder)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass the folder a `rankstack train` run wrote.")
    config = load_run_config(config_path)
    dataset, _, model = build_for(config, str(config_path))
    best = best_weights_path(run_dir)
    if not best.exists():
        raise ConfigError(f"{run_dir} has no {best.name}; the run did not finish an evaluation yet.")
    model.load_state_dict(load_weights(best))
    return config, dataset, model


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Re-evaluate a finished run's best weights on `split` (with the model's diagnostics, if it has them, on the
    split's first batch under `diagnostics`)."""
    config, dataset, model = load_run(run_dir)
    report = evaluate_ranking(model, dataset, split, config.eval_batch_size)
    diagnostics = model_diagnostics(model, dataset, split, config.eval_batch_size)
    return report | ({"diagnostics": diagnostics} if diagnostics else {})


def format_results(report: dict[str, Any], tasks: list[str]) -> str:
    """A small table per task: the model beside the item-popularity baseline and the Bayes-optimal figure."""
    bayes, popularity = report.get("bayes", {}), report.get("popularity", {})
    lines = [f"{'metric':18} {'model':>9} {'popularity':>11} {'bayes':>9} {'gap':>8}"]
    for task in tasks:
        for metric in ("auc", "gauc", "logloss"):
            key = f"{task}_{metric}"
            if key not in report:
                continue
            value, best, base = report[key], bayes.get(key), popularity.get(key)
            gap = "" if best is None else f"{abs(best - value):.4f}"
            lines.append(f"{key:18} {value:9.4f} {'' if base is None else f'{base:.4f}':>11} "
                         f"{'' if best is None else f'{best:.4f}':>9} {gap:>8}")
    if bayes:
        lines.append("gap = distance to the Bayes-optimal figure of the true probabilities (the ceiling)")
    diagnostics = report.get("diagnostics", {})
    if diagnostics:
        lines.append("diagnostics on the split's first batch (hemix.md §6; entropies in nats):")
        lines += [f"  {key:38} {value:9.4f}" for key, value in sorted(diagnostics.items())]
    return "\n".join(lines)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)
