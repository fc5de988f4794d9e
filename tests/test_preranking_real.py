"""The pre-ranking pipeline on real data (autofas.md §8, Foursquare NYC), at tiny scale on hand-built check-in
arrays in the STAN layout: the view (a CTR conversion with `n_cand - 1` geo negatives, sampled requests), the
teacher trained on the ordinary conversion and scoring the view through its vocabularies, references without a
Bayes figure, and a tiny AutoFAS search, derivation and retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from rankstack.config import from_dict
from rankstack.data.converters import get_converter
from rankstack.data.dataset import Dataset
from rankstack.errors import ConfigError, RankstackError
from rankstack.preranking.data import PrerankSplit, load_split
from rankstack.preranking.evaluate import click_recall_at_k, overlap_at_k
from rankstack.preranking.latency import predict_mlp
from rankstack.preranking.run import PrerankRunConfig, prepare, train_autofas

ROOT = Path(__file__).resolve().parent.parent
N_CAND = 20


def _checkin_arrays(folder: Path, n_users: int = 60, n_pois: int = 120, per_user: int = 40) -> Path:
    """NYC-like arrays whose users mostly move to one of the 8 POIs nearest their last one (distance matters)."""
    rng = np.random.default_rng(0)
    lat = 40.70 + 0.05 * rng.random(n_pois)
    lon = -74.00 + 0.05 * rng.random(n_pois)
    near = np.argsort(np.hypot(lat[:, None] - lat[None], lon[:, None] - lon[None]), axis=1)[:, 1:9]
    rows = []
    for user in range(n_users):
        poi, minute = int(rng.integers(n_pois)), int(rng.integers(1000))
        for _ in range(per_user):
            rows.append((user, poi, minute))
            poi = int(rng.choice(near[poi])) if rng.random() < 0.8 else int(rng.integers(n_pois))
            minute += int(rng.integers(30, 600))
    folder.mkdir()
    np.save(folder / "NYC.npy", np.array(rows, dtype=np.int32)[rng.permutation(len(rows))])
    np.save(folder / "NYC_POI.npy", np.c_[np.arange(n_pois), lat, lon])
    return folder


def _convert(arrays: Path, out: Path, **options) -> Path:
    common = {"task": "ctr", "min_checkins": 3, "pool_size": 40, "seq_len": 2, "realtime_len": 1}
    return get_converter("foursquare-nyc").convert(arrays, out, **common, **options)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("prerank-real")
    arrays = _checkin_arrays(root / "arrays")
    teacher_data = _convert(arrays, root / "ctr", negatives=4)
    view = _convert(arrays, root / "view", negatives=N_CAND - 1,
                    sample_requests={"train": 80, "valid": 24, "test": 24})
    config = from_dict(PrerankRunConfig, {
        "data": str(view), "teacher_data": str(teacher_data), "n_cand": N_CAND,
        "teacher_config": str(ROOT / "configs/preranking/teacher_dcnv2.yaml"), "teacher_epochs": 2,
        "autofas": {"n_layers": 2, "widths": [32, 16], "search_steps": 60, "batch_requests": 8},
        "retrain": {"epochs": 1, "batch_requests": 8},
        "cold": {"widths": [32, 16]}, "two_tower": {"tower": [32], "output_widths": [16]},
        "latency": {"repeats": 20, "warmup": 5, "cost_scale": 0.125, "table_dir": str(root / "latency")},
    })
    return prepare(config, root / "run", log=lambda *_: None), root


def test_sampled_view_rows_equal_the_full_conversion(real):
    """`sample_requests` keeps whole requests whose positive row is the ordinary conversion's, feature for
    feature (popularity and visit counts come from the whole log), with `N_CAND` candidates each."""
    _, root = real
    view = pq.read_table(root / "view" / "test.parquet").to_pandas()
    assert view.request_id.nunique() == 24 and view.groupby("request_id").size().eq(N_CAND).all()
    assert view.groupby("request_id").click.sum().eq(1).all()
    full = pq.read_table(root / "ctr" / "test.parquet").to_pandas()
    columns = ["request_id", "hour", "weekday", "prev_poi_id", "poi_id", "grid_cell", "poi_popularity",
               "distance_km", "user_cell_visits"]
    pos = view[view.click == 1][columns].merge(full[full.click == 1][columns], on="request_id", suffixes=("", "_f"))
    assert len(pos) == 24
    for column in columns[1:]:
        assert (pos[column] == pos[f"{column}_f"]).all(), column
    with pytest.raises(RankstackError, match="split:count"):
        _convert(root / "arrays", root / "bad", negatives=4, sample_requests={"tets": "5"})


def test_view_has_candidates_with_costs_and_every_row_labelled(real):
    p, _ = real
    assert p.n_cand == N_CAND
    for split in p.splits.values():
        assert split.tensors["shown"].shape == (split.num_requests, N_CAND)
        assert bool((split.tensors["shown"] == 1).all())
        assert bool((split.tensors["click"].sum(1) == 1).all())
    assert {f.name for f in p.fields if f.level == "request"} == {"hour", "weekday", "prev_poi_id", "prev_grid_cell"}
    assert not any(f.name.startswith(("longterm_", "realtime_")) for f in p.fields)
    assert all(f.cost_ms > 0 for f in p.fields)


def test_view_is_encoded_with_the_teacher_datasets_vocabularies(real):
    """The positive rows of the view and of the teacher's dataset (the same check-ins) get the same ids and
    numeric buckets, so the teacher reads the view as it read its training data."""
    p, root = real
    view = p.splits["test"]
    full = load_split(Dataset.open(root / "ctr"), "test", p.fields)
    rows = np.searchsorted(full.request_ids, view.request_ids)
    assert (full.request_ids[rows] == view.request_ids).all()
    pos_view = view.tensors["click"].argmax(1)
    pos_full = full.tensors["click"][rows].argmax(1)
    r = np.arange(view.num_requests)
    for f in p.fields:
        assert torch.equal(view.tensors[f.key][r, pos_view], full.tensors[f.key][rows][r, pos_full]), f.name


def test_references_without_bayes_and_the_teacher_reads_the_view(real):
    """No true probabilities on real data: teacher and random only. The teacher, trained on the ordinary
    conversion, ranks the real check-in among the view's candidates (ids and buckets line up)."""
    p, _ = real
    refs = p.teacher["test"]
    assert set(refs) == {"teacher", "random"}
    assert "true_overlap@10" not in refs["teacher"]
    assert refs["teacher"]["auc"] > refs["random"]["auc"] + 0.1
    assert refs["teacher"]["click_recall@10"] > refs["random"]["click_recall@10"]


def test_tiny_search_derivation_and_retraining_run(real):
    p, root = real
    names = [f.name for f in p.fields]
    full = predict_mlp(p.fields, names, p.config.autofas.widths[:1], p.table, p.n_cand,
                       p.config.autofas.embedding_dim, p.config.latency.cost_scale)["total"]
    budget = 0.6 * full
    row = train_autofas(p, budget, root / "autofas", log=lambda *_: None)
    assert row["predicted_ms"] <= budget and 0 < row["n_fields"] < len(names)
    assert 0.0 <= row["auc"] <= 1.0 and "true_overlap@10" not in row
    selection = row["selection"]
    assert {r["kind"] for r in selection["fields"]} == {"unknown"}
    assert "noise_kept" not in selection and "informative_recall" not in selection


def test_config_errors_name_the_fix(real, tmp_path):
    p, root = real
    data = {"data": str(root / "view"), "teacher_data": str(root / "ctr")}
    cases = [({"world": "w", **data}, "exactly one of"), ({}, "exactly one of"),
             ({"data": data["data"]}, "needs `teacher_data:`"), ({**data, "n_cand": 50}, "negatives=49")]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            prepare(from_dict(PrerankRunConfig, values), tmp_path / "x", log=lambda *_: None)
    costless = tmp_path / "view"
    shutil.copytree(root / "view", costless)
    schema = yaml.safe_load((costless / "schema.yaml").read_text())
    for column in schema["columns"]:
        column["cost_ms"] = 0.0
    (costless / "schema.yaml").write_text(yaml.safe_dump(schema))
    with pytest.raises(ConfigError, match="cost_ms"):
        prepare(from_dict(PrerankRunConfig, {**data, "data": str(costless)}), tmp_path / "y", log=lambda *_: None)


def test_top_k_breaks_ties_at_random_not_by_position():
    """A scorer that cannot tell candidates apart finds the real check-in (always row 0 of a Foursquare request)
    in its top 10 about 10 / N_c of the time, and agrees with itself completely."""
    scores = torch.zeros(400, 200)
    click = torch.zeros(400, 200)
    click[:, 0] = 1.0
    split = PrerankSplit({"shown": torch.ones_like(click), "click": click}, np.arange(400))
    assert click_recall_at_k(scores, split, 10) == pytest.approx(10 / 200, abs=0.03)
    assert overlap_at_k(scores, scores, 10) == 1.0
