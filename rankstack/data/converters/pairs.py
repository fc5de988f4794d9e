"""Your own judged query–item pairs (CSV, TSV or Parquet) → the rankstack relevance format (relevance.md §1).

One row per judged pair: the query, the item's title and a label; optionally query and item ids, the item's
category, brand and any attribute columns. Labels are tiers 1-4 (4 Excellent, 3 Related, 2 Mismatch,
1 Irrelevant) or any labels mapped to them with `--option tiers=`. As in `esci` and `wands`, the splits hold out
whole queries (a stable hash of the query id), and the columns the source cannot give get their defaults:
`query_type` `unknown`, `is_hard` 0, `item_price_level` 0, `rules` [] and `gold` "" (no reasoning steps, so the
label-only SFT, the cross-encoder, DPO and GRPO train on it; the CoT variants need gold steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from rankstack.data.converters.common import SPLITS, Converter, Option, check_fractions, read_table
from rankstack.data.converters.relevance import (
    attrs_json,
    map_tiers,
    query_splits,
    relevance_rows,
    text_column,
)
from rankstack.data.dataset import DatasetWriter
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError, RankstackError

NAME = "relevance-pairs"
COLUMN_FIX = ("Name the columns with --option query_column=, title_column=, label_column= (and the optional "
              "query_id_column=, item_id_column=, category_column=, brand_column=, attr_columns=; "
              "docs/converters.md, `relevance-pairs`).")


def tiers_of(labels: pa.ChunkedArray, tiers: dict[str, str], file: Path, column: str) -> np.ndarray:
    """The tier of each label: through the `tiers` map when given, else the labels must be the integers 1-4."""
    if tiers:
        mapping = {}
        for label, tier in tiers.items():
            if tier not in ("1", "2", "3", "4"):
                raise RankstackError(f"converter `{NAME}`: option `tiers` maps `{label}` to `{tier}`; tiers are 1, 2, "
                                     "3 and 4 (4 Excellent, 3 Related, 2 Mismatch, 1 Irrelevant).")
            mapping[label] = int(tier)
        return map_tiers(labels.combine_chunks(), mapping, file, column, row_offset=0)
    values = labels.to_numpy() if pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type) else None
    bad = np.ones(len(labels), dtype=bool) if values is None else ~np.isin(values, (1, 2, 3, 4))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: column `{column}` has `{labels[row].as_py()}` at row {row}; labels must be the tiers "
                        "1-4 (4 Excellent, 3 Related, 2 Mismatch, 1 Irrelevant), or map yours with --option "
                        "tiers=Exact:4,Partial:3,Irrelevant:1.")
    return values.astype(np.float32)


def convert_pairs(input: Path, out: Path, query_column: str, title_column: str, label_column: str,
                  query_id_column: str, item_id_column: str, category_column: str, brand_column: str,
                  attr_columns: list[str], tiers: dict[str, str], valid_fraction: float, test_fraction: float,
                  max_rows: int) -> Path:
    """Convert a table of judged query–item pairs into relevance pairs with tiers 4/3/2/1.

    Options:
        query_column, title_column, label_column: the required columns (default query, title, label).
        query_id_column: identifies a query (default: the query text itself).
        item_id_column: identifies an item (default: its title).
        category_column, brand_column: the item's category path (`l1 > l2`) and brand (default: none).
        attr_columns: more item columns, comma-separated, kept as the item's attributes (default: none).
        tiers: label → tier, e.g. `Exact:4,Partial:3,Irrelevant:1` (default: the labels are the tiers 1-4).
        valid_fraction, test_fraction: shares of the queries in valid and test (default 0.1 each).
        max_rows: convert the first N rows only (0 = all).

    Columns: exactly `relevance_schema` — pair_id (the row number), query_id, query, query_type `unknown`,
    is_hard 0, item_id, item_title, item_category, item_brand, item_price_level 0, item_attrs (JSON of
    `attr_columns`), rules [], label (tier), gold "".
    """
    check_fractions(valid_fraction, test_fraction, NAME)
    input = Path(input)
    required = [query_column, title_column, label_column]
    optional = [c for c in (query_id_column, item_id_column, category_column, brand_column, *attr_columns) if c]
    columns = list(dict.fromkeys(required + optional))
    table = read_table(input, columns, "a table of judged query-item pairs (one row per pair)", COLUMN_FIX,
                       required=list(dict.fromkeys(required + [c for c in (query_id_column, item_id_column) if c])))
    if max_rows:
        table = table.slice(0, max_rows)
    label = tiers_of(table.column(label_column), tiers, input, label_column)
    query = text_column(table, query_column)
    query_id = text_column(table, query_id_column or query_column)
    title = text_column(table, title_column)
    attrs = attrs_json({name: text_column(table, name).to_pylist() for name in attr_columns}, table.num_rows)
    chunk = pa.table(relevance_rows(
        pair_id=pa.array([str(i) for i in range(table.num_rows)], pa.string()), query_id=query_id, query=query,
        item_id=text_column(table, item_id_column) if item_id_column else title, item_title=title,
        item_category=text_column(table, category_column), item_brand=text_column(table, brand_column), item_attrs=attrs,
        label=label))
    split_of = query_splits(query_id.to_numpy(zero_copy_only=False), valid_fraction, test_fraction)
    empty = [split for split in SPLITS if not (split_of == split).any()]
    if empty:
        raise DataError(f"{input}: its {len(np.unique(query_id.to_numpy(zero_copy_only=False)))} queries leave the "
                        f"{empty[0]} split empty; give more queries or raise --option valid_fraction= / "
                        "test_fraction=.")
    with DatasetWriter(out, relevance_schema(NAME)) as writer:
        for split in SPLITS:
            writer.write(split, chunk.filter(pa.array(split_of == split)))
    return out


CONVERTER = Converter(
    name=NAME,
    description="your own judged query-item pairs (CSV, TSV or Parquet: query, item title, label) → relevance "
                "pairs with tiers 4/3/2/1, whole queries per split",
    options=(
        Option("query_column", "query", "the query text column"),
        Option("title_column", "title", "the item title column"),
        Option("label_column", "label", "the judgement column"),
        Option("query_id_column", "", "a query id column (default: the query text)"),
        Option("item_id_column", "", "an item id column (default: the title)"),
        Option("category_column", "", "the item category column, `l1 > l2` (default: none)"),
        Option("brand_column", "", "the item brand column (default: none)"),
        Option("attr_columns", [], "more item columns kept as attributes, comma-separated", kind="list"),
        Option("tiers", {}, "label → tier 1-4, e.g. Exact:4,Partial:3,Irrelevant:1 (default: labels are tiers)",
               kind="map"),
        Option("valid_fraction", 0.1, "share of queries in valid"),
        Option("test_fraction", 0.1, "share of queries in test"),
        Option("max_rows", 0, "convert the first N rows only (0 = all)"),
    ),
    run=convert_pairs,
)
