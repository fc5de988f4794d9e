"""The data contract: `schema.yaml`, which declares every column of a rankstack dataset.

A dataset is a folder:

    DIR/schema.yaml            this file's `Schema`
    DIR/<split>.parquet        one file per split (train, valid, test, ...)
    DIR/vocab/                 vocabularies built from the train split (`rankstack.data.vocab`)
    DIR/truth/                 optional; true probabilities of a synthetic world, read only by evaluation

Each column has a *kind* (how it is stored and encoded) and a *role* (what it means to a model):

- kinds: `categorical` (one id), `numeric` (one float), `sequence` (a list of ids), `text` (a string);
- roles: `key` (request/user ids used for grouping and caching, never a feature), `user`, `context`, `item`,
  `cross` (user x item), `label`, `longterm_seq`, `realtime_seq`, `history` (one undivided behaviour sequence),
  `meta` (carried along, never a feature).

A `sequence` with a sequence role is a behaviour sequence, left-padded with the newest event last; one with any
other role is a multi-valued field (a bag of ids, e.g. a POI's attributes). Sequence columns name the
`embedding_group` of the item field they repeat, so `realtime_poi_id` shares the table of `poi_id`.

For pre-ranking every feature column has a fetch `cost_ms` and a `level`: `request` columns are fetched once per
request, `candidate` columns once per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from rankstack.config import dump_yaml, from_dict, read_yaml
from rankstack.errors import DataError

Kind = Literal["categorical", "numeric", "sequence", "text"]
Role = Literal[
    "key", "user", "context", "item", "cross", "label", "longterm_seq", "realtime_seq", "history", "meta"
]
Level = Literal["request", "candidate"]

SEQUENCE_ROLES = ("longterm_seq", "realtime_seq", "history")
FEATURE_ROLES = ("user", "context", "item", "cross", *SEQUENCE_ROLES)
_DEFAULT_LEVEL = {"user": "request", "context": "request", "key": "request", "item": "candidate",
                  "cross": "candidate", "label": "candidate", "meta": "candidate",
                  "longterm_seq": "request", "realtime_seq": "request", "history": "request"}
_DTYPES = {
    "categorical": ("int64", "string"),
    "numeric": ("float32", "float64", "int64"),
    "sequence": ("int64", "string"),
    "text": ("string",),
}

#: Reserved ids in every vocabulary: 0 pads sequences, 1 is the out-of-vocabulary bucket.
PAD_ID = 0
OOV_ID = 1
NUM_RESERVED_IDS = 2


@dataclass(frozen=True)
class VocabSpec:
    """How raw values become embedding ids.

    policy: `build` (ids from the train split's values seen at least `min_count` times, others go to the OOV
        bucket) or `hash` (id = hash(value) mod `buckets`, no vocabulary file; for huge id spaces).
    min_count: minimum train count for a value to get its own id under `build` (default 1).
    buckets: number of hash buckets under `hash`.
    """

    policy: Literal["build", "hash"] = "build"
    min_count: int = 1
    buckets: int = 0

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"vocab.min_count must be at least 1, got {self.min_count}")
        if self.policy == "hash" and self.buckets < 1:
            raise ValueError("vocab.policy `hash` needs `buckets` >= 1 (the number of hash buckets)")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a dataset.

    name: the Parquet column name.
    kind: categorical | numeric | sequence | text.
    role: key | user | context | item | cross | label | longterm_seq | realtime_seq | history | meta.
    dtype: storage type (for a sequence, of its elements): int64 or string for ids, float32/float64/int64 for
        numerics, string for text. Defaults: int64 for ids, float32 for numerics, string for text.
    vocab: vocabulary policy for categorical and sequence columns (default: built from train, min_count 1).
    embedding_group: the embedding table this column uses; defaults to its own name. Columns in one group
        share one vocabulary (built from all of them) and one table.
    max_len: sequences only: events kept (the newest); longer ones are truncated, shorter ones left-padded.
    num_buckets: numerics only: if > 0, the loader also yields `<name>__bucket`, the train-quantile bucket id
        (what token-based rankers embed).
    level: request | candidate: when a pre-ranker pays `cost_ms` for this field (default from the role).
    cost_ms: fetch cost in milliseconds, per request or per candidate according to `level`.
    description: free text shown by `rankstack data inspect`.
    """

    name: str
    kind: Kind
    role: Role
    dtype: str = ""
    vocab: VocabSpec = field(default_factory=VocabSpec)
    embedding_group: str = ""
    max_len: int = 0
    num_buckets: int = 0
    level: Level | None = None
    cost_ms: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        allowed = _DTYPES[self.kind]
        if not self.dtype:
            object.__setattr__(self, "dtype", allowed[0])
        if self.dtype not in allowed:
            raise ValueError(
                f"column `{self.name}`: dtype `{self.dtype}` is not allowed for kind `{self.kind}`; "
                f"use one of {', '.join(allowed)}"
            )
        if not self.embedding_group:
            object.__setattr__(self, "embedding_group", self.name)
        if self.level is None:
            object.__setattr__(self, "level", _DEFAULT_LEVEL[self.role])
        if self.kind == "sequence" and self.max_len < 1:
            raise ValueError(f"column `{self.name}`: a sequence needs `max_len` >= 1 (the events kept)")
        if self.kind != "sequence" and self.max_len:
            raise ValueError(f"column `{self.name}`: `max_len` applies to sequences only")
        if self.role in SEQUENCE_ROLES and self.kind != "sequence":
            raise ValueError(f"column `{self.name}`: role `{self.role}` needs kind `sequence`")
        if self.role == "label" and self.kind != "numeric":
            raise ValueError(f"column `{self.name}`: a label must be kind `numeric` (0/1 or a graded value)")
        if self.role == "key" and self.kind != "categorical":
            raise ValueError(f"column `{self.name}`: a key must be kind `categorical`")
        if self.num_buckets and self.kind != "numeric":
            raise ValueError(f"column `{self.name}`: `num_buckets` applies to numeric columns only")
        if self.cost_ms < 0:
            raise ValueError(f"column `{self.name}`: `cost_ms` must be >= 0, got {self.cost_ms}")

    @property
    def has_vocab(self) -> bool:
        """Whether values are mapped to embedding ids (keys keep their raw value)."""
        return self.kind in ("categorical", "sequence") and self.role != "key"

    @property
    def is_feature(self) -> bool:
        return self.role in FEATURE_ROLES


@dataclass(frozen=True)
class Schema:
    """A dataset's schema: its columns and splits.

    name: dataset name.
    columns: every column in the Parquet files, in order.
    splits: split names; each is `<split>.parquet` in the dataset folder.
    group_key: the column GAUC groups by (usually the user id); empty for none.
    request_key: the column that identifies a request (all candidates of one request share it); empty for none.
    description: free text.
    """

    name: str
    columns: list[ColumnSpec]
    splits: list[str] = field(default_factory=lambda: ["train", "valid", "test"])
    group_key: str = ""
    request_key: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column `{dupes[0]}` is declared twice")
        if not self.splits:
            raise ValueError("`splits` must name at least one split")
        for key in (self.group_key, self.request_key):
            if key and key not in names:
                raise ValueError(f"`{key}` is named as a key but is not a declared column")
        groups: dict[str, ColumnSpec] = {}
        for col in self.columns:
            if not col.has_vocab:
                continue
            first = groups.setdefault(col.embedding_group, col)
            if (first.dtype, first.vocab) != (col.dtype, col.vocab):
                raise ValueError(
                    f"columns `{first.name}` and `{col.name}` share embedding group `{col.embedding_group}` "
                    "but differ in dtype or vocab policy; give them the same ones"
                )

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"no column `{name}` in schema `{self.name}`")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def by_role(self, *roles: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role in roles]

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self.by_role("label")]

    @property
    def features(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.is_feature and c.kind != "text"]

    def embedding_groups(self) -> dict[str, list[ColumnSpec]]:
        """Columns by embedding group (only columns with a vocabulary)."""
        groups: dict[str, list[ColumnSpec]] = {}
        for col in self.columns:
            if col.has_vocab:
                groups.setdefault(col.embedding_group, []).append(col)
        return groups

    def select(self, names: list[str]) -> Schema:
        """The schema restricted to `names` (plus keys and labels, which every loader keeps)."""
        keep = set(names) | {c.name for c in self.by_role("key", "label")}
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise DataError(f"column `{unknown[0]}` is not in schema `{self.name}`; known: {', '.join(self.names)}")
        return replace(self, columns=[c for c in self.columns if c.name in keep])

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.yaml"
        if not path.is_file():
            raise DataError(f"{path} does not exist; a rankstack dataset folder needs a schema.yaml "
                            "(see docs/data-contract.md, or create one with `rankstack data convert`).")
        return from_dict(cls, read_yaml(path), where=str(path))

    def save(self, path: str | Path) -> None:
        dump_yaml(self, path)
