"""What every ranking model shares: per-task towers, the training loss and the prediction interface.

A ranking model turns a batch into one logit per task (`[B, T]`). Tasks are label columns (`click`, `order`).
With `esmm` the conversion task is trained ESMM-style: its tower predicts p(order | click) and the model's
order probability is p(click) · p(order | click), trained on the unconditional `order` label, so conversion is
learned over all impressions instead of only the clicked ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankstack.nn.features import FieldLayout, mlp


class TaskTowers(nn.Module):
    """One MLP tower per task on a shared representation; returns logits `[B, T]`."""

    def __init__(self, in_dim: int, tasks: tuple[str, ...], hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(mlp([in_dim, *hidden], dropout), nn.Linear(hidden[-1] if hidden else in_dim, 1))
            for _ in tasks
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(h) for tower in self.towers], dim=1)


class RankingModel(nn.Module):
    """Base class: subclasses implement `logits(batch) -> [B, T]`; training and prediction live here."""

    def __init__(self, layout: FieldLayout, esmm: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.tasks = layout.labels
        self.esmm = esmm and len(self.tasks) == 2

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-task probabilities `[B, T]` (the exported/served output)."""
        return self.probabilities(self.logits(batch))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits `[B, T]` → probabilities; with ESMM the second task becomes p(click)·p(order | click)."""
        probs = torch.sigmoid(logits)
        if self.esmm:
            probs = torch.stack([probs[:, 0], probs[:, 0] * probs[:, 1]], dim=1)
        return probs

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over tasks of binary cross-entropy (ESMM: on p(click) and p(click)·p(order | click))."""
        logits = self.logits(batch).float()
        labels = torch.stack([batch[t] for t in self.tasks], dim=1).float()
        if not self.esmm:
            return F.binary_cross_entropy_with_logits(logits, labels, reduction="mean") * len(self.tasks)
        ctr_loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0])
        # log p(order) = log σ(z_ctr) + log σ(z_cvr), computed in log space for stability.
        log_p = F.logsigmoid(logits[:, 0]) + F.logsigmoid(logits[:, 1])
        log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
        ctcvr_loss = -(labels[:, 1] * log_p + (1 - labels[:, 1]) * log_not_p).mean()
        return ctr_loss + ctcvr_loss

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        probs = self.forward(batch)
        return {task: probs[:, i] for i, task in enumerate(self.tasks)}
