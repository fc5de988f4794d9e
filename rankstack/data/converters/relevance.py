"""What the ESCI and WANDS converters share: graded labels → tiers, query-level splits, and the rows of the one
relevance format (`rankstack.data.formats.relevance_schema`, relevance.md §1).

Neither source has query intent types or reasoning steps, so every row gets `query_type` = `unknown`,
`is_hard` = 0, `rules` = [] and `gold` = ""; `item_price_level` is 0 (unknown).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.common import split_by_fraction, stable_unit
from rankstack.errors import DataError


def map_tiers(labels: pa.Array, tiers: dict[str, int], file: Path, column: str, row_offset: int = 1) -> np.ndarray:
    """Tier of each label string; a DataError names the first label `tiers` does not know.

    row_offset: the row number of `labels[0]` in `file` (1 = the first data row).
    """
    trimmed = pc.utf8_trim_whitespace(labels.cast(pa.string()))
    index = pc.index_in(trimmed, value_set=pa.array(list(tiers)))
    unknown = pc.is_null(index).to_numpy(zero_copy_only=False)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{file}: column `{column}` has label `{trimmed[row].as_py()}` at data row {row + row_offset}; "
                        f"expected one "
                        f"of {', '.join(tiers)}. Fix or drop the row.")
    return np.array(list(tiers.values()), dtype=np.float32)[index.to_numpy(zero_copy_only=False)]


def query_unit(query_ids: list[str] | np.ndarray) -> np.ndarray:
    """A stable number in [0, 1) per query id: the same for all of a query's pairs, on every machine."""
    return stable_unit(query_ids, salt="relevance-split:")


def query_splits(query_ids: list[str] | np.ndarray, valid_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> np.ndarray:
    """Split of each pair by a stable hash of its query id, so a query's pairs all land in one split."""
    return split_by_fraction(query_unit(query_ids), valid_fraction, test_fraction)


def text_column(table: pa.Table, name: str) -> pa.Array:
    """A column as text with empty cells as "" (all "" when the table has no column `name`, or `name` is "")."""
    if name not in table.column_names:
        return pa.array([""] * table.num_rows, pa.string())
    return pc.fill_null(table.column(name).cast(pa.string()), "").combine_chunks()


def attrs_json(columns: dict[str, list[Any]], rows: int) -> list[str]:
    """One JSON object per row (`rows` of them) from attribute columns, leaving out empty values; `{}` per row
    without columns."""
    names = list(columns)
    values = zip(*columns.values()) if names else [()] * rows
    return [json.dumps({k: v for k, v in zip(names, row) if v not in (None, "", {}, [])}, ensure_ascii=False,
                       sort_keys=True) for row in values]


def relevance_rows(pair_id: pa.Array | list, query_id: pa.Array | list, query: pa.Array | list,
                   item_id: pa.Array | list, item_title: pa.Array | list, item_category: pa.Array | list,
                   item_brand: pa.Array | list, item_attrs: list[str], label: np.ndarray) -> dict[str, Any]:
    """A chunk of the relevance format; the columns no converter source provides get their documented defaults."""
    n = len(label)
    return {
        "pair_id": pair_id, "query_id": query_id, "query": query, "query_type": ["unknown"] * n,
        "is_hard": np.zeros(n, dtype=np.float32), "item_id": item_id, "item_title": item_title,
        "item_category": item_category, "item_brand": item_brand, "item_price_level": np.zeros(n, np.float32),
        "item_attrs": item_attrs, "rules": pa.array([[]] * n, pa.list_(pa.string())), "label": label,
        "gold": [""] * n,
    }
