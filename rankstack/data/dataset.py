"""Reading and writing rankstack datasets (a folder with `schema.yaml`, Parquet splits and vocabularies).

`DatasetWriter` streams tables into the splits of a new dataset and publishes the folder only when everything
was written and checked: it writes into a temporary sibling folder and renames it at the end, so a failed
conversion leaves no partial output. `Dataset.open` checks a folder against its schema (files present and
readable, no missing or extra columns, the declared dtypes) and loads or builds the vocabularies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack.data.schema import ColumnSpec, Schema
from rankstack.data.vocab import Vocabulary
from rankstack.errors import DataError

_SCALAR_TYPES = {"int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64(), "string": pa.string()}
_TYPE_NAMES = {v: k for k, v in _SCALAR_TYPES.items()}
_TYPE_NAMES[pa.large_string()] = "string"


def arrow_type(col: ColumnSpec) -> pa.DataType:
    scalar = _SCALAR_TYPES[col.dtype]
    return pa.list_(scalar) if col.kind == "sequence" else scalar


def arrow_schema(schema: Schema) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in schema.columns])


def describe_type(tp: pa.DataType) -> str:
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return f"list<{describe_type(tp.value_type)}>"
    return _TYPE_NAMES.get(tp, str(tp))


def check_values(col: ColumnSpec, arr: pa.Array | pa.ChunkedArray, where: str, row_offset: int = 0) -> None:
    """Reject values no model should see: nulls, NaN/inf numerics, negative integer ids.

    `where` names the file; `row_offset` turns a position in `arr` into a row number of that file.
    """

    def fail(problem: str, fix: str, positions: np.ndarray) -> DataError:
        row = int(positions[0]) + row_offset
        return DataError(f"{where}: column `{col.name}` {problem} (first at row {row}, {len(positions)} rows); {fix}")

    if arr.null_count:
        positions = np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False))
        what = "an empty list" if col.kind == "sequence" else "a value (or drop the row)"
        raise fail("has missing (null) values", f"fill them with {what}.", positions)
    if col.kind == "numeric":
        values = arr.to_numpy(zero_copy_only=False) if not isinstance(arr, pa.ChunkedArray) else np.asarray(arr)
        bad = ~np.isfinite(values.astype(np.float64))
        if bad.any():
            raise fail("has NaN or infinite values", "replace them with finite numbers before writing.",
                       np.flatnonzero(bad))
        return
    if col.dtype != "int64" or col.kind not in ("categorical", "sequence"):
        return
    if col.kind == "sequence":
        flat = pc.list_flatten(arr)
        if len(flat) and pc.min(flat).as_py() < 0:
            parents = pc.list_parent_indices(arr).to_numpy()
            raise fail("has negative ids", "ids must be >= 0; remap them (0 is fine: ids are re-mapped by the "
                       "vocabulary).", np.unique(parents[flat.to_numpy(zero_copy_only=False) < 0]))
    elif len(arr) and pc.min(arr).as_py() < 0:
        values = np.asarray(arr)
        raise fail("has negative ids", "ids must be >= 0; remap them.", np.flatnonzero(values < 0))


class DatasetWriter:
    """Stream tables into a new dataset folder; publish it atomically on `close()`.

    >>> with DatasetWriter(out_dir, schema) as writer:      # doctest: +SKIP
    ...     writer.write("train", {"user_id": [...], ...})
    ...     writer.write("valid", table)

    Every chunk is checked against the schema (columns, types, values) before it is written. `close()` writes
    `schema.yaml`, builds the vocabularies from the train split and renames the folder into place; an exception
    inside the `with` block removes the temporary folder instead.
    """

    def __init__(self, out_dir: str | Path, schema: Schema, row_group_size: int = 1 << 16,
                 overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise DataError(f"{self.out_dir} already exists; choose a new --out folder or remove it first.")
        self.schema = schema
        self.row_group_size = row_group_size
        self.overwrite = overwrite
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self._arrow_schema = arrow_schema(schema)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._rows: dict[str, int] = {}
        self.extra_files: list[str] = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def path(self) -> Path:
        """Where files go while writing (extra files such as `truth/` can be written here too)."""
        return self.tmp_dir

    def write(self, split: str, data: pa.Table | dict[str, Any]) -> None:
        if split not in self.schema.splits:
            raise DataError(f"split `{split}` is not declared in the schema (splits: {', '.join(self.schema.splits)}).")
        table = self._to_table(split, data)
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.tmp_dir / f"{split}.parquet", self._arrow_schema)
            self._rows[split] = 0
        self._writers[split].write_table(table, row_group_size=self.row_group_size)
        self._rows[split] += table.num_rows

    def _to_table(self, split: str, data: pa.Table | dict[str, Any]) -> pa.Table:
        names = list(data.column_names if isinstance(data, pa.Table) else data.keys())
        missing = [n for n in self.schema.names if n not in names]
        extra = [n for n in names if n not in self.schema.names]
        if missing or extra:
            raise DataError(
                f"{split} chunk does not match the schema: missing columns {missing}, undeclared columns {extra}; "
                "declare every column in the schema and write all of them."
            )
        arrays = []
        for col in self.schema.columns:
            raw = data.column(col.name) if isinstance(data, pa.Table) else data[col.name]
            try:
                arr = pa.array(raw) if not isinstance(raw, (pa.Array, pa.ChunkedArray)) else raw
                arr = arr.cast(arrow_type(col))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
                raise DataError(
                    f"{split}: column `{col.name}` cannot be stored as {describe_type(arrow_type(col))} "
                    f"(schema kind {col.kind}, dtype {col.dtype}): {err}"
                ) from None
            check_values(col, arr, f"{split} (being written)", self._rows.get(split, 0))
            arrays.append(arr)
        return pa.table(arrays, schema=self._arrow_schema)

    def close(self) -> Path:
        for writer in self._writers.values():
            writer.close()
        empty = [s for s in self.schema.splits if not self._rows.get(s)]
        if empty:
            self.abort()
            raise DataError(f"split `{empty[0]}` of {self.out_dir} would be empty; every declared split needs rows.")
        self.schema.save(self.tmp_dir / "schema.yaml")
        vocab = Vocabulary.build(self.schema, [self.tmp_dir / "train.parquet"] if "train" in self._rows else [])
        vocab.save(self.tmp_dir / "vocab")
        if self.out_dir.exists() and self.overwrite:
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp_dir, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


@dataclass
class Dataset:
    """An opened, checked dataset folder."""

    path: Path
    schema: Schema
    vocab: Vocabulary

    @classmethod
    def open(cls, path: str | Path, columns: list[str] | None = None) -> Dataset:
        """Open `path`, check every split file against `schema.yaml`, and load (or build) the vocabularies."""
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path} is not a folder; a rankstack dataset is a folder with schema.yaml and Parquet "
                            "splits (create one with `rankstack data convert` or `rankstack world generate`).")
        schema = Schema.load(path)
        for split in schema.splits:
            cls._check_file(path / f"{split}.parquet", schema)
        vocab_dir = path / "vocab"
        if (vocab_dir / "index.json").is_file():
            vocab = Vocabulary.load(vocab_dir)
            stale = sorted(set(schema.embedding_groups()) - set(vocab.groups))
            if stale:
                raise DataError(f"{vocab_dir} has no vocabulary for embedding group `{stale[0]}`; delete {vocab_dir} "
                                "and it will be rebuilt from the train split.")
        else:
            vocab = Vocabulary.build(schema, [path / "train.parquet"])
            # In a read-only dataset folder the vocabulary is rebuilt on each open, which is still correct.
            with contextlib.suppress(OSError):
                vocab.save(vocab_dir)
        return cls(path, schema.select(columns) if columns else schema, vocab)

    @staticmethod
    def _check_file(file: Path, schema: Schema) -> None:
        if not file.is_file():
            raise DataError(f"{file} is missing; schema.yaml declares split `{file.stem}`. Write it, or remove the "
                            "split from `splits`.")
        try:
            meta = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file} is not a readable Parquet file ({err}); it may be truncated or corrupt: "
                            "regenerate it.") from None
        if meta.metadata.num_rows == 0:
            raise DataError(f"{file} has no rows; every declared split needs data.")
        actual = meta.schema_arrow
        present = set(actual.names)
        for col in schema.columns:
            if col.name not in present:
                raise DataError(f"column `{col.name}` missing from {file.name} ({file}); schema.yaml declares it as "
                                f"role {col.role}. Add the column or remove it from the schema.")
            found = actual.field(col.name).type
            if not _compatible(found, arrow_type(col)):
                raise DataError(f"column `{col.name}` in {file} is {describe_type(found)} but schema.yaml declares "
                                f"kind {col.kind} with dtype {col.dtype} ({describe_type(arrow_type(col))}); fix the "
                                "schema or convert the column.")
        extra = [n for n in actual.names if n not in {c.name for c in schema.columns}]
        if extra:
            raise DataError(f"column `{extra[0]}` in {file} is not declared in schema.yaml; declare it (role `meta` "
                            "if no model should read it) or drop it.")

    def split_file(self, split: str) -> Path:
        if split not in self.schema.splits:
            raise DataError(f"split `{split}` is not in {self.path} (splits: {', '.join(self.schema.splits)}).")
        return self.path / f"{split}.parquet"

    def num_rows(self, split: str) -> int:
        return pq.ParquetFile(self.split_file(split)).metadata.num_rows

    def vocab_size(self, column: str) -> int:
        """Embedding rows needed for a column (its group's vocabulary, or its numeric buckets)."""
        col = self.schema.column(column)
        return self.vocab.bucket_count(column) if col.kind == "numeric" else self.vocab.size(col.embedding_group)

    def truth_path(self, split: str) -> Path | None:
        """The split's true probabilities, for synthetic worlds (`truth/<split>.parquet`); None elsewhere."""
        path = self.path / "truth" / f"{split}.parquet"
        return path if path.is_file() else None


def _compatible(found: pa.DataType, declared: pa.DataType) -> bool:
    if pa.types.is_list(declared):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and _compatible(
            found.value_type, declared.value_type)
    if pa.types.is_string(declared):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_floating(declared):
        return pa.types.is_floating(found) or pa.types.is_integer(found)
    return found == declared or (pa.types.is_integer(declared) and pa.types.is_integer(found))
