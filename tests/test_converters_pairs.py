"""The `relevance-pairs` converter (your own judged query-item pairs): the relevance format with whole queries per
split, labels mapped to tiers, and errors that name the file, the column and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from rankstack.data.converters import convert
from rankstack.data.dataset import Dataset
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError, RankstackError
from rankstack.relevance.data import load_split
from tests._converters import assert_no_output, rows

LABELS = ("Exact", "Partial", "Irrelevant")


def judgements(queries: int = 40) -> pa.Table:
    """Three judged products per query, in a shop's own column names."""
    out = {"search_term": [], "sid": [], "product": [], "sku": [], "judgement": [], "cat": [], "maker": [],
           "colour": []}
    for q in range(queries):
        for k, label in enumerate(LABELS):
            out["search_term"].append(f"blue sofa {q}")
            out["sid"].append(f"q{q}")
            out["product"].append(f"Sofa model {q}-{k}")
            out["sku"].append(f"p{q}-{k}")
            out["judgement"].append(label)
            out["cat"].append("Furniture > Sofas")
            out["maker"].append("Acme" if k else None)
            out["colour"].append("blue" if k == 0 else None)
    return pa.table(out)


OPTIONS = {"query_column": "search_term", "query_id_column": "sid", "title_column": "product",
           "item_id_column": "sku", "label_column": "judgement", "category_column": "cat", "brand_column": "maker",
           "attr_columns": "colour", "tiers": "Exact:4,Partial:3,Irrelevant:1"}


def test_judged_pairs_become_the_relevance_format_with_whole_queries_per_split(tmp_path: Path) -> None:
    pq.write_table(judgements(), tmp_path / "judged.parquet")
    out = convert("relevance-pairs", tmp_path / "judged.parquet", tmp_path / "pairs", OPTIONS)
    assert Dataset.open(out).schema.columns == relevance_schema("relevance-pairs").columns
    by_split = {split: rows(out, split) for split in ("train", "valid", "test")}
    assert sum(map(len, by_split.values())) == 120
    queries = {split: {r["query_id"] for r in table} for split, table in by_split.items()}
    assert not (queries["train"] & queries["valid"] or queries["train"] & queries["test"]
                or queries["valid"] & queries["test"])
    assert all(len(q) > 0 for q in queries.values())
    first = next(r for r in by_split["train"] if r["item_id"].endswith("-0"))
    assert first["label"] == 4 and first["item_title"].startswith("Sofa model") and first["query"].startswith("blue")
    assert first["item_category"] == "Furniture > Sofas" and first["item_brand"] == ""  # an empty cell is ""
    assert json.loads(first["item_attrs"]) == {"colour": "blue"}
    assert (first["query_type"], first["is_hard"], first["rules"], first["gold"]) == ("unknown", 0, [], "")
    assert sorted({r["label"] for r in by_split["train"]}) == [1, 3, 4]
    records = load_split(out, "test")  # what the relevance stages read
    assert len(records) == len(by_split["test"]) and {r.label for r in records} == {1, 3, 4}


def test_integer_tiers_need_no_map_and_ids_default_to_the_text(tmp_path: Path) -> None:
    table = pa.table({"query": [f"q{i // 2}" for i in range(60)], "title": [f"item {i}" for i in range(60)],
                      "label": [4, 1] * 30})
    pa_csv.write_csv(table, tmp_path / "pairs.csv")
    out = convert("relevance-pairs", tmp_path / "pairs.csv", tmp_path / "out", {})
    train = rows(out, "train")
    assert all(r["query_id"] == r["query"] and r["item_id"] == r["item_title"] for r in train)
    assert {r["label"] for r in train} == {1, 4}


@pytest.mark.parametrize(("table", "options", "error", "message"), [
    (pa.table({"query": ["a"], "title": ["x"], "label": [5]}), {}, DataError,
     r"pairs\.csv: column `label` has `5` at row 0; labels must be the tiers 1-4"),
    (pa.table({"query": ["a"], "title": ["x"], "label": ["Maybe"]}), {"tiers": "Yes:4,No:1"}, DataError,
     r"pairs\.csv: column `label` has label `Maybe`"),
    (pa.table({"query": ["a"], "title": ["x"], "label": ["Yes"]}), {"tiers": "Yes:5"}, RankstackError,
     r"option `tiers` maps `Yes` to `5`"),
    (pa.table({"q": ["a"], "title": ["x"], "label": [4]}), {}, DataError,
     r"column `query` missing from .*pairs\.csv; its columns are q, title, label\. Name the columns with --option "
     r"query_column="),
    (pa.table({"query": ["a", None], "title": ["x", "y"], "label": [4, 1]}), {}, DataError,
     r"pairs\.csv: column `query` is empty at row 1"),
    (pa.table({"query": ["a", "a"], "title": ["x", "y"], "label": [4, 1]}), {}, DataError,
     r"its 1 queries leave the (valid|test|train) split empty"),
])
def test_bad_pairs_name_the_file_the_column_and_the_fix(table, options, error, message, tmp_path: Path) -> None:
    pa_csv.write_csv(table, tmp_path / "pairs.csv")
    with pytest.raises(error, match=message):
        convert("relevance-pairs", tmp_path / "pairs.csv", tmp_path / "out", options)
    assert_no_output(tmp_path / "out")
