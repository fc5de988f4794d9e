"""Parameter accounting: dense and embedding counts, broken down by a model's parts (hemix.md §4, §6)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn


def parameter_breakdown(model: nn.Module, groups: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """Parameter counts of `model`: `embeddings` (the `nn.Embedding` tables), `dense` (all other parameters),
    and the dense parameters split into parts.

    groups: `(part, regex)` pairs tried in order against each dense parameter's name (`re.match`); a parameter
        no pattern matches is counted under its top-level module's name. Without groups every dense parameter
        is counted under its top-level module.

    >>> parameter_breakdown(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))
    {'embeddings': 40, 'dense': 10, '1': 10}
    """
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    counts: dict[str, int] = {"embeddings": 0, "dense": 0}
    compiled = [(part, re.compile(pattern)) for part, pattern in groups]
    for name, param in model.named_parameters():
        if id(param) in embedding_ids:
            counts["embeddings"] += param.numel()
            continue
        counts["dense"] += param.numel()
        part = next((p for p, pattern in compiled if pattern.match(name)), name.split(".")[0])
        counts[part] = counts.get(part, 0) + param.numel()
    return counts
