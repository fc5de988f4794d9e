"""Converter registry, the flat CTR formats (FuxiCTR, Criteo, Avazu, Ali-CCP) on the real samples in
../shared/data/ctr-samples, and the relevance formats (ESCI, WANDS) on hand-made fixtures in the real layouts."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankstack.data.converters import CONVERTERS, convert, get_converter
from rankstack.data.converters.common import Option
from rankstack.data.dataset import Dataset
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError, RankstackError
from tests._converters import assert_no_output, real, rows

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def split_counts(out: Path) -> dict[str, int]:
    ds = Dataset.open(out)
    return {s: ds.num_rows(s) for s in ds.schema.splits}


# ---- registry ------------------------------------------------------------------------------------------


def test_registry_lists_every_format_with_documented_options() -> None:
    assert set(CONVERTERS) == {"amazon-s3rec", "foursquare-nyc", "checkins", "taobao-userbehavior", "fuxictr",
                               "criteo", "avazu", "ali-ccp", "esci", "wands", "relevance-pairs"}
    for name, converter in CONVERTERS.items():
        assert converter.name == name and converter.description
        assert converter.run.__doc__ and "Options:" in converter.run.__doc__
        for option in converter.options:
            assert option.help and option.name in converter.run.__doc__, (name, option.name)


def test_unknown_format_and_option_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(RankstackError, match=r"unknown format `criteo-tsv`.*known formats: ali-ccp, amazon-s3rec"):
        get_converter("criteo-tsv")
    with pytest.raises(RankstackError, match=r"converter `criteo` has no option `bogus`.*split"):
        convert("criteo", tmp_path / "x.txt", tmp_path / "out", {"bogus": 1})
    with pytest.raises(RankstackError, match=r"option `negatives` must be a number \(int\), got 'four'"):
        convert("amazon-s3rec", tmp_path / "x.txt", tmp_path / "out", {"negatives": "four"})
    with pytest.raises(RankstackError, match="option `task` must be one of ctr, sequential"):
        convert("amazon-s3rec", tmp_path / "x.txt", tmp_path / "out", {"task": "ranking"})
    assert_no_output(tmp_path / "out")


def test_option_values_parse_from_cli_strings() -> None:
    assert Option("n", 4, "h").parse("7", "c") == 7
    assert Option("f", True, "h").parse("false", "c") is False
    assert Option("x", 0.5, "h").parse("1e-3", "c") == 0.001
    assert Option("fill", None, "h", kind="float").parse("", "c") is None
    assert Option("l", [], "h", kind="list").parse("a, b,,c", "c") == ["a", "b", "c"]
    assert Option("m", {}, "h", kind="map").parse("click_sequence:adgroup_id", "c") == {
        "click_sequence": "adgroup_id"}
    with pytest.raises(RankstackError, match="key:value"):
        Option("m", {}, "h", kind="map").parse("click_sequence", "c")


def test_missing_input_is_a_data_error(tmp_path: Path) -> None:
    for name in CONVERTERS:
        with pytest.raises(DataError, match="does not exist|is not a folder"):
            convert(name, tmp_path / "nowhere", tmp_path / "out")
        assert_no_output(tmp_path / "out")


# ---- FuxiCTR / BARS ------------------------------------------------------------------------------------


def test_fuxictr_tiny_taobao_detects_columns(tmp_path: Path) -> None:
    out = convert("fuxictr", real("ctr-samples/fuxictr-taobao-tiny"), tmp_path / "tiny")
    assert split_counts(out) == {"train": 100, "valid": 100, "test": 100}
    schema = Dataset.open(out).schema
    kinds = {c.name: (c.kind, c.role) for c in schema.columns}
    assert kinds["clk"] == ("numeric", "label") and kinds["time_stamp"] == ("text", "meta")
    assert kinds["price"] == ("numeric", "item") and kinds["pid"] == ("categorical", "context")
    assert kinds["userid"] == ("categorical", "user") and kinds["adgroup_id"] == ("categorical", "item")
    assert kinds["click_sequence"] == ("sequence", "history")
    assert schema.column("click_sequence").embedding_group == "adgroup_id"
    assert schema.group_key == "userid"
    first = rows(out, "train")[:2]
    assert first[0]["click_sequence"] == ["170301", "573514"] and first[0]["pvalue_level"] == "<missing>"
    assert first[0]["price"] == pytest.approx(3.9) and first[1]["click_sequence"] == ["680144"]
    with open(real("ctr-samples/fuxictr-taobao-tiny/test_sample.csv")) as handle:
        cells = [row["click_sequence"] for row in csv.DictReader(handle)]
    assert [r["click_sequence"] for r in rows(out, "test")] == [c.split("^") if c else [] for c in cells]


def test_fuxictr_empty_numeric_needs_a_fill_value(tmp_path: Path) -> None:
    source = real("ctr-samples/fuxictr-taobao-tiny")
    folder = tmp_path / "edited"
    shutil.copytree(source, folder)
    lines = (folder / "valid_sample.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("price")] = ""
    lines[3] = ",".join(cells)
    (folder / "valid_sample.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"valid_sample\.csv: column `price` is empty at data row 3.*numeric_fill"):
        convert("fuxictr", folder, tmp_path / "out")
    assert_no_output(tmp_path / "out")
    out = convert("fuxictr", folder, tmp_path / "filled", {"numeric_fill": "-1"})
    assert rows(out, "valid")[2]["price"] == -1


def test_fuxictr_errors_name_file_and_column(tmp_path: Path) -> None:
    source = real("ctr-samples/fuxictr-taobao-tiny")
    with pytest.raises(DataError, match=r"column `nope` missing from .*train_sample\.csv"):
        convert("fuxictr", source, tmp_path / "out", {"numeric": "nope"})
    with pytest.raises(DataError, match=r"column `cate_id` .*`x1` at data row 3"):
        folder = tmp_path / "bad"
        shutil.copytree(source, folder)
        text = (folder / "test_sample.csv").read_text().splitlines()
        text[3] = text[3].replace(",6251,", ",x1,")
        (folder / "test_sample.csv").write_text("\n".join(text) + "\n")
        convert("fuxictr", folder, tmp_path / "out", {"numeric": "cate_id,price"})
    with pytest.raises(DataError, match=r"label column `clk` has value 2 at data row 1"):
        text = (folder / "test_sample.csv").read_text().splitlines()
        text[1] = "2" + text[1][1:]
        (folder / "test_sample.csv").write_text("\n".join(text) + "\n")
        convert("fuxictr", folder, tmp_path / "out")
    (folder / "test_sample.csv").write_text((folder / "test_sample.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"test_sample\.csv has a header but no data rows"):
        convert("fuxictr", folder, tmp_path / "out")
    (folder / "valid_sample.csv").unlink()
    with pytest.raises(DataError, match=r"expected one valid file.*--option valid=FILE"):
        convert("fuxictr", folder, tmp_path / "out")
    assert_no_output(tmp_path / "out")


# ---- Criteo, Avazu, Ali-CCP ----------------------------------------------------------------------------


def test_criteo_sample_ordered_split_and_log_counts(tmp_path: Path) -> None:
    source = real("ctr-samples/criteo_sample.txt")
    out = convert("criteo", source, tmp_path / "criteo")
    assert split_counts(out) == {"train": 160, "valid": 20, "test": 20}
    ds = Dataset.open(out)
    assert ds.schema.column("I5").num_buckets == 16 and ds.schema.column("C1").vocab.policy == "build"
    first = rows(out, "train")[0]  # 0,,3,260.0,,17668.0,... (I1 empty → 0; I2 = 3)
    assert first["click"] == 0 and first["I1"] == 0.0
    assert first["I2"] == pytest.approx(math.log1p(3)) and first["I3"] == pytest.approx(math.log1p(260))
    assert first["C1"] == "05db9164" and first["C19"] == "<missing>"
    second = rows(out, "train")[1]
    assert second["I2"] == pytest.approx(-math.log(2))  # -1: sign(x)·log(1+|x|) stays finite
    raw = convert("criteo", source, tmp_path / "raw", {"numeric_transform": "none", "split": "random",
                                                      "seed": 5, "hash_buckets": 1000})
    again = convert("criteo", source, tmp_path / "again", {"numeric_transform": "none", "split": "random",
                                                          "seed": 5, "hash_buckets": 1000})
    assert pq.read_table(raw / "test.parquet").equals(pq.read_table(again / "test.parquet"))
    assert Dataset.open(raw).schema.column("C1").vocab.policy == "hash"
    assert 17668.0 in {r["I5"] for s in ("train", "valid", "test") for r in rows(raw, s)}
    assert split_counts(raw) != {"train": 160, "valid": 20, "test": 20}


def test_criteo_release_layout_without_header(tmp_path: Path) -> None:
    lines = real("ctr-samples/criteo_sample.txt").read_text().splitlines()[1:21]
    release = tmp_path / "train.txt"
    release.write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n")
    out = convert("criteo", release, tmp_path / "out")
    assert split_counts(out) == {"train": 16, "valid": 2, "test": 2}
    assert rows(out, "train")[0]["C1"] == "05db9164"
    release.write_text("\n".join(lines[:3]) + "\n2" + lines[3][1:].replace(",", "\t") + "\n")
    with pytest.raises(DataError, match="fields"):
        convert("criteo", release, tmp_path / "bad")
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("\n".join(line.replace(",", "\t") for line in ["2" + lines[0][1:], *lines[1:10]]) + "\n")
    with pytest.raises(DataError, match=r"labelled\.txt: label column `label` has value 2 at data row 1"):
        convert("criteo", labelled, tmp_path / "bad")
    labelled.write_text("")
    with pytest.raises(DataError, match="is empty"):
        convert("criteo", labelled, tmp_path / "bad")
    assert_no_output(tmp_path / "bad")


def test_avazu_sample_hour_weekday_and_roles(tmp_path: Path) -> None:
    out = convert("avazu", real("ctr-samples/avazu_sample.txt"), tmp_path / "avazu")
    assert split_counts(out) == {"train": 80, "valid": 10, "test": 10}
    schema = Dataset.open(out).schema
    assert "id" not in schema.names and schema.column("device_ip").role == "user"
    assert schema.column("C14").role == "item" and schema.column("site_id").role == "context"
    first = rows(out, "train")[0]
    assert (first["hour"], first["weekday"]) == (0, 1)  # 14102100: Tuesday 2014-10-21, 00 h
    assert first["site_id"] == "1fbe01fe" and first["C20"] == "-1"


def test_avazu_bad_hour_is_named(tmp_path: Path) -> None:
    lines = real("ctr-samples/avazu_sample.txt").read_text().splitlines()[:6]
    lines[4] = lines[4].replace(",14102100,", ",141021,")
    bad = tmp_path / "avazu.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"avazu\.csv: column `hour` has `141021` at data row 4"):
        convert("avazu", bad, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_ali_ccp_two_labels_and_named_fields(tmp_path: Path) -> None:
    out = convert("ali-ccp", real("ctr-samples"), tmp_path / "aliccp")
    assert split_counts(out) == {"train": 100, "valid": 50, "test": 50}
    schema = Dataset.open(out).schema
    assert schema.labels == ["click", "conversion"] and schema.group_key == "user_id"
    assert schema.column("item_id").role == "item" and schema.column("user_brand_cross").role == "cross"
    assert schema.column("user_category_history_value").kind == "numeric"
    train = rows(out, "train")
    assert sum(r["click"] for r in train) == 7 and sum(r["conversion"] for r in train) == 1
    assert train[0]["item_id"] == "0" and train[0]["user_category_cross_value"] == pytest.approx(0.07556)


def test_ali_ccp_bad_label_value(tmp_path: Path) -> None:
    source = real("ctr-samples")
    folder = tmp_path / "ccp"
    folder.mkdir()
    for name in ("ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"):
        shutil.copy(source / name, folder / name)
    lines = (folder / "ali_ccp_val_sample.csv").read_text().splitlines()
    lines[5] = "1,yes" + lines[5][3:]
    (folder / "ali_ccp_val_sample.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ali_ccp_val_sample\.csv: column `purchase` has `yes` at data row 5"):
        convert("ali-ccp", folder, tmp_path / "out")
    assert_no_output(tmp_path / "out")


# ---- ESCI ----------------------------------------------------------------------------------------------

ESCI = FIXTURES / "esci"


def pairs_by_split(out: Path) -> dict[str, list[dict]]:
    return {s: rows(out, s) for s in ("train", "valid", "test")}


def assert_relevance_format(out: Path, name: str) -> None:
    schema = Dataset.open(out).schema
    expected = relevance_schema(name)
    assert [(c.name, c.kind, c.role, c.dtype) for c in schema.columns] == [
        (c.name, c.kind, c.role, c.dtype) for c in expected.columns]
    assert schema.request_key == expected.request_key


def test_esci_tiers_release_split_and_whole_queries(tmp_path: Path) -> None:
    out = convert("esci", ESCI, tmp_path / "esci")
    assert_relevance_format(out, "esci")
    examples = pq.read_table(ESCI / "shopping_queries_dataset_examples.parquet").to_pylist()
    tier = {"E": 4, "S": 3, "C": 2, "I": 1}
    by_pair = {str(e["example_id"]): e for e in examples}
    splits = pairs_by_split(out)
    assert sum(map(len, splits.values())) == len(examples)
    for pairs in splits.values():
        for pair in pairs:
            example = by_pair[pair["pair_id"]]
            assert pair["label"] == tier[example["esci_label"]]
            assert pair["query"] == example["query"] and pair["gold"] == "" and pair["rules"] == []
            assert pair["item_id"] == f"{example['product_locale']}:{example['product_id']}"
    queries = {s: {p["query_id"] for p in pairs} for s, pairs in splits.items()}
    assert queries == {"train": {"0", "1", "2", "3", "7"}, "valid": {"31"}, "test": {"5", "6", "30"}}
    titles = {(p["item_id"]): p["item_title"] for pairs in splits.values() for p in pairs}
    assert titles["us:B07ZZSHARED"] == "Phone Stand for Desk"
    assert titles["es:B07ZZSHARED"] == "Soporte de teléfono para escritorio"
    brandless = next(p for p in splits["train"] if p["item_id"] == "us:B07ZZSHARED")
    assert brandless["item_brand"] == "" and '"color": "Black"' in brandless["item_attrs"]


def test_esci_options_filter_and_hash_split(tmp_path: Path) -> None:
    us_small = convert("esci", ESCI, tmp_path / "us", {"locales": "us", "version": "small"})
    pairs = [p for ps in pairs_by_split(us_small).values() for p in ps]
    assert pairs and all(p["item_id"].startswith("us:") for p in pairs)
    assert {p["query_id"] for p in pairs} == {"0", "1", "31", "5"}
    hashed = convert("esci", ESCI, tmp_path / "hashed", {"use_release_split": "false"})
    queries = {s: {p["query_id"] for p in ps} for s, ps in pairs_by_split(hashed).items()}
    assert not (queries["train"] & queries["valid"] or queries["train"] & queries["test"]
                or queries["valid"] & queries["test"])
    assert queries["valid"] == {"7", "30"} and queries["test"] == {"31"}


def test_esci_errors(tmp_path: Path) -> None:
    folder = tmp_path / "esci"
    shutil.copytree(ESCI, folder)
    examples = pq.read_table(folder / "shopping_queries_dataset_examples.parquet")
    labels = examples.column("esci_label").to_pylist()
    labels[4] = "X"
    pq.write_table(examples.set_column(5, "esci_label", pa.array(labels)),
                   folder / "shopping_queries_dataset_examples.parquet")
    with pytest.raises(DataError, match=r"examples\.parquet: column `esci_label` has label `X` at data row 5; "
                                        "expected one of E, S, C, I"):
        convert("esci", folder, tmp_path / "out")
    assert_no_output(tmp_path / "out")
    pq.write_table(examples.drop_columns(["query"]), folder / "shopping_queries_dataset_examples.parquet")
    with pytest.raises(DataError, match=r"column `query` missing from .*examples\.parquet"):
        convert("esci", folder, tmp_path / "out")
    products = pq.read_table(ESCI / "shopping_queries_dataset_products.parquet")
    pq.write_table(examples, folder / "shopping_queries_dataset_examples.parquet")
    pq.write_table(products.slice(1), folder / "shopping_queries_dataset_products.parquet")
    with pytest.raises(DataError, match=r"column `product_id` has `B08EARBUD1` .* not in .*products\.parquet"):
        convert("esci", folder, tmp_path / "out")
    pq.write_table(products.slice(0, 0), folder / "shopping_queries_dataset_products.parquet")
    with pytest.raises(DataError, match=r"products\.parquet has no rows"):
        convert("esci", folder, tmp_path / "out")
    assert_no_output(tmp_path / "out")


# ---- WANDS ---------------------------------------------------------------------------------------------


@pytest.fixture
def wands(tmp_path: Path) -> Path:
    """The real query.csv beside the hand-made product.csv and label.csv (which use its query ids)."""
    folder = tmp_path / "wands"
    folder.mkdir()
    (folder / "query.csv").symlink_to(real("wands/query.csv"))
    for name in ("product.csv", "label.csv"):
        shutil.copy(FIXTURES / "wands" / name, folder / name)
    return folder


def test_wands_tiers_and_query_split(wands: Path, tmp_path: Path) -> None:
    out = convert("wands", wands, tmp_path / "out")
    assert_relevance_format(out, "wands")
    tier = {"Exact": 4, "Partial": 3, "Irrelevant": 1}
    labels = {line.split("\t")[0]: line.split("\t") for line in
              (wands / "label.csv").read_text().splitlines()[1:]}
    queries = dict(line.split("\t")[:2] for line in (wands / "query.csv").read_text().splitlines()[1:])
    splits = pairs_by_split(out)
    assert sum(map(len, splits.values())) == len(labels)
    for pairs in splits.values():
        for pair in pairs:
            _, query_id, product_id, label = labels[pair["pair_id"]]
            assert (pair["query_id"], pair["item_id"], pair["label"]) == (query_id, product_id, tier[label])
            assert pair["query"] == queries[query_id]
    by_split = {s: {p["query_id"] for p in pairs} for s, pairs in splits.items()}
    assert by_split == {"train": {"0", "1", "3", "10", "26", "34"}, "valid": {"7", "11"}, "test": {"31", "35"}}
    chair = next(p for p in splits["train"] if p["item_id"] == "0")
    assert chair["query"] == "salon chair" and chair["item_title"] == "bellamy salon styling chair"
    assert chair["item_category"] == "Commercial Business Furniture > Salon Furniture > Salon Chairs"
    assert '"primarymaterial": "faux leather"' in chair["item_attrs"]
    assert np.isin([p["label"] for ps in splits.values() for p in ps], [1, 3, 4]).all()


def test_wands_errors(wands: Path, tmp_path: Path) -> None:
    label = wands / "label.csv"
    text = label.read_text()
    label.write_text(text.replace("\t0\t1\tPartial", "\t0\t1\tPerfect"))
    with pytest.raises(DataError, match=r"label\.csv: column `label` has label `Perfect` at data row 2; expected "
                                        "one of Exact, Partial, Irrelevant"):
        convert("wands", wands, tmp_path / "out")
    label.write_text(text.replace("\t0\t1\tPartial", "\t0\t999\tPartial"))
    with pytest.raises(DataError, match=r"column `product_id` has `999` at data row 2, which is not in .*product"):
        convert("wands", wands, tmp_path / "out")
    label.write_text(text.replace("id\tquery_id\tproduct_id\tlabel", "id\tquery\tproduct_id\tlabel"))
    with pytest.raises(DataError, match=r"column `query_id` missing from .*label\.csv"):
        convert("wands", wands, tmp_path / "out")
    label.write_text("")
    with pytest.raises(DataError, match=r"label\.csv is empty"):
        convert("wands", wands, tmp_path / "out")
    assert_no_output(tmp_path / "out")
