"""Criteo (display ads: a label, 13 count features, 26 hashed categoricals) and Avazu (mobile ads: a click and
22 categoricals) → rankstack CTR datasets. Both are one file split 80/10/10 by row order (`split=ordered`, the
default: both releases are in time order, so valid and test come after train) or at random (`split=random`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.common import (
    Converter,
    Option,
    check_fractions,
    read_header,
    require_file,
    require_positive,
)
from rankstack.data.converters.tabular import (
    VOCAB_OPTIONS,
    TabularField,
    TabularFormat,
    categorical_vocab,
    count_rows,
    row_splitter,
    signed_log1p,
    write_tabular,
)
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import DataError, RankstackError

CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
AVAZU_ROLES = {
    "user": ("device_id", "device_ip", "device_model", "device_type", "device_conn_type"),
    "item": ("C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"),
}


def _single_file(input: Path, what: str) -> Path:
    if input.is_dir():
        raise DataError(f"{input} is a folder; pass the {what} file itself.")
    require_file(input, f"the {what} file")
    if input.stat().st_size == 0:
        raise DataError(f"{input} is empty; expected the {what} rows.")
    return input


def _split_options(split: str, valid_fraction: float, test_fraction: float, name: str) -> None:
    check_fractions(valid_fraction, test_fraction, name)
    if split not in ("ordered", "random"):
        raise RankstackError(f"converter `{name}`: option `split` must be ordered or random, got {split!r}.")


def convert_criteo(input: Path, out: Path, split: str, valid_fraction: float, test_fraction: float, seed: int,
                   numeric_transform: str, numeric_fill: float | None, num_buckets: int, hash_buckets: int,
                   min_count: int, max_rows: int) -> Path:
    """Convert a Criteo file into a CTR dataset.

    Input: Criteo's `train.txt` (tab-separated, no header: label, I1-I13, C1-C26) or a file with that header
    line (the DeepCTR `criteo_sample.txt`, comma-separated); the delimiter is taken from the first line.

    Options:
        split: `ordered` (default: the first 80 % of rows train, the next 10 % valid, the last test) or `random`
            (each row drawn with `seed`); valid_fraction, test_fraction: default 0.1 each.
        numeric_transform: `log1p` (default: sign(x)·log(1+|x|), the counts' usual log(1+x) that stays finite for
            the few negative values of I2) or `none`.
        numeric_fill: value of an empty count cell before the transform (default 0, the usual Criteo choice; give
            an empty value to make empty cells an error).
        num_buckets: train-quantile buckets per count (default 16; 0 = none), for token-based rankers.
        hash_buckets: > 0 hashes C1-C26 into that many buckets (for the full 45 M-row data); min_count: train
            count below which a categorical value maps to OOV (default 1; 10 is usual on the full data).
        max_rows: read at most N rows (0 = all).

    Columns: click (label, from `label`), I1-I13 (numeric, context), C1-C26 (categorical strings, context; an
    empty cell is `<missing>`). Criteo's fields are anonymous, hence role context.
    """
    _split_options(split, valid_fraction, test_fraction, CRITEO.name)
    require_positive(min_count, "min_count", CRITEO.name)
    if numeric_transform not in ("log1p", "none"):
        raise RankstackError(f"converter `criteo`: option `numeric_transform` must be log1p or none, got "
                        f"{numeric_transform!r}.")
    _single_file(input, "Criteo")
    with open(input, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    delimiter = "\t" if "\t" in first else ","
    has_header = first.split(delimiter)[0].strip() == "label"
    if not has_header and len(first.rstrip("\r\n").split(delimiter)) != len(CRITEO_COLUMNS):
        raise DataError(f"{input}: the first line has {len(first.split(delimiter))} fields; a Criteo row has "
                        f"{len(CRITEO_COLUMNS)} ({', '.join(CRITEO_COLUMNS[:3])}, ..., C26), or a header line "
                        "starting with `label`.")
    vocab = categorical_vocab(hash_buckets, min_count)
    transform = signed_log1p if numeric_transform == "log1p" else None
    fields = [TabularField(ColumnSpec("click", "numeric", "label", description="Criteo `label`"), "label")]
    fields += [TabularField(ColumnSpec(n, "numeric", "context", num_buckets=num_buckets,
                                       description=f"count feature {n}, {numeric_transform}"), transform=transform)
               for n in CRITEO_NUMERIC]
    fields += [TabularField(ColumnSpec(n, "categorical", "context", dtype="string", vocab=vocab))
               for n in CRITEO_CATEGORICAL]
    schema = Schema(name="criteo", columns=[f.spec for f in fields], description="Criteo display-ad CTR")
    fmt = TabularFormat(fields, delimiter=delimiter, numeric_fill=numeric_fill,
                        names=None if has_header else CRITEO_COLUMNS)
    n_rows = count_rows(input, has_header)
    n_rows = min(n_rows, max_rows) if max_rows else n_rows
    splitter = row_splitter(split, n_rows, valid_fraction, test_fraction, seed)
    return write_tabular(out, schema, fmt, [(input, None)], splitter, max_rows)


def _avazu_hour(batch: pa.RecordBatch, file: Path, row_offset: int) -> dict[str, np.ndarray]:
    """`hour` (of day) and `weekday` (0 = Monday) from Avazu's `hour` cells, YYMMDDHH."""
    cells = pc.utf8_trim_whitespace(batch.column("hour"))
    try:
        stamp = pc.strptime(pc.binary_join_element_wise("20", cells, ""), format="%Y%m%d%H", unit="s")
    except pa.ArrowInvalid:
        for i, text in enumerate(cells.to_pylist()):
            if len(text) != 8 or not text.isdigit():
                raise DataError(f"{file}: column `hour` has `{text}` at data row {row_offset + i}; Avazu hours are "
                                "YYMMDDHH (e.g. 14102100). Fix the cell.") from None
        raise
    return {"hour": pc.hour(stamp).to_numpy(zero_copy_only=False).astype(np.int64),
            "weekday": pc.day_of_week(stamp).to_numpy(zero_copy_only=False).astype(np.int64)}


def convert_avazu(input: Path, out: Path, split: str, valid_fraction: float, test_fraction: float, seed: int,
                  hash_buckets: int, min_count: int, max_rows: int) -> Path:
    """Convert an Avazu CSV (Kaggle `train.csv` or the DeepCTR `avazu_sample.txt`, with its header) into a CTR
    dataset.

    Options:
        split: `ordered` (default; Avazu rows are in hour order) or `random` (with `seed`); valid_fraction,
            test_fraction: default 0.1 each.
        hash_buckets: > 0 hashes every categorical into that many buckets (device_id and device_ip have millions
            of values in the full data); min_count: train count below which a value maps to OOV (default 1).
        max_rows: read at most N rows (0 = all).

    Columns: click (label); hour (0-23) and weekday (0 = Monday) from `hour` (context); C1, banner_pos, site_*,
    app_* (context), device_* (user), C14-C21 (item; Avazu's anonymous ad fields) — all categorical strings, an
    empty cell `<missing>`. The row `id` is dropped.
    """
    _split_options(split, valid_fraction, test_fraction, AVAZU.name)
    require_positive(min_count, "min_count", AVAZU.name)
    _single_file(input, "Avazu")
    header = read_header(input, ",")
    vocab = categorical_vocab(hash_buckets, min_count)
    fields = [TabularField(ColumnSpec("click", "numeric", "label")),
              TabularField(ColumnSpec("hour", "categorical", "context", description="hour of day"), "hour"),
              TabularField(ColumnSpec("weekday", "categorical", "context", description="0 = Monday"), "hour")]
    for name in header:
        if name in ("id", "click", "hour"):
            continue
        role = "user" if name in AVAZU_ROLES["user"] else "item" if name in AVAZU_ROLES["item"] else "context"
        fields.append(TabularField(ColumnSpec(name, "categorical", role, dtype="string", vocab=vocab)))
    schema = Schema(name="avazu", columns=[f.spec for f in fields], description="Avazu mobile-ad CTR")
    fmt = TabularFormat(fields, derive=_avazu_hour)
    n_rows = count_rows(input, True)
    n_rows = min(n_rows, max_rows) if max_rows else n_rows
    return write_tabular(out, schema, fmt, [(input, None)],
                         row_splitter(split, n_rows, valid_fraction, test_fraction, seed), max_rows)


_SPLIT_OPTIONS = (
    Option("split", "ordered", "ordered (by row order) or random", choices=("ordered", "random")),
    Option("valid_fraction", 0.1, "share of rows in valid"),
    Option("test_fraction", 0.1, "share of rows in test"),
    Option("seed", 0, "seed of split=random"),
)
_VOCAB_OPTIONS = (*VOCAB_OPTIONS, Option("max_rows", 0, "read at most N rows (0 = all)"))
CRITEO = Converter(
    name="criteo",
    description="Criteo display-ad CTR (label, I1-I13 counts, C1-C26) → CTR dataset, log(1+x) counts",
    options=(
        *_SPLIT_OPTIONS,
        Option("numeric_transform", "log1p", "log1p (sign(x)·log(1+|x|)) or none", choices=("log1p", "none")),
        Option("numeric_fill", 0.0, "value of an empty count cell (empty value: an error)", kind="float"),
        Option("num_buckets", 16, "train-quantile buckets per count (0 = none)"),
        *_VOCAB_OPTIONS,
    ),
    run=convert_criteo,
)
AVAZU = Converter(
    name="avazu",
    description="Avazu mobile-ad CTR (click, hour, 21 categoricals) → CTR dataset with hour and weekday",
    options=(*_SPLIT_OPTIONS, *_VOCAB_OPTIONS),
    run=convert_avazu,
)
