"""FuxiCTR / BARS CSV folders (train/valid/test files, sequence cells joined by `^`) → a rankstack CTR dataset.

Column kinds come from the options; a column no option names is detected from the first 10,000 rows of the
train file:
- label: the first of clk, click, label, is_click;
- meta (text, carried along): time_stamp, timestamp, time, date, datetime;
- sequence: a name ending in `_sequence`, `_seq`, `_his` or `_history`, or a cell containing the separator;
  its embedding group is the categorical column sharing the most values with its elements (the tiny Taobao
  file: `click_sequence` → `adgroup_id`), or its own name when none does;
- numeric: every non-empty cell is a number and at least one is not an integer literal (e.g. `price` 3.9);
- categorical: everything else.
Roles: user/item from `user_columns`/`item_columns`, defaulting to FuxiCTR's TaobaoAd layout for the columns it
names; other features are `context`.
"""

from __future__ import annotations

import re
from pathlib import Path

from rankstack.data.converters.common import (
    SPLITS,
    Converter,
    Option,
    find_split_files,
    is_number,
    read_header,
    require_columns,
    require_positive,
    sample_rows,
)
from rankstack.data.converters.tabular import (
    MISSING_TOKEN,
    SPLIT_FILE_OPTIONS,
    VOCAB_OPTIONS,
    TabularField,
    TabularFormat,
    categorical_vocab,
    write_tabular,
)
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import DataError, RankstackError

NAME = "fuxictr"
LABEL_NAMES = ("clk", "click", "label", "is_click")
META_NAMES = ("time_stamp", "timestamp", "time", "date", "datetime")
USER_KEY_NAMES = ("userid", "user_id", "uid")
SEQUENCE_SUFFIXES = ("_sequence", "_seq", "_his", "_history")
#: roles of FuxiCTR's TaobaoAd columns (the Ali display-ad dataset behind `tiny_csv`)
TAOBAO_AD_ROLES = {
    "user": ("userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
             "shopping_level", "occupation", "new_user_class_level"),
    "item": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
}
SPLIT_PATTERNS = {"train": ("train*.csv", "*train*.csv"), "valid": ("valid*.csv", "*valid*.csv", "*val*.csv"),
                  "test": ("test*.csv", "*test*.csv")}


def detect_kinds(sample: dict[str, list[str]], labels: list[str], separator: str, explicit: dict[str, list[str]],
                 sequences: dict[str, str]) -> dict[str, str]:
    """Kind of every column: label, meta, sequence, numeric, categorical or drop (see the module docstring)."""
    kinds: dict[str, str] = {name: "label" for name in labels}
    for kind, names in explicit.items():
        for name in names:
            if name in kinds:
                raise RankstackError(f"converter `{NAME}`: column `{name}` is named as both {kinds[name]} and {kind};"
                                     " name each column once.")
            kinds[name] = kind
    for name in sequences:
        if kinds.get(name, "sequence") != "sequence":
            raise RankstackError(f"converter `{NAME}`: column `{name}` is named as both {kinds[name]} and sequence.")
        kinds[name] = "sequence"
    for name, cells in sample.items():
        if name in kinds:
            continue
        filled = [c for c in cells if c]
        if name.lower() in META_NAMES:
            kinds[name] = "meta"
        elif name.endswith(SEQUENCE_SUFFIXES) or any(separator in c for c in filled):
            kinds[name] = "sequence"
        elif filled and all(is_number(c) for c in filled) and any(not re.fullmatch(r"-?\d+", c) for c in filled):
            kinds[name] = "numeric"
        else:
            kinds[name] = "categorical"
    return kinds


def detect_group(sequence: str, sample: dict[str, list[str]], kinds: dict[str, str], separator: str) -> str:
    """The categorical column sharing the most values with the sequence's elements, else the sequence itself."""
    elements = {e for cell in sample.get(sequence, []) for e in cell.split(separator) if e}
    best, overlap = sequence, 0
    for name, kind in kinds.items():
        if kind == "categorical" and name in sample:
            shared = len(elements & set(sample[name]))
            if shared > overlap:
                best, overlap = name, shared
    return best


def convert_fuxictr(input: Path, out: Path, label: list[str], categorical: list[str], numeric: list[str],
                    sequences: dict[str, str], meta: list[str], drop: list[str], user_columns: list[str],
                    item_columns: list[str], user_key: str, separator: str, delimiter: str, missing_token: str,
                    numeric_fill: float | None, sequence_max_len: int, hash_buckets: int, min_count: int,
                    train: str, valid: str, test: str, max_rows: int) -> Path:
    """Convert a FuxiCTR/BARS folder of train/valid/test CSV files into a CTR dataset with the same splits.

    Options:
        train, valid, test: file names in the folder (default: the one file matching `train*.csv`, `valid*.csv`
            or `*val*.csv`, `test*.csv`).
        label: label column(s), comma-separated (default: the first of clk, click, label, is_click); labels must
            be 0 or 1.
        categorical, numeric, meta, drop: columns of each kind (default: detected, see the module docstring);
            `drop` leaves columns out.
        sequences: `column:embedding_group` pairs (default: detected; e.g. `click_sequence:adgroup_id`).
        user_columns, item_columns: feature roles (default: FuxiCTR's TaobaoAd layout for the columns it names);
            other features get role `context`.
        user_key: the GAUC group column (default: the first of userid, user_id, uid present, else none).
        separator: sequence element separator (default `^`); delimiter: CSV delimiter (default `,`; `tab` or
            `\\t` for tab-separated files).
        missing_token: what an empty categorical cell becomes (default `<missing>`); an empty sequence cell is an
            empty list.
        numeric_fill: what an empty numeric cell becomes; without it an empty numeric cell is an error.
        sequence_max_len: events kept per sequence (default 50).
        hash_buckets: > 0 hashes every categorical and sequence group into that many buckets instead of building
            vocabularies; min_count: train count below which a value maps to OOV (default 1).
        max_rows: read at most N rows per file (0 = all).

    Output columns keep the CSV names: labels (numeric, role label), categoricals and sequences (string ids),
    numerics (float32), meta columns (text, role meta); group_key = `user_key`.
    """
    for option, value in (("sequence_max_len", sequence_max_len), ("min_count", min_count)):
        require_positive(value, option, NAME)
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter  # `--option delimiter=tab` on a shell
    files = find_split_files(input, {"train": train, "valid": valid, "test": test}, SPLIT_PATTERNS, NAME)
    header = read_header(files["train"], delimiter)
    sample = sample_rows(files["train"], delimiter)
    labels = label or [n for n in LABEL_NAMES if n in header][:1]
    if not labels:
        raise DataError(f"{files['train']} has none of the label columns {', '.join(LABEL_NAMES)}; name the label "
                        "with `--option label=COLUMN`.")
    named = [*labels, *categorical, *numeric, *sequences, *meta, *drop, *user_columns, *item_columns]
    require_columns(header, named + ([user_key] if user_key else []), files["train"],
                    "Check the column names given to the converter's options.")
    kinds = detect_kinds(sample, labels, separator,
                         {"categorical": categorical, "numeric": numeric, "meta": meta, "drop": drop}, sequences)
    user_key = user_key or next((n for n in USER_KEY_NAMES if n in header), "")
    vocab = categorical_vocab(hash_buckets, min_count)
    users = set(user_columns) if user_columns else set(TAOBAO_AD_ROLES["user"])
    items = set(item_columns) if item_columns else set(TAOBAO_AD_ROLES["item"])

    def role(name: str) -> str:
        return "user" if name in users else "item" if name in items else "context"

    fields = []
    for name in header:
        kind = kinds[name]
        if kind == "drop":
            continue
        if kind == "label":
            spec = ColumnSpec(name, "numeric", "label")
        elif kind == "meta":
            spec = ColumnSpec(name, "text", "meta")
        elif kind == "numeric":
            spec = ColumnSpec(name, "numeric", role(name))
        elif kind == "sequence":
            group = sequences.get(name) or detect_group(name, sample, kinds, separator)
            spec = ColumnSpec(name, "sequence", "history", dtype="string", vocab=vocab, embedding_group=group,
                              max_len=sequence_max_len)
        else:
            spec = ColumnSpec(name, "categorical", role(name), dtype="string", vocab=vocab)
        fields.append(TabularField(spec))
    schema = Schema(name=input.name, columns=[f.spec for f in fields], group_key=user_key,
                    description=f"FuxiCTR/BARS CSV folder {input.name}")
    fmt = TabularFormat(fields, delimiter=delimiter, separator=separator, missing_token=missing_token,
                        numeric_fill=numeric_fill)
    return write_tabular(out, schema, fmt, [(files[s], s) for s in SPLITS], max_rows=max_rows)


CONVERTER = Converter(
    name=NAME,
    description="FuxiCTR/BARS CSV folder (train/valid/test, `^`-joined sequence columns) → CTR dataset",
    options=(
        Option("label", [], "label column(s) (default: first of clk, click, label, is_click)", kind="list"),
        Option("categorical", [], "categorical columns (default: detected)", kind="list"),
        Option("numeric", [], "numeric columns (default: detected)", kind="list"),
        Option("sequences", {}, "sequence columns as column:embedding_group (default: detected)", kind="map"),
        Option("meta", [], "columns carried along as text, never features (default: time columns)", kind="list"),
        Option("drop", [], "columns to leave out", kind="list"),
        Option("user_columns", [], "features with role user (default: TaobaoAd user columns)", kind="list"),
        Option("item_columns", [], "features with role item (default: TaobaoAd item columns)", kind="list"),
        Option("user_key", "", "GAUC group column (default: userid/user_id/uid if present)"),
        Option("separator", "^", "element separator inside sequence cells"),
        Option("delimiter", ",", "CSV field delimiter (`tab` for tab-separated files)"),
        Option("missing_token", MISSING_TOKEN, "value of an empty categorical cell"),
        Option("numeric_fill", None, "value of an empty numeric cell (default: an error)", kind="float"),
        Option("sequence_max_len", 50, "events kept per sequence"),
        *VOCAB_OPTIONS,
        *SPLIT_FILE_OPTIONS,
    ),
    run=convert_fuxictr,
)
