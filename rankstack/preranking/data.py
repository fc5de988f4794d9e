"""Pre-ranking data: feature fields with fetch level and cost, and request × candidate splits in memory
(autofas.md §2).

A `PrerankField` is one unit the pre-ranker may keep or drop: a categorical column, a bucketised numeric (its
bucket ids), a multi-valued column (pooled) or a raw numeric, with its level (`request`: fetched once per
request; `candidate`: once per candidate) and its fetch cost in ms from `schema.yaml`.

`PrerankSplit` holds one split as tensors shaped `[R, N_c]` (requests × candidates; `[R, N_c, L]` for
multi-valued fields): every field's ids or values, `shown`, `click`, the frozen teacher's logits and, on the
synthetic world, the true click probability. On real data (a CTR conversion with sampled negatives, e.g.
Foursquare NYC, autofas.md §8) every candidate carries a label, so `shown` is 1 everywhere. The view is small
enough on this machine to sit in memory (`small` world: 2 K requests × 200 candidates × ~45 fields), which makes
request-level batching trivial.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch

from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader
from rankstack.data.schema import SEQUENCE_ROLES, Schema
from rankstack.errors import DataError
from rankstack.train import EpochCursor

#: Batch keys of a `PrerankSplit` that are not feature fields.
META_KEYS = ("shown", "click", "teacher", "p_true")


@dataclass(frozen=True)
class PrerankField:
    """One feature field of the pre-ranker.

    name: the column; key: its batch key (`<name>__bucket` for a bucketised numeric); group: its embedding
    table ("" for a raw numeric); kind: `embed`, `multi` (pooled ids) or `dense`; level: request | candidate;
    cost_ms: fetch cost per request (request level) or per candidate; role: the schema role (item, cross, ...).
    """

    name: str
    key: str
    group: str
    kind: str
    level: str
    cost_ms: float
    role: str

    def request_cost_ms(self, n_cand: int) -> float:
        """What fetching this field costs one request of `n_cand` candidates (ĉ_f of autofas.md §4)."""
        return self.cost_ms if self.level == "request" else n_cand * self.cost_ms


def prerank_fields(schema: Schema, exclude: list[str] | tuple[str, ...] = ()) -> list[PrerankField]:
    """The pre-ranking fields of a schema, request-level first (behaviour sequences and text are not fields)."""
    out = []
    for col in schema.features:
        if col.role in SEQUENCE_ROLES or col.name in exclude:
            continue
        if col.kind == "numeric":
            kind, key, group = ("embed", f"{col.name}__bucket", f"{col.name}__bucket") if col.num_buckets else (
                "dense", col.name, "")
        elif col.kind == "sequence":
            kind, key, group = "multi", col.name, col.embedding_group
        else:
            kind, key, group = "embed", col.name, col.embedding_group
        out.append(PrerankField(col.name, key, group, kind, str(col.level), col.cost_ms, col.role))
    if not out:
        raise DataError(f"schema `{schema.name}` has no pre-ranking feature fields (non-sequence features).")
    return sorted(out, key=lambda f: f.level != "request")


@dataclass
class PrerankSplit:
    """One split, `[R, N_c]` tensors by batch key (see the module docstring)."""

    tensors: dict[str, torch.Tensor]
    request_ids: np.ndarray
    fields: list[PrerankField] = field(default_factory=list)

    @property
    def num_requests(self) -> int:
        return int(self.tensors["shown"].shape[0])

    @property
    def n_cand(self) -> int:
        return int(self.tensors["shown"].shape[1])

    def take(self, index: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}

    def subset(self, index: np.ndarray) -> PrerankSplit:
        return PrerankSplit(self.take(index), self.request_ids[index], self.fields)

    def batches(self, batch_requests: int) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches of requests, in order."""
        for lo in range(0, self.num_requests, batch_requests):
            yield self.take(np.arange(lo, min(lo + batch_requests, self.num_requests)))


def load_split(dataset: Dataset, split: str, fields: list[PrerankField]) -> PrerankSplit:
    """Read `split` of a pre-ranking view (each request's candidates contiguous, the same count per request).

    A view without a `shown` column has a label on every candidate (`shown` = 1 everywhere)."""
    file = dataset.split_file(split)
    rid = pq.read_table(file, columns=["request_id"]).column("request_id").to_numpy()
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    sizes = np.diff(np.r_[starts, len(rid)])
    if len(set(sizes.tolist())) != 1:
        raise DataError(f"{file}: requests have {sizes.min()}..{sizes.max()} candidates; the pre-ranking view needs "
                        "the same number per request, contiguous (write it with `build_preranking_view`).")
    n_cand = int(sizes[0])
    # A real CTR conversion (e.g. Foursquare: the real check-in plus sampled negatives) labels every candidate.
    labelled_all = "shown" not in dataset.schema.names
    wanted = {f.key for f in fields} | {"click"} | (set() if labelled_all else {"shown"})
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}
    for batch in BatchLoader(dataset, split, batch_size=n_cand * 256, shuffle=False):
        for key in wanted:
            parts[key].append(batch[key])
    tensors = {}
    for key, values in parts.items():
        flat = torch.cat(values)
        tensors[key] = flat.reshape(len(starts), n_cand, *flat.shape[1:])
    if labelled_all:
        tensors["shown"] = torch.ones_like(tensors["click"])
    truth = dataset.truth_path(split)
    if truth is not None:
        p = pq.read_table(truth, columns=["p_click"]).column("p_click").to_numpy()
        tensors["p_true"] = torch.from_numpy(p.astype(np.float32)).reshape(len(starts), n_cand)
    return PrerankSplit(tensors, rid[starts], fields)


class RequestLoader(EpochCursor):
    """Shuffled batches of whole requests from a `PrerankSplit`, in the `Trainer`'s loader protocol."""

    def __init__(self, split: PrerankSplit, batch_requests: int, seed: int = 0) -> None:
        self.split = split
        self.batch_requests = batch_requests
        self.seed = seed

    def __len__(self) -> int:
        return -(-self.split.num_requests // self.batch_requests)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.split.num_requests)
        for b in range(self.batches_yielded, len(self)):
            self.batches_yielded = b + 1
            yield self.split.take(order[b * self.batch_requests:(b + 1) * self.batch_requests])
        self.end_epoch()

