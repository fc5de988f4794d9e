"""The hand-designed distilled MLP baseline (autofas.md §6): an `MLPStudent` trained with the AutoFAS retraining
recipe (BCE + KD from the frozen teacher, request-split layer 1) on a hand-picked architecture and feature set:
sizes S [128, 64], M [256, 128, 64], L [512, 256, 128]; fields `all`, or `cheap` (fields in ascending ĉ_f until
their retrieval cost reaches half the reference budget — what an engineer picks without importances).
The all-features MLP control is size M on all fields trained on clicks only (no teacher).
"""

from __future__ import annotations

from rankstack.preranking.data import PrerankField

SIZES: dict[str, list[int]] = {"S": [128, 64], "M": [256, 128, 64], "L": [512, 256, 128]}


def cheap_fields(fields: list[PrerankField], n_cand: int, retrieval_budget_ms: float, cost_scale: float) -> list[str]:
    """Fields in ascending per-request cost while their summed retrieval cost stays within the budget."""
    kept, total = [], 0.0
    for f in sorted(fields, key=lambda f: f.request_cost_ms(n_cand)):
        cost = cost_scale * f.request_cost_ms(n_cand)
        if total + cost > retrieval_budget_ms and kept:
            break
        kept.append(f.name)
        total += cost
    return kept
