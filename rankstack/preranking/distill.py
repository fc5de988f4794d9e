"""Teacher guidance for pre-ranking (autofas.md §3.6): click BCE on displayed rows, pointwise and listwise
knowledge distillation from the frozen ranking teacher over all candidates, and teacher-logit precomputation.

The teacher is any `rankstack.ranking` model (a `train ranking` run); it scores every candidate of the view once
(`teacher_logits`), so guidance costs no extra pass during search or retraining.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rankstack.errors import ConfigError
from rankstack.preranking.data import PrerankSplit
from rankstack.ranking.base import RankingModel


def bce_on_shown(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE(click, σ(z)) over displayed candidates only (non-displayed ones have no label)."""
    shown = batch["shown"] > 0
    return F.binary_cross_entropy_with_logits(logits[shown], batch["click"][shown])


def pointwise_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BCE(σ(sg(z_T)/T), σ(z_S/T)) over every candidate."""
    return F.binary_cross_entropy_with_logits(student / temperature, torch.sigmoid(teacher.detach() / temperature))


def listwise_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Ranking consistency: per request, KL(softmax(sg(z_T)/T) ‖ softmax(z_S/T)) over its candidates."""
    target = F.log_softmax(teacher.detach() / temperature, dim=-1)
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), target, log_target=True, reduction="batchmean")


@torch.no_grad()
def teacher_logits(teacher: RankingModel, split: PrerankSplit, batch_requests: int = 32) -> torch.Tensor:
    """`[R, N_c]` click logits of the teacher on every candidate of `split` (its batch keys must cover the
    teacher's features: train the teacher on the view's columns)."""
    teacher.eval()
    missing = sorted(_keys(teacher) - set(split.tensors))
    if missing:
        raise ConfigError(f"the teacher reads `{missing[0]}`, which the pre-ranking view does not provide; train "
                          "the teacher with `features:` limited to the view's columns (configs/preranking/).")
    out = []
    for batch in split.batches(batch_requests):
        r, n = batch["shown"].shape
        flat = {k: v.reshape(r * n, *v.shape[2:]) for k, v in batch.items()}
        out.append(teacher.logits(flat)[:, 0].reshape(r, n))
    return torch.cat(out)


def _keys(teacher: RankingModel) -> set[str]:
    layout = teacher.layout
    return {k for k, _ in layout.ns} | {k for k, _ in layout.multi_valued} | set(layout.dense) | {
        k for k, _ in layout.target}


def load_teacher(run_dir: str | Path) -> RankingModel:
    """The best weights of a finished `rankstack train ranking` run."""
    from rankstack.ranking.run import build_for, load_run_config
    from rankstack.train.checkpoint import best_weights_path, load_weights

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; `teacher_run` must be a folder `rankstack train ranking` "
                          "wrote.")
    _, _, model = build_for(load_run_config(config_path), str(config_path))
    best = best_weights_path(run_dir)
    if not best.exists():
        raise ConfigError(f"{run_dir} has no {best.name}; the teacher run did not finish an evaluation.")
    model.load_state_dict(load_weights(best))
    return model.eval()
