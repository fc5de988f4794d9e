"""`rankstack demo` (issue 8, item 5) end to end on the tiny world at minimal budgets: every stage, the report and
its plots, the exported artifacts served by the app, and the skip of finished stages on a re-run.

The stage budgets are those of the stage tests' tiny runs (tests/_serving.py): they check the wiring, not quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from rankstack.cli import main
from rankstack.config import load_yaml, read_yaml
from rankstack.demo import DEFAULT_CONFIG, RELEVANCE_SERVE_MARGIN, STAGES, config_path, load_demo_config

TINY_STAGES = {
    "world": {"size": "tiny", "seed": 0},
    "ranking": {"config": "configs/ranking/dlrm_world_small.yaml", "overrides": {
        "model.args": {"embedding_dim": 8, "top_mlp": [32, 16], "tower": [16]}, "batch_size": 256,
        "eval_max_rows": 2000, "trainer.epochs": 1, "trainer.max_steps": 8, "trainer.eval_every_steps": 8,
        "trainer.checkpoint_every_steps": 8, "trainer.progress_bar": False, "trainer.tensorboard": False}},
    "preranking": {"config": "configs/preranking/autofas_world_tiny.yaml", "budget_ms": 3.0, "overrides": {
        "n_cand": 30, "requests": {"train": 80, "valid": 20, "test": 20}, "teacher_epochs": 1,
        "autofas": {"n_layers": 2, "widths": [32, 16], "search_steps": 40, "batch_requests": 8},
        "retrain": {"epochs": 1, "batch_requests": 8}, "calibration_rounds": 0}},
    "retrieval": {"config": "configs/retrieval/city_tiny.yaml", "overrides": {
        "lm.decode.max_eval_samples": 16, "semantic_ids.contrastive.enabled": False, "lm.cpt.enabled": False,
        "lm.sft.max_examples": 128, "lm.sft.training.num_epochs": 1.0, "sasrec.enabled": False,
        "lm.decode.device": "cpu", "lm.decode.num_beams": 10}},
    "relevance": {"config": "configs/relevance/sft_tiny.yaml", "eval_examples": 16, "overrides": {
        "data.rule_text": False, "data.max_train_examples": 16, "data.max_eval_examples": 8,
        "training.max_steps": 4}},
}


def _demo(config: Path, out: Path, *flags: str) -> int:
    return main(["demo", "--config", str(config), "--out", str(out), "--no-serve", *flags])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    config = read_yaml(DEFAULT_CONFIG) | TINY_STAGES
    config["preranking"]["overrides"]["latency"] = {"repeats": 5, "warmup": 2, "table_dir": str(root / "latency")}
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = root / "out"
    assert _demo(path, out) == 0
    return path, out


def test_the_demo_config_and_its_stage_overrides_load():
    """configs/demo.yaml and each stage config with the demo's overrides validate (no training)."""
    from rankstack.preranking.run import load_config
    from rankstack.ranking.run import load_run_config
    from rankstack.relevance.sft import SFTStageConfig
    from rankstack.retrieval.run import load_run_config as load_retrieval_config

    config = load_demo_config()
    assert config.world.size == "small" and config.serve.host == "127.0.0.1"
    load_run_config(config_path(config.ranking.config), {**config.ranking.overrides, "data": "w/ranking"})
    assert load_config(config_path(config.preranking.config), config.preranking.overrides).teacher_epochs >= 1
    load_retrieval_config(config_path(config.retrieval.config), {**config.retrieval.overrides, "data": "w/next_poi"})
    sft = load_yaml(SFTStageConfig, config_path(config.relevance.config),
                    {**config.relevance.overrides, "data.dataset": "w/relevance", "data.world_preset": None})
    assert sft.data.variant == "label_first"
    with pytest.raises(Exception, match="unknown key"):
        load_demo_config(overrides={"ranking.budget": 1})


def test_report_holds_every_stage_beside_its_baselines_with_plots(demo):
    _, out = demo
    report = (out / "report.md").read_text()
    for heading in ("## Timings", "## Ranking", "## Pre-ranking (AutoFAS)", "## Retrieval (GeoGR)",
                    "## Relevance (label-first SFT)", "## Export"):
        assert heading in report
    for column in ("popularity (item rate)", "Bayes-optimal", "teacher", "random", "geo-nearest popular",
                   "oracle (true next-visit distribution)", "majority class", "SFT, CumPT"):
        assert column in report, column
    assert "**total**" in report
    for name in ("timings", "ranking", "preranking", "retrieval", "relevance"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name}.png)" in report
    ranking = json.loads((out / "stages" / "ranking.json").read_text())
    dlrm, bayes = ranking["series"]["dlrm"], ranking["series"]["Bayes-optimal"]
    assert 0.0 < dlrm["click_auc"] <= bayes["click_auc"] <= 1.0
    relevance = json.loads((out / "stages" / "relevance.json").read_text())
    assert 0.0 <= relevance["series"]["majority class"]["macro_f1"] < 1.0
    assert all(json.loads((out / "stages" / f"{s}.json").read_text())["wall_s"] > 0 for s in STAGES)


def test_the_exported_cascade_serves_every_trained_stage(demo):
    from rankstack.serving.app import create_app
    from rankstack.serving.cascade import Cascade, CascadeConfig, StageBudgets

    _, out = demo
    cascade = Cascade.load(out / "dlrm", config=CascadeConfig(feed=StageBudgets(120, 60),
                                                                 search=StageBudgets(120, 60), max_k=50))
    client = TestClient(create_app(cascade), raise_server_exceptions=False)
    assert client.get("/").status_code == 200
    answer = client.post("/v1/feed", json={"user_id": 17, "context": {"hour": 12}, "k": 5})
    assert answer.status_code == 200, answer.text
    methods = [(s["stage"], s["method"], s["baseline"]) for s in answer.json()["funnel"]]
    assert methods == [("retrieval", "geogr", False), ("preranking", "autofas", False), ("ranking", "dlrm", False)]
    assert len(answer.json()["results"]) == 5
    # search tiers come from the relevance model only when it beat the majority class by the serving margin
    relevance = json.loads((out / "stages" / "relevance.json").read_text())["series"]
    served = relevance["SFT, CumPT"]["macro_f1"] >= relevance["majority class"]["macro_f1"] + RELEVANCE_SERVE_MARGIN
    search = client.post("/v1/search", json={"user_id": 17, "query": "coffee", "context": {"hour": 12}, "k": 5})
    assert search.status_code == 200, search.text
    stage = next(s for s in search.json()["funnel"] if s["stage"] == "relevance")
    assert (stage["method"], stage["baseline"]) == (("cumpt", False) if served else ("lexical_rules", True))


def test_a_rerun_skips_finished_stages_and_redoes_the_rest(demo, capsys):
    config, out = demo
    weights = out / "dlrm" / "best.safetensors"
    sft = out / "relevance" / "model" / "model.safetensors"
    stamps = {path: path.stat().st_mtime_ns for path in (weights, sft)}
    (out / "stages" / "export.json").unlink()  # as if killed during the export
    assert _demo(config, out) == 0
    printed = capsys.readouterr().out
    for stage in STAGES[:-1]:
        assert f"[demo] {stage}: finished in an earlier run" in printed, stage
    assert "[demo] export: done" in printed and (out / "stages" / "export.json").is_file()
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())
    assert "finished in an earlier run" in (out / "report.md").read_text()


def test_the_export_serves_the_relevance_model_only_above_the_margin(demo, tmp_path):
    from rankstack.demo import run_export
    from rankstack.serving.cascade import Cascade

    _, out = demo
    ranking = shutil.copytree(out / "dlrm", tmp_path / "dlrm", ignore=shutil.ignore_patterns("serving"))
    runs = (ranking, out / "world", out / "retrieval", out / "preranking", out / "relevance")
    for model, served in ((0.30, False), (0.40, True)):
        record = {"series": {"SFT, CumPT": {"macro_f1": model}, "majority class": {"macro_f1": 0.30}}}
        notes = run_export(*runs, record)["notes"]
        assert ("is served" in notes[-1]) == served, notes
        assert Cascade.load(ranking).relevance.name == ("cumpt" if served else "lexical_rules")
