"""What every converter shares: the `Converter`/`Option` registry entries, input checks, option parsing, stable
hash splits and streaming CSV reading with errors that name the file, the column and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rankstack.errors import DataError, RankstackError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Option:
    """One converter option.

    name: the key of `--option name=value`.
    default: the value used when the option is not given; its type is the option's type unless `kind` says
        otherwise.
    help: one sentence shown by the CLI.
    kind: `int`, `float`, `str`, `bool`, `list` (comma-separated strings) or `map` (comma-separated `key:value`
        pairs); defaults to the type of `default`.
    choices: the allowed values of a `str` option; empty for any.
    """

    name: str
    default: Any
    help: str
    kind: str = ""
    choices: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        if self.kind:
            return self.kind
        return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(self.default), "str")

    def parse(self, value: Any, converter: str) -> Any:
        """The option's value from a CLI string or a Python value; a `RankstackError` names a bad one."""
        kind = self.type_name

        def fail(expected: str) -> RankstackError:
            return RankstackError(f"converter `{converter}`: option `{self.name}` must be {expected}, got {value!r}.")

        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise fail("true or false")
        if kind in ("int", "float"):
            if value is None or value == "":
                return None  # an option without a default value: the converter decides what that means
            if isinstance(value, bool):
                raise fail(f"a number ({kind})")
            try:
                number = int(value) if kind == "int" else float(value)
            except (TypeError, ValueError):
                raise fail(f"a number ({kind})") from None
            if kind == "float" and not np.isfinite(number):
                raise fail("a finite number")
            return number
        if kind == "list":
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]
        if kind == "map":
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            pairs = {}
            for part in (p.strip() for p in str(value).split(",") if p.strip()):
                key, sep, val = part.partition(":")
                if not sep or not key.strip() or not val.strip():
                    raise fail("comma-separated key:value pairs (e.g. `click_sequence:adgroup_id`)")
                pairs[key.strip()] = val.strip()
            return pairs
        text = "" if value is None else str(value)
        if self.choices and text not in self.choices:
            raise fail(f"one of {', '.join(self.choices)}")
        return text


@dataclass(frozen=True)
class Converter:
    """A registered converter: `convert(input, out, **options)` writes a rankstack dataset folder at `out`.

    name: the `--format` name.
    description: one line: the source and what is written.
    options: every option with its default and help (the function's docstring gives the details).
    run: the conversion function, called with parsed options.
    """

    name: str
    description: str
    options: tuple[Option, ...]
    run: Callable[..., Path]

    def parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise RankstackError(
                f"converter `{self.name}` has no option `{unknown[0]}`; its options are: "
                f"{', '.join(known) or '(none)'}."
            )
        parsed = {name: opt.parse(opt.default, self.name) for name, opt in known.items()}
        parsed.update({name: known[name].parse(value, self.name) for name, value in options.items()})
        return parsed

    def convert(self, input: str | Path, out: str | Path, **options: Any) -> Path:
        """Convert `input` into a new dataset folder `out` (which must not exist) and return `out`."""
        return self.run(Path(input), Path(out), **self.parse_options(options))


# ---- input checks --------------------------------------------------------------------------------------


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file; otherwise a DataError saying what was expected there."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; expected {what}.")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; expected {what}.")
    return path


_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": ","}


def read_table(path: Path, columns: list[str], what: str, fix: str, required: list[str] | None = None) -> pa.Table:
    """The named columns of a CSV, TSV or Parquet file, for converters of users' own files; a `DataError` for an
    unreadable file, a missing column (with `fix`: which options name the columns) or an empty cell in a
    `required` column (default: all of them)."""
    require_file(path, what)
    suffix = path.suffix.lower()
    if suffix != ".parquet" and suffix not in _DELIMITERS:
        raise DataError(f"{path}: unknown file type `{suffix or '(none)'}`; give {what} as .csv, .tsv or .parquet.")
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=_DELIMITERS[suffix]))
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path} is not a readable {suffix[1:]} file ({err}); check its format.") from None
    require_columns(table.column_names, columns, path, fix)
    table = table.select(columns)
    for name in columns if required is None else required:
        column = table.column(name)
        empty = pc.is_null(column)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(column), ""))  # a CSV's empty text cell
        count = pc.sum(empty).as_py() or 0
        if count:
            row = int(pc.index(empty, True).as_py())
            raise DataError(f"{path}: column `{name}` is empty at row {row} ({count} rows); fill or drop those rows.")
    if not table.num_rows:
        raise DataError(f"{path} has no rows; expected {what}.")
    return table


def require_positive(value: float, option: str, converter: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RankstackError(f"converter `{converter}`: option `{option}` must be {bound}, got {value}.")


def require_columns(names: list[str], wanted: list[str], file: Path, fix: str = "") -> None:
    missing = [n for n in wanted if n not in names]
    if missing:
        raise DataError(
            f"column `{missing[0]}` missing from {file}; its columns are {', '.join(names) or '(none)'}. "
            + (fix or f"The format needs columns {', '.join(wanted)}.")
        )


# ---- splits ---------------------------------------------------------------------------------------------


def stable_unit(values: list[str] | np.ndarray, salt: str = "") -> np.ndarray:
    """A stable number in [0, 1) per value (BLAKE2b of `salt` + the value's text): the same on every machine."""
    unique, inverse = np.unique(np.asarray([str(v) for v in values], dtype=object), return_inverse=True)
    codes = np.array(
        [int.from_bytes(hashlib.blake2b((salt + u).encode(), digest_size=8).digest(), "little") >> 11
         for u in unique], dtype=np.float64)
    return (codes / float(1 << 53))[inverse.reshape(-1)] if len(unique) else np.zeros(0)


def split_by_fraction(unit: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """Split names for numbers in [0, 1): below 1 - valid - test → train, then valid, then test."""
    train_cut = 1.0 - valid_fraction - test_fraction
    return np.where(unit < train_cut, "train", np.where(unit < train_cut + valid_fraction, "valid", "test"))


def check_fractions(valid_fraction: float, test_fraction: float, converter: str) -> None:
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise RankstackError(
            f"converter `{converter}`: `valid_fraction` and `test_fraction` must each be in (0, 1) and sum to "
            f"less than 1, got {valid_fraction} and {test_fraction}."
        )


# ---- CSV ------------------------------------------------------------------------------------------------


def read_header(file: Path, delimiter: str) -> list[str]:
    """The column names on the first line of `file`; a DataError for a missing or empty file."""
    require_file(file, "a CSV file with a header line")
    with open(file, newline="", encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataError(f"{file} is empty; expected a header line of column names and at least one data row.")
    return [name.strip() for name in next(csv.reader([first], delimiter=delimiter))]


def _column_error(file: Path, err: Exception, names: list[str], fix: str) -> DataError:
    message = str(err).splitlines()[0]
    match = re.search(r"column #(\d+)", message)
    column = f" column `{names[int(match.group(1))]}`:" if match and int(match.group(1)) < len(names) else ""
    return DataError(f"{file}:{column} cannot be read ({message}). {fix}")


def iter_csv(
    file: Path,
    delimiter: str = ",",
    names: list[str] | None = None,
    types: dict[str, pa.DataType] | None = None,
    block_size: int = 1 << 22,
    fix: str = "",
    skip_rows: int = 0,
) -> Iterator[pa.RecordBatch]:
    """Stream `file` as record batches; every column is a string unless `types` says otherwise.

    names: the column names when the file has no header line; None reads them from the first line.
    skip_rows: lines to skip before the data (e.g. a header line that `names` replaces).
    Empty cells stay empty strings (never null), so each converter decides what an empty cell means. A parse
    error becomes a DataError naming the file (and the column, when pyarrow names it) plus `fix`.
    """
    header = names if names is not None else read_header(file, delimiter)
    column_types = {n: pa.string() for n in header}
    column_types.update(types or {})
    read = pa_csv.ReadOptions(block_size=block_size, column_names=names, use_threads=True, skip_rows=skip_rows)
    parse = pa_csv.ParseOptions(delimiter=delimiter)
    convert = pa_csv.ConvertOptions(column_types=column_types, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    fix = fix or f"Each row needs {len(header)} fields separated by {delimiter!r}: {', '.join(header)}."
    try:
        reader = pa_csv.open_csv(file, read_options=read, parse_options=parse, convert_options=convert)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise _column_error(file, err, header, fix) from None


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def is_number(text: str) -> bool:
    """Whether `text` is a decimal number as CSV readers parse it (no `_` digit groups, unlike Python's float)."""
    return _NUMBER.fullmatch(text.strip()) is not None


def parse_numeric(arr: pa.Array, file: Path, column: str, row_offset: int, fill: float | None,
                  fill_option: str = "numeric_fill") -> np.ndarray:
    """Float64 values of a string column; empty cells take `fill` (None: they are an error).

    `row_offset` is the data-row number of `arr[0]` in `file` (1 = the first row after the header).
    """
    trimmed = pc.utf8_trim_whitespace(arr)
    empty = pc.equal(trimmed, "").to_numpy(zero_copy_only=False)
    if empty.any() and fill is None:
        row = row_offset + int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{file}: column `{column}` is empty at data row {row} ({int(empty.sum())} empty cells in this block); "
            f"fill empty numeric cells with `--option {fill_option}=VALUE` (e.g. 0), or fix the file."
        )
    try:
        values = np.array(pc.cast(pc.if_else(pc.equal(trimmed, ""), "0", trimmed), pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = next(i for i, text in enumerate(trimmed.to_pylist()) if text and not is_number(text))
        raise DataError(
            f"{file}: column `{column}` has `{trimmed[i].as_py()}` at data row {row_offset + i}, which is not a "
            "number; fix the cell, or declare the column categorical."
        ) from None
    bad = ~np.isfinite(values)
    if bad.any():
        row = row_offset + int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: column `{column}` has a NaN or infinite value at data row {row}; "
                        "replace it with a finite number or an empty cell.")
    if empty.any():
        values[empty] = fill
    return values


def check_binary(values: np.ndarray, file: Path, column: str, row_offset: int) -> np.ndarray:
    """`values` if every one is 0 or 1; a DataError naming the first other value."""
    bad = (values != 0) & (values != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: label column `{column}` has value {values[i]:g} at data row {row_offset + i}; "
                        "labels must be 0 or 1. Fix the file, or choose the label column with `--option label=`.")
    return values


def find_split_files(folder: Path, names: dict[str, str], patterns: dict[str, tuple[str, ...]],
                     converter: str) -> dict[str, Path]:
    """One file per split in `folder`: `names[split]` when given, else the one file matching the split's patterns.

    patterns: glob patterns per split, tried in order (e.g. `*train*.csv`); a split with no match or several is a
    DataError that says which `--option <split>=FILE` names it.
    """
    require_dir(folder, f"a folder with one CSV file per split ({', '.join(patterns)})")
    found = {}
    for split, globs in patterns.items():
        if names.get(split):
            found[split] = require_file(folder / names[split], f"the {split} split file named by option `{split}`")
            continue
        matches: list[Path] = []
        for pattern in globs:
            matches = sorted(p for p in folder.glob(pattern) if p.is_file())
            if matches:
                break
        if len(matches) != 1:
            listed = ", ".join(p.name for p in matches) or "none"
            raise DataError(f"{folder}: expected one {split} file matching {' or '.join(globs)}, found {listed}; "
                            f"name it with `--option {split}=FILE` (converter `{converter}`).")
        found[split] = matches[0]
    return found


def sample_rows(file: Path, delimiter: str, limit: int = 10_000) -> dict[str, list[str]]:
    """Up to `limit` data rows of a CSV file, by column (for detecting column kinds)."""
    header = read_header(file, delimiter)
    columns: dict[str, list[str]] = {name: [] for name in header}
    with open(file, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader)
        for i, row in enumerate(reader):
            if i >= limit:
                break
            for name, cell in zip(header, row):
                columns[name].append(cell.strip())
    return columns
