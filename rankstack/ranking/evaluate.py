"""Evaluation of ranking models: AUC, GAUC and log-loss per task, beside the Bayes-optimal figures.

On a synthetic world the split's true probabilities (`truth/<split>.parquet`, row-aligned with the split, column
`p_<task>`) give the ceiling no model can pass: the same metrics computed from the truth on the same labels.
Evaluation reads the split in file order without shuffling, which keeps the rows aligned with the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from rankstack import metrics
from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader


@torch.no_grad()
def predict_split(model: torch.nn.Module, dataset: Dataset, split: str, batch_size: int = 4096,
                  device: str | torch.device = "cpu", max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Labels, predicted probabilities (`pred_<task>`) and group keys for a split, in file order."""
    model.eval()
    tasks = list(model.tasks)
    group_key = dataset.schema.group_key
    out: dict[str, list[np.ndarray]] = {k: [] for k in [*tasks, *(f"pred_{t}" for t in tasks), "group"]}
    rows = 0
    for batch in BatchLoader(dataset, split, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        probs = model.predict(batch)
        for task in tasks:
            out[task].append(batch[task].cpu().numpy())
            out[f"pred_{task}"].append(probs[task].float().cpu().numpy())
        if group_key:
            out["group"].append(batch[group_key].cpu().numpy())
        rows += len(batch[tasks[0]])
        if max_rows is not None and rows >= max_rows:
            break
    return {k: np.concatenate(v) for k, v in out.items() if v}


def model_diagnostics(model: torch.nn.Module, dataset: Dataset, split: str, batch_size: int = 4096,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """The model's `diagnostics(batch)` (HeMix: hemix.md §6) on the first batch of a split; {} for a model without
    them."""
    diagnose = getattr(model, "diagnostics", None)
    if diagnose is None:
        return {}
    batch = next(iter(BatchLoader(dataset, split, batch_size)))
    model.eval()
    return diagnose({k: v.to(device) for k, v in batch.items()})


def bayes_report(dataset: Dataset, split: str, tasks: list[str], labels: dict[str, np.ndarray],
                 groups: np.ndarray | None) -> dict[str, float]:
    """Metrics of the true probabilities on the same rows, when the dataset carries a truth folder."""
    path = dataset.truth_path(split)
    if path is None:
        return {}
    wanted = [f"p_{t}" for t in tasks]
    truth = pq.read_table(path, columns=[c for c in wanted if c in pq.ParquetFile(path).schema_arrow.names])
    report: dict[str, float] = {}
    for task in tasks:
        if f"p_{task}" not in truth.column_names:
            continue
        n = len(labels[task])
        probs = truth.column(f"p_{task}").to_numpy()[:n]
        for key, value in metrics.bayes_optimal(labels[task], probs, groups).items():
            report[f"{task}_{key}"] = value
    return report


def item_rate_report(dataset: Dataset, split: str, tasks: list[str], labels: dict[str, np.ndarray],
                     groups: np.ndarray | None, prior_weight: float = 20.0) -> dict[str, float]:
    """The popularity baseline: each candidate scored by its item's smoothed train rate of the task's label.

    The item is the first `item` column of the schema (e.g. `poi_id`); rates are shrunk to the global rate
    with `prior_weight` pseudo-impressions so that rare items don't get extreme scores.
    """
    items = [c.name for c in dataset.schema.by_role("item") if c.kind == "categorical"]
    if not items:
        return {}
    item = items[0]
    train = pq.read_table(dataset.split_file("train"), columns=[item, *tasks])
    rows = pq.read_table(dataset.split_file(split), columns=[item]).column(item).to_numpy()[: len(labels[tasks[0]])]
    report: dict[str, float] = {}
    for task in tasks:
        stats = train.group_by(item).aggregate([(task, "sum"), (task, "count")])
        keys = stats.column(item).to_numpy()
        prior = float(pc.mean(train.column(task)).as_py())
        rate = (stats.column(f"{task}_sum").to_numpy() + prior_weight * prior) / (
            stats.column(f"{task}_count").to_numpy() + prior_weight)
        order = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[order], rows), 0, len(keys) - 1)
        found = keys[order][pos] == rows
        scores = np.where(found, rate[order][pos], prior)
        report.update(metrics.binary_report(labels[task], scores, groups, prefix=f"{task}_"))
    return report


def mechanism_report(dataset: Dataset, split: str, labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Which of a world's planted click mechanisms a model has learned (world.md §2, §3), from the click `labels`
    and the model's `predicted` click probabilities of the split's first rows in file order (as `predict_split`).

    The truth gives the true click logit as a sum of named terms (`logit_<mechanism>` columns, row-aligned
    with the split). A least-squares fit of the model's logit, `logit(predicted)`, on those terms gives per term a
    coefficient: 1 means the model moves with that mechanism at its true scale, 0 that it ignores it, and values
    between that it has part of it. Read each coefficient on its own only as far as the terms are uncorrelated;
    `position` is not (it follows the logging ranker, so it carries part of the other terms), and its coefficient
    can exceed 1. `r2` is the share of the model's logit variance the true terms explain; the rest is noise the model
    learned. Beside each coefficient, `auc_without`: the Bayes AUC with that term left out of the truth, i.e. what
    the mechanism is worth. Returns {} for a split without a truth (real data) or a truth without terms.
    """
    path = dataset.truth_path(split)
    if path is None:
        return {}
    names = [c for c in pq.ParquetFile(path).schema_arrow.names if c.startswith("logit_")]
    truth = pq.read_table(path, columns=names)
    terms = np.stack([truth.column(c).to_numpy()[: len(predicted)] for c in names], axis=1).astype(np.float64)
    varying = terms.std(axis=0) > 1e-9  # the constant `base` term belongs to the intercept
    if not varying.any():
        return {}
    names, terms = [n for n, v in zip(names, varying) if v], terms[:, varying]
    eps = 1e-7
    p = np.clip(np.asarray(predicted, dtype=np.float64), eps, 1 - eps)
    model_logit = np.log(p) - np.log1p(-p)
    design = np.column_stack([np.ones(len(terms)), terms])
    coef, *_ = np.linalg.lstsq(design, model_logit, rcond=None)
    residual = model_logit - design @ coef
    total = terms.sum(axis=1)
    return {
        "r2": float(1 - residual.var() / model_logit.var()),
        "bayes_auc": metrics.auc(labels, total),
        "terms": {name[len("logit_"):]: {"coefficient": float(b), "auc_without": metrics.auc(labels, total - t)}
                  for name, b, t in zip(names, coef[1:], terms.T)},
    }


def evaluate_ranking(model: torch.nn.Module, dataset: Dataset, split: str, batch_size: int = 4096,
                     device: str | torch.device = "cpu", max_rows: int | None = None,
                     with_bayes: bool = True) -> dict[str, Any]:
    """`{task}_auc`, `{task}_gauc`, `{task}_logloss` per task; with `with_bayes`, also the truth's figures under
    `bayes` (synthetic worlds) and the item-popularity baseline's under `popularity`."""
    pred = predict_split(model, dataset, split, batch_size, device, max_rows)
    groups = pred.get("group")
    report: dict[str, Any] = {}
    for task in model.tasks:
        report.update(metrics.binary_report(pred[task], pred[f"pred_{task}"], groups, prefix=f"{task}_"))
    if with_bayes:
        bayes = bayes_report(dataset, split, list(model.tasks), pred, groups)
        if bayes:
            report["bayes"] = bayes
        report["popularity"] = item_rate_report(dataset, split, list(model.tasks), pred, groups)
    return report
