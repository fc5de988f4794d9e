"""Bad input gets a clear error naming the file, the column and the fix; good input round-trips.

Covers typed configs, schema validation, the writer's checks and atomic publishing, `Dataset.open`'s checks of
files against the schema, the loader's value checks, and a property-based test that throws random schemas and
corrupted files at the contract.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstack.config import from_dict, load_yaml, parse_override
from rankstack.data.dataset import Dataset, DatasetWriter
from rankstack.data.loader import BatchLoader
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import ConfigError, DataError
from tests._datasets import SCHEMA, toy_rows, write_toy_dataset


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    mode: str = "a"


@dataclasses.dataclass
class Outer:
    name: str
    sizes: list[int] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)
    cap: int | None = None


def test_config_rejects_unknown_keys_and_wrong_types_by_dotted_path(tmp_path):
    assert from_dict(Outer, {"name": "x", "inner": {"rate": 1}}).inner.rate == 1.0
    # YAML 1.1 reads `1e-3` as a string; a float field takes it, other strings stay errors.
    assert from_dict(Outer, {"name": "x", "inner": {"rate": parse_override("r=1e-3")[1]}}).inner.rate == 0.001
    with pytest.raises(ConfigError, match="key `inner.rate` must be float, got str 'fast'"):
        from_dict(Outer, {"name": "x", "inner": {"rate": "fast"}})
    with pytest.raises(ConfigError, match=r"unknown key `inner.rat`.*valid keys here are: mode, rate"):
        from_dict(Outer, {"name": "x", "inner": {"rat": 1}})
    with pytest.raises(ConfigError, match=r"key `sizes\[1\]` must be int, got str 'b'"):
        from_dict(Outer, {"name": "x", "sizes": [1, "b"]})
    with pytest.raises(ConfigError, match="required key `name` is missing"):
        from_dict(Outer, {})
    with pytest.raises(ConfigError, match="key `cap` must be int"):
        from_dict(Outer, {"name": "x", "cap": True})
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner: {rate: [1}\n")
    with pytest.raises(ConfigError, match="c.yaml is not valid YAML"):
        load_yaml(Outer, path)


def test_schema_checks_name_the_column():
    with pytest.raises(ConfigError, match="column `seq`: a sequence needs `max_len`"):
        from_dict(Schema, {"name": "s", "columns": [{"name": "seq", "kind": "sequence", "role": "history"}]})
    with pytest.raises(ConfigError, match="share embedding group `poi`"):
        from_dict(Schema, {"name": "s", "columns": [
            {"name": "a", "kind": "categorical", "role": "item", "embedding_group": "poi"},
            {"name": "b", "kind": "sequence", "role": "history", "max_len": 3, "embedding_group": "poi",
             "dtype": "string"}]})
    with pytest.raises(ConfigError, match="column `a` is declared twice"):
        from_dict(Schema, {"name": "s", "columns": [{"name": "a", "kind": "numeric", "role": "label"}] * 2})
    with pytest.raises(ConfigError, match="must be one of 'categorical'"):
        from_dict(Schema, {"name": "s", "columns": [{"name": "a", "kind": "float", "role": "label"}]})


@pytest.fixture()
def schema():
    return from_dict(Schema, SCHEMA)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("distance_km", float("nan"), "column `distance_km` has NaN or infinite values"),
        ("distance_km", float("inf"), "column `distance_km` has NaN or infinite values"),
        ("poi_id", -3, "column `poi_id` has negative ids"),
        ("realtime_poi_id", [4, -1], "column `realtime_poi_id` has negative ids"),
        ("realtime_poi_id", None, "column `realtime_poi_id` has missing \\(null\\) values.*empty list"),
        ("hour", "noon", "column `hour` cannot be stored as int64"),
    ],
)
def test_writer_rejects_bad_values_and_leaves_no_output(tmp_path, schema, column, value, message):
    rows = toy_rows(20, seed=0)
    values = list(rows[column])
    values[7] = value
    rows[column] = values
    out = tmp_path / "ds"
    with pytest.raises(DataError, match=message), DatasetWriter(out, schema) as writer:
        writer.write("train", rows)
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "the temporary folder must be removed too"


def test_writer_rejects_missing_extra_columns_and_empty_splits(tmp_path, schema):
    rows = toy_rows(10, seed=0)
    with pytest.raises(DataError, match=r"missing columns \['hour'\]"), DatasetWriter(tmp_path / "a", schema) as w:
        w.write("train", {k: v for k, v in rows.items() if k != "hour"})
    with pytest.raises(DataError, match=r"undeclared columns \['bogus'\]"), DatasetWriter(tmp_path / "b", schema) as w:
        w.write("train", {**rows, "bogus": np.zeros(10)})
    with pytest.raises(DataError, match="split `valid` .* would be empty"), DatasetWriter(tmp_path / "c", schema) as w:
        w.write("train", rows)
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("good") / "toy", rows=400, row_group_size=100)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_open_rejects_truncated_parquet(tmp_path, good):
    ds = _copy(good, tmp_path / "ds")
    data = (ds / "valid.parquet").read_bytes()
    (ds / "valid.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"valid.parquet is not a readable Parquet file.*truncated or corrupt"):
        Dataset.open(ds)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["hour"]), "column `hour` missing from test.parquet.*role context"),
        (lambda t: t.append_column("extra", pa.array(np.zeros(t.num_rows))), "column `extra` .* not declared"),
        (lambda t: t.set_column(t.schema.get_field_index("poi_id"), "poi_id", pa.array(["x"] * t.num_rows)),
         "column `poi_id` in .*test.parquet is string but schema.yaml declares kind categorical with dtype int64"),
        (lambda t: t.slice(0, 0), "test.parquet has no rows"),
    ],
)
def test_open_rejects_files_that_do_not_match_the_schema(tmp_path, good, mutate, message):
    ds = _copy(good, tmp_path / "ds")
    pq.write_table(mutate(pq.read_table(ds / "test.parquet")), ds / "test.parquet")
    with pytest.raises(DataError, match=message):
        Dataset.open(ds)


def test_open_rejects_missing_schema_and_missing_split(tmp_path, good):
    with pytest.raises(DataError, match="needs a schema.yaml"):
        Dataset.open(tmp_path)
    ds = _copy(good, tmp_path / "ds")
    (ds / "valid.parquet").unlink()
    with pytest.raises(DataError, match="valid.parquet is missing; schema.yaml declares split `valid`"):
        Dataset.open(ds)


def test_loader_rejects_bad_values_in_files_written_by_other_tools(tmp_path, good):
    ds = _copy(good, tmp_path / "ds")
    table = pq.read_table(ds / "train.parquet")
    values = table.column("distance_km").to_numpy().copy()
    values[123] = np.nan
    table = table.set_column(table.schema.get_field_index("distance_km"), "distance_km", pa.array(values))
    pq.write_table(table, ds / "train.parquet", row_group_size=100)
    loader = BatchLoader(Dataset.open(ds), "train", batch_size=100)
    with pytest.raises(DataError, match=r"train.parquet: column `distance_km` has NaN .*first at row 123"):
        list(loader)


# ---- property-based: random schemas and corrupted files ------------------------------------------------------

_KINDS = {
    "categorical": st.sampled_from(["int64", "string"]),
    "numeric": st.just("float32"),
    "sequence": st.sampled_from(["int64", "string"]),
}


@st.composite
def random_dataset(draw):
    n_cols = draw(st.integers(1, 6))
    columns = [ColumnSpec("label", "numeric", "label")]
    for i in range(n_cols):
        kind = draw(st.sampled_from(sorted(_KINDS)))
        dtype = draw(_KINDS[kind])
        role = draw(st.sampled_from(["realtime_seq", "history", "item"] if kind == "sequence"
                                    else ["user", "item", "cross", "context"]))
        max_len = draw(st.integers(1, 5)) if kind == "sequence" else 0
        columns.append(ColumnSpec(f"c{i}", kind, role, dtype=dtype, max_len=max_len))
    rows = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = {"label": rng.integers(0, 2, rows).astype(np.float32)}
    for col in columns[1:]:
        def value(dtype):
            v = int(rng.integers(0, 8))
            return f"v{v}" if dtype == "string" else v

        if col.kind == "numeric":
            data[col.name] = rng.normal(size=rows)
        elif col.kind == "categorical":
            data[col.name] = [value(col.dtype) for _ in range(rows)]
        else:
            data[col.name] = [[value(col.dtype) for _ in range(int(rng.integers(0, 8)))] for _ in range(rows)]
    return Schema("random", columns, splits=["train"]), data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_dataset(), st.integers(1, 16), st.floats(0.05, 0.95))
def test_random_schemas_round_trip_and_corruption_is_detected(tmp_path, case, batch_size, cut):
    schema, data = case
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "ds"  # hypothesis re-runs examples in one tmp_path
    with DatasetWriter(out, schema, row_group_size=7) as writer:
        writer.write("train", data)
    dataset = Dataset.open(out)
    rows = len(data["label"])
    batches = list(BatchLoader(dataset, "train", batch_size, shuffle=True))
    assert sum(len(b["label"]) for b in batches) == rows
    for col in schema.columns:
        if col.kind == "sequence":
            for b in batches:
                assert b[col.name].shape[1] == col.max_len
                assert b[col.name].min() >= 0 and b[col.name].max() < dataset.vocab_size(col.name)
        elif col.kind == "categorical":
            assert all(b[col.name].max() < dataset.vocab_size(col.name) for b in batches)
    # A file cut anywhere is refused at open with the file named, never read as garbage.
    blob = (out / "train.parquet").read_bytes()
    (out / "train.parquet").write_bytes(blob[: int(len(blob) * cut)])
    with pytest.raises(DataError, match="train.parquet"):
        Dataset.open(out)
