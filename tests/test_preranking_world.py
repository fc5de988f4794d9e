"""The pre-ranking pipeline on the tiny world (autofas.md §8, §13): the view, the teacher's guidance, the search
direction under tight and loose budgets, derivation, retraining with distillation, and the baselines' plumbing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from rankstack.config import from_dict
from rankstack.preranking.autofas import AutoFASSearch
from rankstack.preranking.evaluate import model_scores, score_report
from rankstack.preranking.latency import predict_mlp
from rankstack.preranking.run import PrerankRunConfig, prepare, train_autofas, train_student
from rankstack.world.preranking import build_preranking_view

ROOT = Path(__file__).resolve().parent.parent
COSTLY = ("distance_km", "user_cat_ctr")
PROXY_OF = {"district_distance_km": "distance_km", "user_cat_ctr_stale": "user_cat_ctr"}


@pytest.fixture(scope="module")
def prep(tiny_world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prerank")
    config = from_dict(PrerankRunConfig, {
        "world": str(tiny_world_dir), "view": str(out / "view"), "n_cand": 30,
        "requests": {"train": 160, "valid": 40, "test": 40},
        "teacher_config": str(ROOT / "configs/preranking/teacher_dcnv2.yaml"), "teacher_epochs": 2,
        "autofas": {"n_layers": 2, "widths": [32, 16], "search_steps": 160, "batch_requests": 8},
        "retrain": {"epochs": 2, "batch_requests": 8},
        "cold": {"widths": [32, 16]}, "two_tower": {"tower": [32], "output_widths": [16]},
        "latency": {"repeats": 20, "warmup": 5, "table_dir": str(out / "latency")},
    })
    torch.manual_seed(0)
    return prepare(config, out, log=lambda *_: None), out


def test_view_repeats_the_displayed_rows_and_adds_sampled_candidates(prep):
    p, out = prep
    view = pq.read_table(out / "view" / "train.parquet").to_pandas()
    ranking = pq.read_table(Path(p.config.world) / "ranking" / "train.parquet",
                            columns=["request_id", "poi_id", "click", "user_cat_ctr", "distance_km"]).to_pandas()
    assert view.groupby("request_id").size().eq(30).all()
    assert not view.duplicated(["request_id", "poi_id"]).any()
    shown = view[view.shown == 1].merge(ranking, on=["request_id", "poi_id"], suffixes=("", "_r"))
    assert len(shown) == int(view.shown.sum()) > 0
    assert (shown.click == shown.click_r).all()
    assert (shown.user_cat_ctr - shown.user_cat_ctr_r).abs().max() < 1e-9
    assert view[view.shown == 0].click.eq(0).all()
    with pytest.raises(Exception, match="already exists"):
        build_preranking_view(p.config.world, out / "view", 30)


def test_teacher_guides_better_than_random(prep):
    p, _ = prep
    refs = p.teacher["test"]
    assert refs["teacher"]["overlap@10"] == pytest.approx(1.0)
    assert refs["teacher"]["auc"] > refs["random"]["auc"] + 0.05
    assert refs["bayes"]["auc"] > refs["teacher"]["auc"]


def _all_fields_ms(p) -> float:
    return predict_mlp(p.fields, [f.name for f in p.fields], p.config.autofas.widths[:1], p.table, p.n_cand,
                       p.config.autofas.embedding_dim, p.config.latency.cost_scale)["total"]


def test_search_direction_tight_and_loose_budgets(prep):
    """Tight budget: the cheap proxies are kept over the costly crosses they copy (§13.6). Loose budget: the costly
    informative crosses are kept. (A noise field the network ignores costs nothing in loss, so under a loose budget
    AutoFAS keeps it too; docs/preranking.md reports this.)"""
    p, _ = prep
    full = _all_fields_ms(p)
    # The search's own choice: without `derive_fill`, which would spend left-over budget on the costly crosses.
    search_only = dataclasses.replace(p.config.autofas, derive_fill=False)
    tight = AutoFASSearch(p.layout, p.fields, search_only, p.table, 0.4 * full, 1.0, p.n_cand, 0)
    spec = tight.run(p.splits["train"])
    assert spec.predicted_ms["total"] <= 0.4 * full
    kept_proxies = sum(proxy in spec.fields for proxy in PROXY_OF)
    kept_costly = sum(costly in spec.fields for costly in PROXY_OF.values())
    assert kept_proxies > kept_costly
    loose = AutoFASSearch(p.layout, p.fields, p.config.autofas, p.table, 2.0 * full, 1.0, p.n_cand, 0)
    spec = loose.run(p.splits["train"])
    assert all(name in spec.fields for name in COSTLY)


NOISE = ("noise_request_0", "noise_item_1", "noise_cross_2", "noise_request_3", "noise_item_4", "noise_cross_5")


def test_loose_budget_drops_noise_and_keeps_costly_informative_fields(prep, tmp_path):
    """The issue's direction (autofas.md §13.6): with a budget that every field fits into, derivation with the
    held-out field test (`derive_test_z`, no `derive_fill`) keeps the costly informative crosses and drops the
    noise fields. At most one noise field may stay: item-level noise is a per-POI constant, so it can carry POI
    identity on a world this small.

    The teacher here is trained without the noise fields. The tiny world's teacher trained on all fields uses
    them (permuting `noise_item_1` moves its logits as much as permuting `distance_km`), and AutoFAS follows its
    teacher's guidance, so with that teacher the search rightly finds them useful for distillation
    (docs/preranking.md). The held-out share is 0.5, as in DARTS: 16 held-out requests (0.1) are too few to
    resolve the costly crosses' benefit."""
    from rankstack.preranking.data import PrerankSplit
    from rankstack.preranking.distill import load_teacher, teacher_logits
    from rankstack.ranking.run import load_run_config, train_ranking

    p, _ = prep
    assert set(NOISE) <= {f.name for f in p.fields}
    run = load_run_config(ROOT / "configs/preranking/teacher_dcnv2.yaml", {
        "data": str(Path(p.config.world) / "ranking"), "tasks": ["click"], "trainer.epochs": 2,
        "features": [f.name for f in p.fields if f.name not in NOISE]})
    train_ranking(run, tmp_path / "teacher")
    teacher = load_teacher(tmp_path / "teacher")
    train = p.splits["train"]
    train = PrerankSplit({**train.tensors, "teacher": teacher_logits(teacher, train)}, train.request_ids,
                         train.fields)
    config = dataclasses.replace(p.config.autofas, derive_fill=False, heldout_frac=0.5, derive_test_z=2.0)
    spec = AutoFASSearch(p.layout, p.fields, config, p.table, 2.0 * _all_fields_ms(p), 1.0, p.n_cand, 0).run(train)
    assert all(name in spec.fields for name in COSTLY)
    assert sum(name in spec.fields for name in NOISE) <= 1
    assert set(spec.benefit_z) == {f.name for f in p.fields}
    assert min(spec.benefit_z[name] for name in COSTLY) >= 2.0
    # Without the test (§4.4 as written) the same search keeps every noise field: the gates never close.
    plain = AutoFASSearch(p.layout, p.fields, dataclasses.replace(config, derive_test_z=0.0), p.table,
                          2.0 * _all_fields_ms(p), 1.0, p.n_cand, 0).run(train)
    assert sum(name in plain.fields for name in NOISE) >= 4


def test_train_autofas_retrains_the_derived_student_within_budget(prep):
    p, out = prep
    budget = 0.6 * _all_fields_ms(p)
    row = train_autofas(p, budget, out / "autofas", log=lambda *_: None)
    assert (out / "autofas" / "derived.json").is_file() and (out / "autofas" / "search_trace.jsonl").is_file()
    assert row["predicted_ms"] <= budget
    assert row["overlap@10"] > p.teacher["test"]["random"]["overlap@10"] + 0.1
    assert set(row["selection"]["fields"][0]) >= {"field", "kept", "cost_ms_per_request", "pi", "kind"}


def test_distillation_moves_the_student_towards_the_teacher(prep):
    p, out = prep
    names = [f.name for f in p.fields]
    student = train_student(p, names, [32], out / "student")
    report = score_report(model_scores(student, p.splits["valid"]), p.splits["valid"])
    assert report["overlap@10"] > p.teacher["valid"]["random"]["overlap@10"] + 0.15
    assert (out / "student" / "train_log.csv").is_file()


def test_cli_train_preranking_writes_the_report(prep, capsys):
    from rankstack.cli import main

    p, out = prep
    args = ["train", "preranking", "--config", str(ROOT / "configs/preranking/autofas_world_tiny.yaml"),
            "--set", f"world={p.config.world}", "--set", f"view={out / 'view'}",
            "--set", f"teacher_run={out / 'teacher'}", "--set", f"latency.table_dir={out / 'latency'}",
            "--set", "autofas.search_steps=40", "--set", "retrain.epochs=1", "--set", "n_cand=30",
            "--budget-ms", "2.0", "--out", str(out / "cli")]
    assert main(args) == 0
    assert "kept:" in capsys.readouterr().out
    for name in ("results.json", "latency_fit.json", "autofas/derived.json", "autofas/selection.json"):
        assert (out / "cli" / name).is_file()
    assert main(["train", "preranking", "--config", str(ROOT / "configs/preranking/autofas_world_tiny.yaml"),
                 "--set", f"world={p.config.world}", "--out", str(out / "cli2")]) == 2  # no budget: a clear error
