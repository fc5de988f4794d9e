"""Wayfair WANDS (product search relevance) → the rankstack relevance format (relevance.md §1).

Input: the release's `dataset/` folder: `query.csv` (query_id, query, query_class), `product.csv` (product_id,
product_name, product_class, category hierarchy, product_description, product_features, rating_count,
average_rating, review_count) and `label.csv` (id, query_id, product_id, label), all tab-separated (the
delimiter is read from each header line, so comma-separated copies work too). Labels Exact/Partial/Irrelevant
become tiers 4/3/1 (WANDS has no Mismatch grade). The whole release (233 K labels, 43 K products) fits in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.common import (
    SPLITS,
    Converter,
    Option,
    check_fractions,
    iter_csv,
    read_header,
    require_columns,
    require_dir,
)
from rankstack.data.converters.relevance import attrs_json, map_tiers, query_splits, relevance_rows
from rankstack.data.dataset import DatasetWriter
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError

NAME = "wands"
TIERS = {"Exact": 4, "Partial": 3, "Irrelevant": 1}
REQUIRED = {"query.csv": ["query_id", "query"], "product.csv": ["product_id", "product_name"],
            "label.csv": ["query_id", "product_id", "label"]}
#: optional product.csv columns → item_attrs keys
PRODUCT_ATTRS = {"product_class": "product_class", "product_description": "description",
                 "rating_count": "rating_count", "average_rating": "average_rating", "review_count": "review_count"}


def read_table(file: Path) -> pa.Table:
    """A whole WANDS file as string columns, with the delimiter of its header line (tab or comma)."""
    header_line = read_header(file, "\t")
    delimiter = "\t" if len(header_line) > 1 else ","
    required = REQUIRED[file.name]
    require_columns(read_header(file, delimiter), required, file,
                    f"WANDS {file.name} needs columns {', '.join(required)} (tab-separated).")
    batches = list(iter_csv(file, delimiter))
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        raise DataError(f"{file} has a header but no data rows.")
    return table


def parse_features(cells: list[str]) -> list[dict[str, str]]:
    """WANDS `product_features`, `name:value|name : value|...`, as dicts (entries without a name are dropped)."""
    out = []
    for cell in cells:
        features = {}
        for entry in cell.split("|"):
            name, sep, value = entry.partition(":")
            if sep and name.strip() and value.strip():
                features[name.strip()] = value.strip()
        out.append(features)
    return out


def _lookup(keys: pa.Array, values: pa.Array, file: Path, column: str, other: Path) -> pa.Array:
    position = pc.index_in(pc.utf8_trim_whitespace(keys), value_set=pc.utf8_trim_whitespace(values))
    missing = pc.is_null(position).to_numpy(zero_copy_only=False)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{file}: column `{column}` has `{keys[row].as_py()}` at data row {row + 1}, which is not in "
                        f"{other}; use the files of one WANDS release.")
    return position


def convert_wands(input: Path, out: Path, valid_fraction: float, test_fraction: float) -> Path:
    """Convert a WANDS `dataset/` folder into query–product pairs with tiers 4/3/1.

    Options:
        valid_fraction, test_fraction: queries split 80/10/10 (default) by a stable hash of query_id, so a
            query's pairs are never in two splits.

    Columns: exactly `relevance_schema` — pair_id (label.csv `id`, else query_id:product_id), query_id, query,
    query_type `unknown`, is_hard 0, item_id (product_id), item_title (product_name), item_category (category
    hierarchy as `a > b > c`), item_brand "" (WANDS has none), item_price_level 0, item_attrs (JSON:
    product_class, features from product_features, description, rating_count, average_rating, review_count),
    rules [], label (tier), gold "".
    """
    check_fractions(valid_fraction, test_fraction, NAME)
    require_dir(input, "the WANDS dataset folder (query.csv, product.csv, label.csv)")
    queries, products, labels = (read_table(input / name) for name in ("query.csv", "product.csv", "label.csv"))
    label_file = input / "label.csv"
    tier = map_tiers(labels.column("label").combine_chunks(), TIERS, label_file, "label")
    label_query = labels.column("query_id").combine_chunks()
    label_product = labels.column("product_id").combine_chunks()
    q = _lookup(label_query, queries.column("query_id").combine_chunks(), label_file, "query_id", input / "query.csv")
    p = _lookup(label_product, products.column("product_id").combine_chunks(), label_file, "product_id",
                input / "product.csv")
    found = products.take(p)

    def text(name: str) -> list[str]:
        return found.column(name).to_pylist() if name in found.column_names else [""] * labels.num_rows

    attrs: dict[str, list] = {key: text(column) for column, key in PRODUCT_ATTRS.items()}
    attrs["features"] = parse_features(text("product_features"))
    category = [" > ".join(part.strip() for part in c.split("/") if part.strip()) for c in text("category hierarchy")]
    query_id = pc.utf8_trim_whitespace(label_query)
    if "id" in labels.column_names:
        pair_id = labels.column("id").combine_chunks()
    else:
        pair_id = pc.binary_join_element_wise(query_id, pc.utf8_trim_whitespace(label_product), ":")
    rows = pa.table(relevance_rows(
        pair_id=pair_id, query_id=query_id, query=queries.column("query").take(q),
        item_id=pc.utf8_trim_whitespace(label_product), item_title=text("product_name"), item_category=category,
        item_brand=[""] * labels.num_rows, item_attrs=attrs_json(attrs, labels.num_rows), label=tier))
    split_of = query_splits(query_id.to_numpy(zero_copy_only=False), valid_fraction, test_fraction)
    with DatasetWriter(out, relevance_schema("wands")) as writer:
        for split in SPLITS:
            writer.write(split, rows.filter(pa.array(split_of == split)))
    return out


CONVERTER = Converter(
    name=NAME,
    description="Wayfair WANDS (query.csv, product.csv, label.csv) → relevance pairs, Exact/Partial/Irrelevant → "
                "4/3/1, whole queries per split",
    options=(
        Option("valid_fraction", 0.1, "share of queries in valid"),
        Option("test_fraction", 0.1, "share of queries in test"),
    ),
    run=convert_wands,
)
