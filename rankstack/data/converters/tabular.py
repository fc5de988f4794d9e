"""The one reader of flat CTR tables (one row = one labelled impression), used by the FuxiCTR, Criteo, Avazu and
Ali-CCP converters: each declares its columns as `TabularField`s and `write_tabular` streams the CSV files into
the splits.

Cell rules, the same for every such format: labels and numerics are parsed as floats (an unparseable value is an
error naming the file, column and row; an empty numeric cell takes `numeric_fill`, and without one it is an
error); categorical ids are kept as strings (an empty cell becomes `missing_token`); sequence cells are split on
`separator` (an empty cell is an empty list); text and meta cells are kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.common import (
    Option,
    check_binary,
    iter_csv,
    parse_numeric,
    read_header,
    require_columns,
)
from rankstack.data.dataset import DatasetWriter
from rankstack.data.schema import ColumnSpec, Schema, VocabSpec
from rankstack.errors import DataError

MISSING_TOKEN = "<missing>"

#: Vocabulary options of every flat-table converter.
VOCAB_OPTIONS = (
    Option("hash_buckets", 0, "hash categoricals into N buckets instead of building vocabularies (0 = build)"),
    Option("min_count", 1, "train count below which a categorical value maps to OOV"),
)
#: Options of the converters that read a folder holding one CSV file per split.
SPLIT_FILE_OPTIONS = (
    Option("train", "", "train file name in the folder (default: detected)"),
    Option("valid", "", "valid file name in the folder (default: detected)"),
    Option("test", "", "test file name in the folder (default: detected)"),
    Option("max_rows", 0, "read at most N rows per file (0 = all)"),
)


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|): log(1 + x) for counts, finite and order-preserving for Criteo's few negatives."""
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass(frozen=True)
class TabularField:
    """One output column and the CSV column it comes from.

    spec: the output column (its kind and role decide how cells are parsed: see the module docstring).
    source: the CSV column name (defaults to the output name).
    transform: applied to numerics after filling empty cells (e.g. `signed_log1p`).
    """

    spec: ColumnSpec
    source: str = ""
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def column(self) -> str:
        return self.source or self.spec.name


@dataclass
class TabularFormat:
    """How to read the CSV files of one flat CTR format.

    fields: every output column, in schema order.
    delimiter: the CSV field delimiter.
    separator: the element separator inside sequence cells.
    missing_token: what an empty categorical cell becomes.
    numeric_fill: what an empty numeric cell becomes; None makes it an error.
    binary_labels: labels must be 0 or 1.
    names: column names for files without a header line (None: the first line is the header).
    derive: computes columns that no single CSV cell holds (Avazu's weekday): function(batch, file, row_offset)
        → {output name: array}; it raises DataErrors itself. Fields it returns are not parsed.
    """

    fields: list[TabularField]
    delimiter: str = ","
    separator: str = "^"
    missing_token: str = MISSING_TOKEN
    numeric_fill: float | None = None
    binary_labels: bool = True
    names: list[str] | None = None
    derive: Callable[[pa.RecordBatch, Path, int], dict[str, np.ndarray]] | None = None

    def columns(self, batch: pa.RecordBatch, file: Path, row_offset: int) -> dict[str, pa.Array | np.ndarray]:
        """The output columns of one batch of string cells; `row_offset` is the data row of its first row."""
        out: dict[str, pa.Array | np.ndarray] = {}
        derived = self.derive(batch, file, row_offset) if self.derive else {}
        for f in self.fields:
            spec = f.spec
            if spec.name in derived:
                out[spec.name] = derived[spec.name]
                continue
            cells = batch.column(f.column)
            if spec.kind == "numeric":
                fill = None if spec.role == "label" else self.numeric_fill
                values = parse_numeric(cells, file, f.column, row_offset, fill)
                if spec.role == "label" and self.binary_labels:
                    check_binary(values, file, f.column, row_offset)
                out[spec.name] = f.transform(values) if f.transform else values
            elif spec.kind == "sequence":
                trimmed = pc.utf8_trim_whitespace(cells)
                split = pc.split_pattern(trimmed, self.separator)
                out[spec.name] = pc.if_else(pc.equal(trimmed, ""), pa.scalar([], pa.list_(pa.string())), split)
            elif spec.kind == "categorical":
                trimmed = pc.utf8_trim_whitespace(cells)
                out[spec.name] = pc.if_else(pc.equal(trimmed, ""), self.missing_token, trimmed)
            else:
                out[spec.name] = cells
        return out

    def check_header(self, file: Path, header: list[str]) -> None:
        wanted = [f.column for f in self.fields]
        require_columns(header, list(dict.fromkeys(wanted)), file,
                        "Name the columns with the converter's options, or fix the header.")


def categorical_vocab(hash_buckets: int, min_count: int) -> VocabSpec:
    """`hash` with `hash_buckets` buckets when > 0, else built from train with `min_count`."""
    return VocabSpec("hash", buckets=hash_buckets) if hash_buckets > 0 else VocabSpec("build", min_count=min_count)


def write_tabular(out: Path, schema: Schema, fmt: TabularFormat, files: Iterable[tuple[Path, str | None]],
                  split_of_rows: Callable[[int, int], np.ndarray] | None = None, max_rows: int = 0) -> Path:
    """Stream CSV `files` into a new dataset at `out`.

    files: (file, split) pairs; a None split assigns each row with `split_of_rows(first_row, n)`, which returns
        the split names of rows first_row .. first_row + n - 1 of that file.
    max_rows: read at most this many data rows per file (0 = all).
    """
    with DatasetWriter(out, schema) as writer:
        for file, split in files:
            header = fmt.names or read_header(file, fmt.delimiter)
            fmt.check_header(file, header)
            rows = 0
            for batch in iter_csv(file, fmt.delimiter, names=fmt.names):
                if max_rows and rows + batch.num_rows > max_rows:
                    batch = batch.slice(0, max_rows - rows)
                columns = fmt.columns(batch, file, rows + 1)
                table = pa.table(columns)
                if split is not None:
                    writer.write(split, table)
                else:
                    names = split_of_rows(rows, batch.num_rows)
                    for name in schema.splits:
                        mask = names == name
                        if mask.any():
                            writer.write(name, table.filter(pa.array(mask)))
                rows += batch.num_rows
                if max_rows and rows >= max_rows:
                    break
            if not rows:
                raise DataError(f"{file} has a header but no data rows; every split needs rows.")
    return out


def count_rows(file: Path, header: bool) -> int:
    """Data rows of a text file (newline count, minus the header line)."""
    lines, last = 0, b"\n"
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 24):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    return max(lines - int(header), 0)


def row_splitter(how: str, n_rows: int, valid_fraction: float, test_fraction: float,
                 seed: int) -> Callable[[int, int], np.ndarray]:
    """`split_of_rows` for one file: `ordered` (the first rows train, the last test) or `random` (seeded)."""
    train_end = int(round(n_rows * (1 - valid_fraction - test_fraction)))
    valid_end = int(round(n_rows * (1 - test_fraction)))
    rng = np.random.default_rng(seed)

    def ordered(first: int, n: int) -> np.ndarray:
        index = first + np.arange(n)
        return np.where(index < train_end, "train", np.where(index < valid_end, "valid", "test"))

    def random(first: int, n: int) -> np.ndarray:
        unit = rng.random(n)  # called once per batch in file order: the same draws whatever the batch sizes
        cut = 1 - valid_fraction - test_fraction
        return np.where(unit < cut, "train", np.where(unit < cut + valid_fraction, "valid", "test"))

    return ordered if how == "ordered" else random
