"""Amazon ESCI shopping queries (KDD Cup 2022) → the rankstack relevance format (relevance.md §1).

Input: the release folder with `shopping_queries_dataset_examples.parquet` (example_id, query, query_id,
product_id, product_locale, esci_label, small_version, large_version, split) and
`shopping_queries_dataset_products.parquet` (product_id, product_title, product_description,
product_bullet_point, product_brand, product_color, product_locale). Labels E/S/C/I (Exact, Substitute,
Complement, Irrelevant) become tiers 4/3/2/1. A product is keyed by (product_id, product_locale), as in the
release. Examples stream in batches; the products of the chosen locales are held in memory (the text columns of
the full release take a few GB: choose `locales` to need less).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rankstack.data.converters.common import (
    SPLITS,
    Converter,
    Option,
    check_fractions,
    require_dir,
    require_file,
)
from rankstack.data.converters.relevance import (
    attrs_json,
    map_tiers,
    query_splits,
    query_unit,
    relevance_rows,
    text_column,
)
from rankstack.data.dataset import DatasetWriter
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError, RankstackError

NAME = "esci"
TIERS = {"E": 4, "S": 3, "C": 2, "I": 1}
EXAMPLE_COLUMNS = ["query_id", "query", "product_id", "product_locale", "esci_label"]
PRODUCT_COLUMNS = ["product_id", "product_locale", "product_title"]
#: optional product columns → item_attrs keys (brand has its own column)
PRODUCT_ATTRS = {"product_color": "color", "product_bullet_point": "bullet_points",
                 "product_description": "description"}


def _open_parquet(file: Path, required: list[str]) -> pq.ParquetFile:
    require_file(file, "a Parquet file of the ESCI release")
    try:
        handle = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{file} is not a readable Parquet file ({err}); re-download it.") from None
    names = handle.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"column `{missing[0]}` missing from {file}; its columns are {', '.join(names)}. The ESCI "
                        f"release has {', '.join(required)}.")
    if handle.metadata.num_rows == 0:
        raise DataError(f"{file} has no rows.")
    return handle


def _product_key(product_id: pa.Array, locale: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(product_id.cast(pa.string()), locale.cast(pa.string()), "\x1f")


def convert_esci(input: Path, out: Path, examples: str, products: str, locales: list[str], version: str,
                 use_release_split: bool, valid_fraction: float, test_fraction: float, max_rows: int) -> Path:
    """Convert the ESCI release into query–product pairs with tiers 4/3/2/1.

    Options:
        examples, products: file names in the input folder (default the release's names).
        locales: keep these product locales, comma-separated (default all: us, es, jp).
        version: `all` (default) or `small` (only examples with small_version = 1, the reduced Task 1 set).
        use_release_split: true (default): the release's `split` = test examples are the test split, and the
            release's train queries are divided by a stable hash of query_id into train and valid
            (`valid_fraction`, default 0.1, of them valid). false, or a file without `split`: all queries are
            divided 80/10/10 by the hash (`valid_fraction`, `test_fraction`). Either way a query's pairs are
            never in two splits.
        max_rows: read at most N examples (0 = all).

    Columns: exactly `relevance_schema` — pair_id (example_id, else query_id:locale:product_id), query_id, query,
    query_type `unknown`, is_hard 0, item_id (`locale:product_id`), item_title, item_category "" (ESCI has no
    category), item_brand, item_price_level 0, item_attrs (JSON: locale, color, bullet_points, description),
    rules [], label (tier), gold "".
    """
    check_fractions(valid_fraction, test_fraction, NAME)
    if version not in ("all", "small"):
        raise RankstackError(f"converter `{NAME}`: option `version` must be all or small, got {version!r}.")
    require_dir(input, "the ESCI release folder (shopping_queries_dataset_examples.parquet and "
                       "shopping_queries_dataset_products.parquet)")
    example_file, product_file = input / examples, input / products
    example_pf = _open_parquet(example_file, EXAMPLE_COLUMNS + (["small_version"] if version == "small" else []))
    product_pf = _open_parquet(product_file, PRODUCT_COLUMNS)
    product_columns = [c for c in PRODUCT_COLUMNS + ["product_brand", *PRODUCT_ATTRS]
                       if c in product_pf.schema_arrow.names]
    product_table = pq.read_table(product_file, columns=product_columns,
                                  filters=[("product_locale", "in", locales)] if locales else None)
    product_keys = _product_key(product_table.column("product_id").combine_chunks(),
                                product_table.column("product_locale").combine_chunks())
    if len(pc.unique(product_keys)) != len(product_keys):
        raise DataError(f"{product_file}: columns `product_id`, `product_locale` repeat a product; each "
                        "(product_id, product_locale) must appear once. Deduplicate the file.")
    example_names = example_pf.schema_arrow.names
    has_split = use_release_split and "split" in example_names
    wanted = EXAMPLE_COLUMNS + [c for c in ("example_id", "split", "small_version") if c in example_names]
    rows = 0
    with DatasetWriter(out, relevance_schema("esci")) as writer:
        for batch in example_pf.iter_batches(batch_size=1 << 16, columns=wanted):
            table = pa.Table.from_batches([batch])
            if max_rows and rows + table.num_rows > max_rows:
                table = table.slice(0, max_rows - rows)
            first_row = rows
            rows += table.num_rows
            label = map_tiers(table.column("esci_label").combine_chunks(), TIERS, example_file, "esci_label",
                              first_row + 1)
            keep = np.ones(table.num_rows, dtype=bool)
            if locales:
                keep &= pc.is_in(table.column("product_locale"), pa.array(locales)).to_numpy(zero_copy_only=False)
            if version == "small":
                keep &= pc.equal(table.column("small_version"), 1).to_numpy(zero_copy_only=False)
            table, label, row_of = table.filter(pa.array(keep)), label[keep], first_row + 1 + np.flatnonzero(keep)
            if table.num_rows:
                chunk = pa.table(_rows(table, label, row_of, product_table, product_keys, example_file, product_file))
                split_of = _splits(table, has_split, valid_fraction, test_fraction, example_file)
                for split in SPLITS:
                    if (split_of == split).any():
                        writer.write(split, chunk.filter(pa.array(split_of == split)))
            if max_rows and rows >= max_rows:
                break
    return out


def _splits(table: pa.Table, has_split: bool, valid_fraction: float, test_fraction: float, file: Path) -> np.ndarray:
    query_ids = text_column(table, "query_id").to_numpy(zero_copy_only=False)
    if not has_split:
        return query_splits(query_ids, valid_fraction, test_fraction)
    release = text_column(table, "split").to_numpy(zero_copy_only=False)
    unknown = ~np.isin(release, ["train", "test"])
    if unknown.any():
        raise DataError(f"{file}: column `split` has `{release[unknown][0]}`; the release uses train and test. Fix "
                        "the file, or pass `--option use_release_split=false`.")
    within_train = np.where(query_unit(query_ids) < 1 - valid_fraction, "train", "valid")
    return np.where(release == "test", "test", within_train)


def _rows(table: pa.Table, label: np.ndarray, row_of: np.ndarray, products: pa.Table, product_keys: pa.Array,
          example_file: Path, product_file: Path) -> dict:
    """Relevance rows of a batch of examples; `row_of` gives each example's data row in the file."""
    keys = _product_key(text_column(table, "product_id"), text_column(table, "product_locale"))
    position = pc.index_in(keys, value_set=product_keys)
    missing = pc.is_null(position).to_numpy(zero_copy_only=False)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{example_file}: column `product_id` has `{table.column('product_id')[row].as_py()}` "
                        f"(locale {table.column('product_locale')[row].as_py()}) at data row {row_of[row]}, "
                        f"which is not in {product_file}; use the products file of the same release.")
    found = products.take(position)
    locale = text_column(table, "product_locale")
    query_id = text_column(table, "query_id")
    product_id = text_column(table, "product_id")
    if "example_id" in table.column_names:
        pair_id = text_column(table, "example_id")
    else:
        pair_id = pc.binary_join_element_wise(query_id, locale, product_id, ":")
    attrs = {"locale": locale.to_pylist()}
    attrs.update({key: text_column(found, column).to_pylist() for column, key in PRODUCT_ATTRS.items()})
    return relevance_rows(
        pair_id=pair_id, query_id=query_id, query=text_column(table, "query"),
        item_id=pc.binary_join_element_wise(locale, product_id, ":"), item_title=text_column(found, "product_title"),
        item_category=pa.array([""] * table.num_rows, pa.string()), item_brand=text_column(found, "product_brand"),
        item_attrs=attrs_json(attrs, table.num_rows), label=label)


CONVERTER = Converter(
    name=NAME,
    description="Amazon ESCI shopping queries (examples + products Parquet) → relevance pairs, E/S/C/I → 4/3/2/1, "
                "whole queries per split",
    options=(
        Option("examples", "shopping_queries_dataset_examples.parquet", "examples file name in the folder"),
        Option("products", "shopping_queries_dataset_products.parquet", "products file name in the folder"),
        Option("locales", [], "product locales to keep, comma-separated (default all)", kind="list"),
        Option("version", "all", "all, or small (small_version = 1 only)", choices=("all", "small")),
        Option("use_release_split", True, "the release's test split is the test split"),
        Option("valid_fraction", 0.1, "share of (train) queries in valid"),
        Option("test_fraction", 0.1, "share of queries in test when the release split is not used"),
        Option("max_rows", 0, "read at most N examples (0 = all)"),
    ),
    run=convert_esci,
)
