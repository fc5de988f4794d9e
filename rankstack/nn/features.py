"""Field embeddings shared by every ranking and pre-ranking model.

`FieldLayout` reads a dataset's schema and vocabularies and sorts the feature columns into what ranking models
consume (hemix.md §2):
- `ns`: non-sequence categorical fields of the user, the request context and user x item crosses, plus
  bucketised numerics and pooled multi-valued fields — one embedding vector each;
- `dense`: numerics without buckets, as raw floats;
- `target`: the candidate's item fields;
- `sequences`: per behaviour stream (`longterm_seq`, `realtime_seq`, `history`), the columns aligned with the
  target's item fields (a stream's `realtime_category_l2` lines up with the target's `category_l2` because they
  share an embedding group) plus the action column.

`FieldEmbedder` owns one table per embedding group, so a sequence of items and the target item share the item
tables. It returns an `EmbeddedBatch` of tensors; it has no data-dependent Python control flow, so models built
on it export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rankstack.data.dataset import Dataset
from rankstack.data.schema import PAD_ID, SEQUENCE_ROLES, ColumnSpec
from rankstack.errors import ConfigError

ACTION_GROUP = "action"
NS_ROLES = ("user", "context", "cross")


@dataclass(frozen=True)
class SequenceLayout:
    """One behaviour stream: for each target item field, its column in this stream (or None if absent)."""

    role: str
    item_columns: tuple[str | None, ...]
    action_column: str | None
    max_len: int


@dataclass(frozen=True)
class FieldLayout:
    """Which batch keys a ranking model reads, in a fixed order, and the size of every embedding table."""

    ns: tuple[tuple[str, str], ...]  # (batch key, embedding group)
    multi_valued: tuple[tuple[str, str], ...]
    dense: tuple[str, ...]
    target: tuple[tuple[str, str], ...]
    sequences: tuple[SequenceLayout, ...]
    tables: dict[str, int] = field(default_factory=dict)
    dense_moments: tuple[tuple[float, float], ...] = ()  # train (mean, std) per dense field
    levels: dict[str, str] = field(default_factory=dict)  # batch key → request | candidate
    labels: tuple[str, ...] = ()

    @classmethod
    def from_dataset(cls, dataset: Dataset, labels: list[str] | None = None) -> FieldLayout:
        schema = dataset.schema
        tables: dict[str, int] = {}
        levels: dict[str, str] = {}
        ns, mv, dense, target = [], [], [], []

        def add_table(group: str, column: str) -> None:
            tables[group] = dataset.vocab_size(column)

        for col in schema.features:
            if col.role in SEQUENCE_ROLES:
                continue
            levels[col.name] = col.level
            if col.kind == "numeric":
                if col.num_buckets:
                    key = f"{col.name}__bucket"
                    ns.append((key, key))
                    tables[key] = dataset.vocab_size(col.name)
                    levels[key] = col.level
                else:
                    dense.append(col.name)
            elif col.kind == "sequence":
                mv.append((col.name, col.embedding_group))
                add_table(col.embedding_group, col.name)
            elif col.role == "item":
                target.append((col.name, col.embedding_group))
                add_table(col.embedding_group, col.name)
            else:
                ns.append((col.name, col.embedding_group))
                add_table(col.embedding_group, col.name)
        target_groups = [g for _, g in target]
        sequences = []
        for role in SEQUENCE_ROLES:
            cols: list[ColumnSpec] = schema.by_role(role)
            if not cols:
                continue
            by_group = {c.embedding_group: c for c in cols}
            action = by_group.get(ACTION_GROUP)
            if action is not None:
                add_table(ACTION_GROUP, action.name)
            for c in cols:
                if c.embedding_group not in tables:
                    add_table(c.embedding_group, c.name)
            sequences.append(SequenceLayout(
                role=role,
                item_columns=tuple(by_group[g].name if g in by_group else None for g in target_groups),
                action_column=action.name if action is not None else None,
                max_len=max(c.max_len for c in cols),
            ))
        task_labels = tuple(labels) if labels else tuple(schema.labels)
        unknown = [t for t in task_labels if t not in schema.labels]
        if unknown:
            raise ValueError(f"task `{unknown[0]}` is not a label column of {dataset.path} "
                             f"(labels: {', '.join(schema.labels)})")
        moments = tuple(dataset.vocab.moments[name] for name in dense)
        return cls(tuple(ns), tuple(mv), tuple(dense), tuple(target), tuple(sequences), tables, moments, levels,
                   task_labels)

    def level_of(self, key: str) -> str:
        """`request` or `candidate`; a field without a declared level counts as `candidate` (always correct:
        a serving cache only skips recomputing `request` fields)."""
        return self.levels.get(key, "candidate")


@dataclass
class EmbeddedBatch:
    """Embedded inputs: ns [B, F_ns, e]; dense [B, F_dense]; target [B, F_it, e];
    per stream, items [B, L, F_it, e], actions [B, L, e] (zeros when the stream has none) and mask [B, L]."""

    ns: torch.Tensor
    dense: torch.Tensor
    target: torch.Tensor
    streams: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class FieldEmbedder(nn.Module):
    """One embedding table per group; embeds a batch according to a `FieldLayout`."""

    def __init__(self, layout: FieldLayout, dim: int, init_std: float = 1e-4, match_counts: bool = False,
                 match_windows: Sequence[int] = ()) -> None:
        super().__init__()
        check_match_windows(match_counts, match_windows)
        self.layout = layout
        self.dim = dim
        self.match_counts = match_counts
        self.match_windows = tuple(match_windows)
        self.tables = nn.ModuleDict({
            group: nn.Embedding(size, dim, padding_idx=PAD_ID) for group, size in sorted(layout.tables.items())
        })
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[PAD_ID].zero_()
        # Dense numerics are standardised with train moments, so raw scales (km, counts) don't matter.
        moments = torch.tensor(layout.dense_moments or [(0.0, 1.0)], dtype=torch.float32)
        self.register_buffer("dense_mean", moments[:, 0], persistent=False)
        self.register_buffer("dense_std", moments[:, 1].clamp(min=1e-6), persistent=False)

    @property
    def num_ns(self) -> int:
        return len(self.layout.ns) + len(self.layout.multi_valued)

    @property
    def num_item_fields(self) -> int:
        return len(self.layout.target)

    @property
    def num_dense(self) -> int:
        """Width of `forward`'s dense part: the layout's numerics, plus with `match_counts` one per stream × item
        field, and as many again per entry of `match_windows`."""
        per_count = len(self.layout.sequences) * self.num_item_fields
        return len(self.layout.dense) + (per_count * (1 + len(self.match_windows)) if self.match_counts else 0)

    def _lookup(self, group: str, ids: torch.Tensor) -> torch.Tensor:
        return self.tables[group](ids)

    def _keeps(self, key: str, level: str | None) -> bool:
        return level is None or self.layout.level_of(key) == level

    def ns_vectors(self, batch: dict[str, torch.Tensor], level: str | None = None) -> torch.Tensor:
        """`[B, F, e]`: the single-valued then the pooled multi-valued NS fields in layout order; with `level`
        (`request` / `candidate`) only that level's fields, so a serving cache can embed the request part once."""
        vectors = [self._lookup(group, batch[key]) for key, group in self.layout.ns if self._keeps(key, level)]
        for key, group in self.layout.multi_valued:
            if not self._keeps(key, level):
                continue
            ids = batch[key]
            mask = (ids != PAD_ID).unsqueeze(-1).to(self.tables[group].weight.dtype)
            vectors.append((self._lookup(group, ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if vectors:
            return torch.stack(vectors, 1)
        return self.dense_mean.new_zeros((_batch_size(batch), 0, self.dim))

    def dense_values(self, batch: dict[str, torch.Tensor], level: str | None = None) -> torch.Tensor:
        """`[B, F_dense]`: dense numerics standardised with the train moments (only `level`'s when given)."""
        index = [i for i, key in enumerate(self.layout.dense) if self._keeps(key, level)]
        if not index:
            return self.dense_mean.new_zeros((_batch_size(batch), 0))
        values = torch.stack([batch[self.layout.dense[i]] for i in index], 1)
        return (values - self.dense_mean[index]) / self.dense_std[index]

    def target_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[B, F_it, e]`: the candidate's item fields."""
        return torch.stack([self._lookup(group, batch[key]) for key, group in self.layout.target], 1)

    def stream_vectors(self, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per behaviour stream: items `[B, L, F_it, e]`, actions `[B, L, e]`, mask `[B, L]` (True = event)."""
        streams = []
        groups = [g for _, g in self.layout.target]
        for seq in self.layout.sequences:
            present = [c for c in seq.item_columns if c is not None]
            if seq.action_column is not None:
                present.append(seq.action_column)
            ids = batch[present[0]]
            mask = ids != PAD_ID
            zeros = self.dense_mean.new_zeros((*ids.shape, self.dim))
            items = [zeros if column is None else self._lookup(group, batch[column])
                     for column, group in zip(seq.item_columns, groups)]
            actions = (self._lookup(ACTION_GROUP, batch[seq.action_column]) if seq.action_column is not None
                       else zeros)
            streams.append((torch.stack(items, 2), actions, mask))
        return streams

    def match_count_values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[B, S·F_it·(1 + len(match_windows))]`: per behaviour stream and item field, log(1 + the number of the
        stream's events that equal the candidate on that field) — `target_matches` summed over time, the dense form
        of the target-behaviour match that HeMix and DIN read per event with `target_match`; then the same counts
        over each `match_windows` window of newest events."""
        return match_count_features(stream_item_ids(self.layout, batch), target_item_ids(self.layout, batch),
                                    self.match_windows)

    def forward(self, batch: dict[str, torch.Tensor]) -> EmbeddedBatch:
        dense = self.dense_values(batch)
        if self.match_counts:
            dense = torch.cat([dense, self.match_count_values(batch)], dim=1)
        return EmbeddedBatch(ns=self.ns_vectors(batch), dense=dense, target=self.target_vectors(batch),
                             streams=self.stream_vectors(batch))


def stream_item_ids(layout: FieldLayout, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per behaviour stream, the events' item-field ids `[B, L, F_it]` in target-field order; a field the stream
    lacks is all padding (PAD_ID)."""
    streams = []
    for seq in layout.sequences:
        present = next(batch[c] for c in (*seq.item_columns, seq.action_column) if c is not None)
        streams.append(torch.stack([torch.full_like(present, PAD_ID) if column is None else batch[column]
                                    for column in seq.item_columns], dim=-1))
    return streams


def target_item_ids(layout: FieldLayout, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The candidate's item-field ids `[B, F_it]` in target-field order."""
    return torch.stack([batch[key] for key, _ in layout.target], dim=-1)


def target_matches(event_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """`[B, L, F_it]` floats: 1 where an event's item field equals the candidate's (`target_ids [B, F_it]`),
    0 elsewhere and on padding. A target-behaviour cross feature: whether the event shares the candidate's
    category, brand, item."""
    return ((event_ids == target_ids.unsqueeze(1)) & (event_ids != PAD_ID)).float()


def check_match_windows(match_counts: bool, windows: Sequence[int]) -> None:
    """The `match_windows` option's rules: the windows extend `match_counts`, and each is a count of newest events."""
    if windows and not match_counts:
        raise ConfigError("match_windows needs match_counts: true (the windows are extra match counts); set "
                          "match_counts: true or match_windows: []")
    if any(not isinstance(w, int) or w < 1 for w in windows):
        raise ConfigError(f"match_windows: each window is a number of newest events ≥ 1, got {list(windows)}")


def match_count_features(stream_ids: list[torch.Tensor], target_ids: torch.Tensor,
                         windows: Sequence[int] = ()) -> torch.Tensor:
    """`[B, S·F_it·(1 + len(windows))]`: per stream (`stream_ids`, each `[B or 1, L, F_it]`, newest event last) and
    item field, log(1 + the number of events equal to the candidate (`target_ids [B, F_it]`)) — `target_matches`
    summed over time; then the same count over each stream's newest `w` slots for each `w` of `windows` (w = 1:
    whether the newest event matches), the order that a pooled model cannot see otherwise. No streams give
    `[B, 0]`."""
    if not stream_ids:
        return target_ids.new_zeros((target_ids.shape[0], 0), dtype=torch.float32)
    matches = [target_matches(ids, target_ids) for ids in stream_ids]
    return torch.log1p(torch.cat([m.sum(1) for m in matches] + [m[:, -w:].sum(1) for w in windows for m in matches], 1))


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    return next(iter(batch.values())).shape[0]


def concat_streams(streams: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All behaviour streams as one history along time, in layout order (`longterm_seq` before the newer
    `realtime_seq`): items `[B, ΣL, F_it, e]`, actions `[B, ΣL, e]`, mask `[B, ΣL]`. Padding may then sit
    between two streams; every consumer masks it."""
    items, actions, masks = zip(*streams)
    return torch.cat(items, 1), torch.cat(actions, 1), torch.cat(masks, 1)


def pooled_streams(streams: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`[B, S·(F_it+1), e]`: each stream as a masked mean per item field plus the masked mean of its action
    embedding — how models without a sequence module see the history (hemix.md §5)."""
    vectors = []
    for items, actions, mask in streams:
        vectors.append(masked_mean(items, mask, dim=1))
        vectors.append(masked_mean(actions, mask, dim=1).unsqueeze(1))
    return torch.cat(vectors, 1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `values` over `dim` where `mask` is True; zeros for an all-padding row (an empty sequence)."""
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def mlp(sizes: list[int], dropout: float = 0.0, activation: type[nn.Module] = nn.ReLU,
        last_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given sizes (`sizes[0]` is the input width) with activations between them."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
