"""Pre-ranking metrics (autofas.md §7): AUC and GAUC on displayed rows, Overlap@K with the teacher's top-K among
all candidates, click recall@K, and on the synthetic world the same figures for the true probabilities.

`Overlap@K` (= recall of the teacher's top-K) per request is `|TopK_S ∩ TopK_T| / K`, averaged over requests;
random scoring gives `K / N_c` in expectation and the teacher 1. `true_overlap@K` compares with the top-K of the
true click probabilities (the world's answer key, never a training signal).

Top-K sets break tied scores at random (a fixed seed), not by candidate position: a view's order can carry the
label (the world's displayed candidates come first; a Foursquare request's real check-in is its first row), and a
student with few candidate-level fields scores many candidates alike.
"""

from __future__ import annotations

import numpy as np
import torch

from rankstack.metrics import auc, gauc
from rankstack.preranking.data import PrerankSplit

KS = (10, 20)


def top_k(scores: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """`[R, k]` candidate indices of each request's k highest scores, ties broken at random (fixed `seed`)."""
    shuffle = torch.argsort(torch.rand(scores.shape, generator=torch.Generator().manual_seed(seed)), dim=1)
    return shuffle.gather(1, torch.topk(scores.gather(1, shuffle), k, dim=1).indices)


def overlap_at_k(scores: torch.Tensor, reference: torch.Tensor, k: int) -> float:
    """Mean over requests of |top-k(scores) ∩ top-k(reference)| / k; both `[R, N_c]`."""
    top_s = top_k(scores, k)
    top_r = top_k(reference, k)
    hits = (top_s.unsqueeze(2) == top_r.unsqueeze(1)).any(2).float().sum(1)
    return float((hits / k).mean())


def click_recall_at_k(scores: torch.Tensor, split: PrerankSplit, k: int) -> float:
    """Share of all clicks whose candidate is in the scorer's top-k of its request."""
    click = split.tensors["click"] * split.tensors["shown"]
    top = torch.zeros_like(click).scatter_(1, top_k(scores, k), 1.0)
    total = float(click.sum())
    return float((click * top).sum()) / total if total else float("nan")


def score_report(scores: torch.Tensor, split: PrerankSplit, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Every §7 quality metric of `scores` `[R, N_c]` on `split`."""
    shown = split.tensors["shown"] > 0
    labels = split.tensors["click"][shown].numpy()
    s = scores[shown].double().numpy()
    groups = np.broadcast_to(np.arange(split.num_requests)[:, None], shown.shape)[shown.numpy()]
    out = {"auc": auc(labels, s), "gauc": gauc(labels, s, groups)}
    for k in ks:
        if "teacher" in split.tensors:
            out[f"overlap@{k}"] = overlap_at_k(scores, split.tensors["teacher"], k)
        if "p_true" in split.tensors:
            out[f"true_overlap@{k}"] = overlap_at_k(scores, split.tensors["p_true"], k)
        out[f"click_recall@{k}"] = click_recall_at_k(scores, split, k)
    return out


@torch.no_grad()
def model_scores(model: torch.nn.Module, split: PrerankSplit, batch_requests: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model.logits(b) for b in split.batches(batch_requests)])


def references(split: PrerankSplit, ks: tuple[int, ...] = KS, seed: int = 0) -> dict[str, dict[str, float]]:
    """The teacher, the true probabilities (Bayes-optimal) and random scores, scored the same way."""
    out = {}
    if "teacher" in split.tensors:
        out["teacher"] = score_report(split.tensors["teacher"], split, ks)
    if "p_true" in split.tensors:
        out["bayes"] = score_report(split.tensors["p_true"], split, ks)
    gen = torch.Generator().manual_seed(seed)
    out["random"] = score_report(torch.rand(split.tensors["shown"].shape, generator=gen), split, ks)
    return out
