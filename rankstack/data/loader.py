"""The streaming batch loader: Parquet split → batches of tensors, never the whole split in memory.

Reading is by row group (PyArrow). With `shuffle`, each epoch visits the rank's row groups in a seeded random
order and shuffles rows inside a window of `shuffle_window` row groups, so memory is bounded by the window and
the order is a pure function of (seed, epoch). Under `torchrun`, row groups are dealt to ranks round-robin and
every rank yields the same number of batches (the minimum over ranks), so no rank waits on a collective forever.

Each batch is a dict of tensors:
- categorical features → int64 ids `[B]` (0 pad, 1 out-of-vocabulary, see `rankstack.data.vocab`);
- sequences → int64 ids `[B, max_len]`, left-padded, newest event last (longer ones keep their newest events);
- numerics and labels → float32 `[B]`; a numeric with `num_buckets` also gives `<name>__bucket` int64 `[B]`;
- keys → int64 `[B]` raw values (strings are hashed), for GAUC grouping and serving caches, never features.
Values are checked on the way (nulls, NaN/inf, negative ids) with errors that name the file, column and row.

`state_dict()`/`load_state_dict()` record (epoch, batches yielded), so a resumed run continues with exactly the
batch after the last one it trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rankstack.data.dataset import Dataset, check_values
from rankstack.data.schema import ColumnSpec
from rankstack.data.vocab import Vocabulary, hash_strings
from rankstack.errors import DataError
from rankstack.train import EpochCursor


def pad_sequences(offsets: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad/truncate the lists `rows` of a list array with `offsets` to `max_len`.

    Returns (positions of the kept elements in the flat values [k], their flat slots in a `[len(rows), max_len]`
    output), keeping each row's newest (last) `max_len` elements right-aligned.
    """
    starts, ends = offsets[rows], offsets[rows + 1]
    lengths = np.minimum(ends - starts, max_len)
    total = int(lengths.sum())
    row_of = np.repeat(np.arange(len(rows)), lengths)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(ends - lengths, lengths) + within
    target = row_of * max_len + (max_len - np.repeat(lengths, lengths)) + within
    return source, target


@dataclass
class EncodedWindow:
    """Rows read from Parquet, checked and mapped to ids once; batches gather rows from it.

    scalars: batch key → `[N]` array (ids, floats, keys, buckets).
    sequences: column → (layout index, encoded ids of every element `[total]`).
    layouts: distinct (list offsets `[N+1]`, max_len); the columns of one behaviour stream share one, so the
        padding positions are computed once per stream and batch, not once per column.
    """

    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    layouts: list[tuple[np.ndarray, int]] = field(default_factory=list)

    def add_sequence(self, name: str, offsets: np.ndarray, ids: np.ndarray, max_len: int) -> None:
        same = (i for i, (known, known_len) in enumerate(self.layouts)
                if known_len == max_len and np.array_equal(known, offsets))
        index = next(same, len(self.layouts))
        if index == len(self.layouts):
            self.layouts.append((offsets, max_len))
        self.sequences[name] = (index, ids)

    def gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {key: torch.from_numpy(values[rows]) for key, values in self.scalars.items()}
        slots = [pad_sequences(offsets, rows, max_len) for offsets, max_len in self.layouts]
        for name, (index, ids) in self.sequences.items():
            (source, target), max_len = slots[index], self.layouts[index][1]
            out = np.zeros(len(rows) * max_len, dtype=np.int64)
            out[target] = ids[source]
            batch[name] = torch.from_numpy(out.reshape(len(rows), max_len))
        return batch


class BatchLoader(EpochCursor):
    """Iterate over one split of a `Dataset` in batches of tensors.

    dataset: an opened `Dataset` (its schema may be a column selection).
    split: split name.
    batch_size: rows per batch; the last batch of an epoch may be smaller unless `drop_last`.
    shuffle: shuffle row-group order and rows within a window (seeded by `seed` and the epoch).
    shuffle_window: row groups whose rows are shuffled together (memory grows with it).
    rank, world_size: this process's shard under distributed training.
    """

    def __init__(self, dataset: Dataset, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, shuffle_window: int = 4, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.schema = dataset.schema
        self.split = split
        self.file = dataset.split_file(split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle_window = max(1, shuffle_window)
        self.rank, self.world_size = rank, world_size
        self.columns = [c for c in self.schema.columns if c.kind != "text"]
        self._parquet = pq.ParquetFile(self.file)
        meta = self._parquet.metadata
        group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._row_groups = list(range(meta.num_row_groups))[rank::world_size]
        self._group_start = np.concatenate([[0], np.cumsum(group_rows)]).astype(int).tolist()
        rows_per_rank = [sum(group_rows[r::world_size]) for r in range(world_size)]
        self._rows = rows_per_rank[rank]
        if world_size > 1 and min(rows_per_rank) == 0:
            raise DataError(f"{self.file} has {meta.num_row_groups} row groups, fewer than the {world_size} "
                            "processes; write it with smaller row groups or use fewer processes.")
        per_rank = [self._num_batches(rows) for rows in rows_per_rank]
        self._batches = min(per_rank)

    def _num_batches(self, rows: int) -> int:
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __len__(self) -> int:
        return self._batches

    @property
    def num_rows(self) -> int:
        return self._rows

    # ---- iteration -------------------------------------------------------------------------------------

    def _tables(self, rng: np.random.Generator) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Windows of row groups as Arrow tables, with the row order to read them in."""
        order = list(self._row_groups)
        if self.shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        names = [c.name for c in self.columns]
        for start in range(0, len(order), self.shuffle_window):
            window = order[start:start + self.shuffle_window]
            tables = []
            for group in window:
                try:
                    table = self._parquet.read_row_group(group, columns=names)
                except (pa.ArrowInvalid, OSError) as err:
                    raise DataError(f"{self.file}: row group {group} cannot be read ({err}); the file is truncated "
                                    "or corrupt: regenerate it.") from None
                for col in self.columns:
                    check_values(col, table.column(col.name), str(self.file), self._group_start[group])
                tables.append(table)
            table = pa.concat_tables(tables)
            rows = rng.permutation(table.num_rows) if self.shuffle else np.arange(table.num_rows)
            yield table, rows

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        skip = self.batches_yielded
        produced = 0
        pending: list[tuple[EncodedWindow | None, np.ndarray]] = []
        pending_rows = seen_rows = 0
        for table, rows in self._tables(rng):
            # On resume, windows whose rows all fall in already-consumed batches are not encoded.
            needed = (seen_rows + len(rows) - 1) // self.batch_size >= skip
            seen_rows += len(rows)
            pending.append((self.encode_window(table) if needed else None, rows))
            pending_rows += len(rows)
            while pending_rows >= self.batch_size and produced < self._batches:
                pieces, pending, pending_rows = _take_rows(pending, self.batch_size)
                produced += 1
                if produced > skip:
                    self.batches_yielded = produced
                    yield _concat([w.gather(r) for w, r in pieces])
        if pending_rows and produced < self._batches:
            produced += 1
            if produced > skip:
                self.batches_yielded = produced
                yield _concat([w.gather(r) for w, r in pending])
        self.end_epoch()

    # ---- encoding --------------------------------------------------------------------------------------

    def encode(self, table: pa.Table) -> dict[str, torch.Tensor]:
        """Turn an Arrow table of this split's columns into one batch of tensors (checked on the way)."""
        for col in self.columns:
            check_values(col, table.column(col.name), "the table to encode")
        return self.encode_window(table).gather(np.arange(table.num_rows))

    def encode_window(self, table: pa.Table) -> EncodedWindow:
        """Map a checked table's columns to ids once; batches then gather their rows."""
        return encode_columns(self.columns, self.dataset.vocab, table)


def encode_columns(columns: list[ColumnSpec], vocab: Vocabulary, table: pa.Table) -> EncodedWindow:
    """Map `columns` of a checked Arrow table to ids with `vocab`: the one encoding shared by training
    (`BatchLoader`) and serving (`rankstack.serving.features`), so the two cannot drift apart."""
    window = EncodedWindow()
    for col in columns:
        arr = table.column(col.name).combine_chunks()
        if col.kind == "numeric":
            values = np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float32)
            window.scalars[col.name] = values
            if col.num_buckets:
                window.scalars[f"{col.name}__bucket"] = vocab.bucketize(col.name, values)
        elif col.role == "key":
            keys = hash_strings(arr).view(np.int64) if col.dtype == "string" else arr.to_numpy(zero_copy_only=False)
            window.scalars[col.name] = np.asarray(keys, dtype=np.int64)
        elif col.kind == "categorical":
            window.scalars[col.name] = vocab.encode(col, arr).astype(np.int64, copy=False)
        else:
            offsets = arr.offsets.to_numpy().astype(np.int64)
            # Encode only the elements the lists cover (a sliced array's child can be longer).
            flat = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
            window.add_sequence(col.name, offsets - offsets[0], vocab.encode(col, flat), col.max_len)
    return window


Pieces = list[tuple[EncodedWindow | None, np.ndarray]]


def _take_rows(pending: Pieces, count: int) -> tuple[Pieces, Pieces, int]:
    """Split the first `count` rows off a queue of (window, row order) pieces."""
    taken, rest, need = [], [], count
    for window, rows in pending:
        if need:
            taken.append((window, rows[:need]))
            if len(rows) > need:
                rest.append((window, rows[need:]))
            need -= min(need, len(rows))
        else:
            rest.append((window, rows))
    return taken, rest, sum(len(r) for _, r in rest)


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
