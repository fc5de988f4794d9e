"""Vocabularies: raw categorical values → embedding ids, built from the train split.

Ids 0 and 1 are reserved in every table: 0 pads sequences, 1 is the out-of-vocabulary bucket that unseen or rare
values (train count below `min_count`) map to. A group with the `hash` policy has no file: its id is
`2 + hash(value) mod buckets`. Numeric columns with `num_buckets > 0` get train-quantile boundaries here too.

On disk (`DIR/vocab/`): `index.json` (per group: policy, dtype, size, file) and one Parquet file per built
group with columns `value` and `count`, most frequent first. Encoding is vectorised: a dense lookup table for
small non-negative integer ids, binary search for large ones, Arrow's hash lookup for strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack.data.schema import NUM_RESERVED_IDS, OOV_ID, ColumnSpec, Schema, VocabSpec

_DENSE_LUT_MAX = 1 << 24  # beyond this max id, binary search instead of a dense table
_QUANTILE_SAMPLE = 1 << 21  # rows per numeric column used for quantile bucket boundaries


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-spread, platform-independent hash of int64 values."""
    x = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def hash_strings(values: pa.Array) -> np.ndarray:
    """Stable 64-bit hashes of strings (hashing each distinct value once)."""
    encoded = pc.dictionary_encode(values)
    uniques = encoded.dictionary.to_pylist()
    table = np.array(
        [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") for u in uniques],
        dtype=np.uint64,
    )
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


@dataclass
class GroupVocab:
    """The id mapping of one embedding group."""

    policy: str
    dtype: str
    size: int  # number of embedding rows, including the reserved ids
    values: pa.Array | None = None  # built groups: values in id order (id = position + NUM_RESERVED_IDS)
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._lut: np.ndarray | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        if self.policy == "build" and self.dtype == "int64" and self.values is not None and len(self.values):
            raw = self.values.to_numpy()
            ids = np.arange(NUM_RESERVED_IDS, NUM_RESERVED_IDS + len(raw), dtype=np.int64)
            if raw.min() >= 0 and raw.max() < _DENSE_LUT_MAX:
                # One slot past the largest known id catches every larger (unseen) id as OOV.
                self._lut = np.full(int(raw.max()) + 2, OOV_ID, dtype=np.int32)  # ids fit; half the bytes
                self._lut[raw] = ids
            else:
                order = np.argsort(raw)
                self._sorted = (raw[order], ids[order])

    def encode(self, values: pa.Array) -> np.ndarray:
        """Map raw values (an Arrow array without nulls) to integer ids (int32 from the dense lookup table, else
        int64); unseen values → OOV."""
        n = len(values)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self.policy == "hash":
            hashed = hash_strings(values) if self.dtype == "string" else mix64(values.to_numpy())
            return (hashed % np.uint64(self.size - NUM_RESERVED_IDS)).astype(np.int64) + NUM_RESERVED_IDS
        if self.dtype == "string":
            idx = pc.index_in(values, value_set=self.values)
            return pc.fill_null(idx, OOV_ID - NUM_RESERVED_IDS).to_numpy().astype(np.int64) + NUM_RESERVED_IDS
        raw = values.to_numpy()
        if self._lut is not None:
            # The slot past the largest known id is OOV, so clipping sends every larger (unseen) id there; index
            # -1 is that slot too, which sends negative ids to OOV on the (rare) path that needs it.
            if raw.min() >= 0:
                return np.take(self._lut, raw, mode="clip")
            return self._lut[np.clip(raw, -1, len(self._lut) - 1)]
        if self._sorted is None:  # empty vocabulary: everything is out of vocabulary
            return np.full(n, OOV_ID, dtype=np.int64)
        keys, ids = self._sorted
        pos = np.clip(np.searchsorted(keys, raw), 0, len(keys) - 1)
        return np.where(keys[pos] == raw, ids[pos], OOV_ID)


@dataclass
class Vocabulary:
    """All embedding groups of a dataset, plus the quantile boundaries of bucketised numerics."""

    groups: dict[str, GroupVocab]
    boundaries: dict[str, np.ndarray]
    moments: dict[str, tuple[float, float]]  # numeric feature → (train mean, train std), for standardising

    def size(self, group: str) -> int:
        return self.groups[group].size

    def encode(self, column: ColumnSpec, values: pa.Array) -> np.ndarray:
        return self.groups[column.embedding_group].encode(values)

    def bucketize(self, column: str, values: np.ndarray) -> np.ndarray:
        """Bucket ids of a numeric column: bucket i holds (b_{i-1}, b_i], so a value equal to a boundary stays in
        the bucket below it. Quantile boundaries land on point masses (a count that is 0 for 96 % of the rows gets
        the single boundary 0), and closing buckets on the right keeps such a mass apart from every larger value;
        closed on the left, 0 and all positive counts would share one bucket and the feature would vanish."""
        return np.searchsorted(self.boundaries[column], values, side="left").astype(np.int64) + NUM_RESERVED_IDS

    def bucket_count(self, column: str) -> int:
        return len(self.boundaries[column]) + 1 + NUM_RESERVED_IDS

    # ---- building -----------------------------------------------------------------------------------

    @classmethod
    def build(cls, schema: Schema, train_files: Iterable[Path], batch_rows: int = 1 << 14) -> Vocabulary:
        """Count every built group's values over the train split (streaming) and fix the id mapping."""
        groups = schema.embedding_groups()
        counters: dict[str, Counter] = {g: Counter() for g, cols in groups.items() if cols[0].vocab.policy == "build"}
        numeric = [c for c in schema.columns if c.kind == "numeric" and c.is_feature]
        samples: dict[str, list[np.ndarray]] = {c.name: [] for c in numeric}
        sums: dict[str, np.ndarray] = {c.name: np.zeros(3) for c in numeric}  # count, sum, sum of squares
        wanted = [c.name for cols in groups.values() for c in cols if c.embedding_group in counters]
        wanted += [c.name for c in numeric]
        for path in train_files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=wanted):
                for name in wanted:
                    col = schema.column(name)
                    arr = batch.column(name)
                    if col.kind == "numeric":
                        values = arr.to_numpy(zero_copy_only=False).astype(np.float64)
                        values = values[np.isfinite(values)]
                        sums[name] += (len(values), values.sum(), np.square(values).sum())
                        # Quantile boundaries come from the first rows only, so memory stays bounded.
                        if col.num_buckets and sum(len(v) for v in samples[name]) < _QUANTILE_SAMPLE:
                            samples[name].append(values)
                        continue
                    if col.kind == "sequence":
                        arr = pc.list_flatten(arr)
                    uniques = pc.value_counts(arr.drop_null())
                    counter = counters[col.embedding_group]
                    for value, count in zip(uniques.field("values").to_pylist(), uniques.field("counts").to_pylist()):
                        counter[value] += count
        built: dict[str, GroupVocab] = {}
        for group, cols in groups.items():
            spec: VocabSpec = cols[0].vocab
            dtype = cols[0].dtype
            if spec.policy == "hash":
                built[group] = GroupVocab("hash", dtype, spec.buckets + NUM_RESERVED_IDS)
                continue
            kept = sorted(
                ((v, c) for v, c in counters[group].items() if c >= spec.min_count), key=lambda vc: (-vc[1], vc[0])
            )
            pa_type = pa.string() if dtype == "string" else pa.int64()
            values = pa.array([v for v, _ in kept], type=pa_type)
            counts = np.array([c for _, c in kept], dtype=np.int64)
            built[group] = GroupVocab("build", dtype, len(kept) + NUM_RESERVED_IDS, values, counts)
        boundaries, moments = {}, {}
        for col in numeric:
            count, total, squares = sums[col.name]
            mean = total / max(count, 1.0)
            moments[col.name] = (float(mean), float(np.sqrt(max(squares / max(count, 1.0) - mean**2, 0.0))))
            if col.num_buckets:
                data = np.concatenate(samples[col.name]) if samples[col.name] else np.zeros(0)
                qs = np.quantile(data, np.linspace(0, 1, col.num_buckets + 1)[1:-1]) if len(data) else np.zeros(0)
                boundaries[col.name] = np.unique(qs)
        return cls(built, boundaries, moments)

    # ---- persistence ----------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write `index.json` and one Parquet file per built group into `directory` (atomically per file)."""
        directory.mkdir(parents=True, exist_ok=True)
        index: dict[str, dict] = {"groups": {}, "boundaries": {k: v.tolist() for k, v in self.boundaries.items()},
                                  "moments": {k: list(v) for k, v in self.moments.items()}}
        for name, group in self.groups.items():
            entry = {"policy": group.policy, "dtype": group.dtype, "size": group.size}
            if group.policy == "build":
                entry["file"] = f"{name}.parquet"
                tmp = directory / f".{name}.parquet.tmp"
                pq.write_table(pa.table({"value": group.values, "count": pa.array(group.counts)}), tmp)
                os.replace(tmp, directory / entry["file"])
            index["groups"][name] = entry
        tmp = directory / ".index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, directory / "index.json")

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        index = json.loads((directory / "index.json").read_text())
        groups = {}
        for name, entry in index["groups"].items():
            if entry["policy"] == "build":
                table = pq.read_table(directory / entry["file"])
                groups[name] = GroupVocab(
                    "build", entry["dtype"], entry["size"], table.column("value").combine_chunks(),
                    table.column("count").to_numpy(),
                )
            else:
                groups[name] = GroupVocab(entry["policy"], entry["dtype"], entry["size"])
        boundaries = {k: np.asarray(v, dtype=np.float64) for k, v in index["boundaries"].items()}
        moments = {k: (float(v[0]), float(v[1])) for k, v in index["moments"].items()}
        return cls(groups, boundaries, moments)
