"""The TaoSR1 relevance model in the serving cascade (relevance.md §3.4, issue 8): export, start-up checks, CumPT tiers
equal to the run's own scorer, serve-time prompts equal to the training prompts, and the rationale on request only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from rankstack.cli import main  # noqa: E402
from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance import train_relevance  # noqa: E402
from rankstack.relevance.cumpt import CALIBRATION_FILE, RelevanceScorer, cumpt_tiers, expected_tier  # noqa: E402
from rankstack.relevance.data import load_split  # noqa: E402
from rankstack.serving.app import create_app  # noqa: E402
from rankstack.serving.artifacts import export_relevance  # noqa: E402
from rankstack.serving.cascade import Cascade, CascadeConfig, Context, StageBudgets, load_cascade_config  # noqa: E402
from rankstack.serving.stages import relevance_rules  # noqa: E402
from tests._serving import write_tiny_run  # noqa: E402

SFT_TINY = Path(__file__).resolve().parents[1] / "configs" / "relevance" / "sft_tiny.yaml"
BUDGETS = {"feed": StageBudgets(120, 60), "search": StageBudgets(120, 60), "max_k": 50}
QUERY = "sushi with wifi"


@pytest.fixture(scope="module")
def relevance_run(tiny_world_dir, tmp_path_factory) -> Path:
    """A label-first SFT run of two steps on the tiny city (rule texts in the prompt): wiring, not quality."""
    out = tmp_path_factory.mktemp("serving-relevance") / "sft"
    train_relevance("sft", SFT_TINY, {"data.world_preset": None, "data.dataset": str(tiny_world_dir / "relevance"),
                                      "data.max_train_examples": 16, "data.max_eval_examples": 4,
                                      "training.max_steps": 2, "training.logging_steps": 1}, out)
    return out


@pytest.fixture(scope="module")
def run_dir(tiny_world_dir, relevance_run, tmp_path_factory) -> Path:
    """A tiny HeMix run exported with the relevance run (`export --relevance`; β tuned on dev at export)."""
    run = write_tiny_run(tiny_world_dir, tmp_path_factory.mktemp("serving-relevance-run") / "run")
    assert main(["export", "--run", str(run), "--relevance", str(relevance_run)]) == 0
    return run


@pytest.fixture(scope="module")
def cascade(run_dir) -> Cascade:
    return Cascade.load(run_dir, config=CascadeConfig(**BUDGETS))


@pytest.fixture(scope="module")
def run_scorer(relevance_run, tiny_world_dir) -> RelevanceScorer:
    """The relevance run's own scorer, calibrated on the dev split as the export does when a run has no β."""
    scorer = RelevanceScorer.from_run(relevance_run)
    scorer.calibrate(load_split(tiny_world_dir / "relevance", "valid"))
    return scorer


def test_export_copies_the_model_unpickled_with_the_dev_tuned_beta(run_dir, relevance_run, run_scorer):
    served = run_dir / "serving" / "relevance"
    manifest = json.loads((run_dir / "serving" / "manifest.json").read_text())
    files = sorted(str(p.relative_to(served)) for p in served.rglob("*") if p.is_file())
    assert {"model.safetensors", "config.json", "tokenizer.json", "relevance.json", "rules.json"} <= set(files)
    assert (relevance_run / "model" / "training_args.bin").is_file()  # the run has a pickle; the export leaves it
    assert all(p.endswith((".json", ".safetensors", ".jinja")) for p in files), files
    assert all(f"relevance/{p}" in manifest["files"] for p in files)
    entry = manifest["relevance"]
    assert entry["variant"] == "label_first" and entry["stage"] == "sft" and "tuned at export" in entry["beta_source"]
    assert entry["beta"] == run_scorer.beta


def test_a_run_with_a_tuned_beta_exports_that_beta(relevance_run, tmp_path):
    copy = tmp_path / "sft"
    shutil.copytree(relevance_run, copy)
    (copy / CALIBRATION_FILE).write_text(json.dumps({"beta": 0.61}))
    entry = export_relevance(copy, tmp_path / "out")
    assert entry["beta"] == 0.61 and entry["beta_source"].endswith(CALIBRATION_FILE)


def _check_tiers(client: TestClient, cascade: Cascade, scorer: RelevanceScorer, beta: float) -> set[int]:
    """A search answer's tiers and E[k] equal the run scorer's on the ranked pairs at `beta`; returns the tiers."""
    r = client.post("/v1/search", json={"user_id": 17, "query": QUERY, "k": 50})
    assert r.status_code == 200, r.text
    answer = r.json()
    stage = answer["funnel"][-1]
    assert (stage["stage"], stage["method"], stage["baseline"]) == ("relevance", "cumpt", False)
    # The pairs the ranker scored: the pre-ranker's survivors (retrieval and pre-ranking are deterministic).
    parsed = cascade.parser.parse(QUERY)
    request = cascade.resolve(17, Context(), parsed.category_l2)
    retrieved = cascade.search_retriever.retrieve(request, parsed, 120).top(120)
    pois = cascade.preranker.prerank(request, retrieved, 60).pois
    probs = scorer.score_records(cascade.relevance.records(parsed, pois))
    tiers = dict(zip((pois + 1).tolist(), cumpt_tiers(probs, beta).tolist()))
    expected = dict(zip((pois + 1).tolist(), expected_tier(probs).tolist()))
    assert stage["candidates_in"] == 60 and stage["candidates_out"] == sum(t > 1 for t in tiers.values())
    assert len(answer["results"]) == min(50, stage["candidates_out"])
    for result in answer["results"]:
        assert result["relevance"]["tier"] == tiers[result["poi_id"]]
        assert result["relevance"]["expected_tier"] == pytest.approx(expected[result["poi_id"]], abs=1e-4)
        assert result["relevance"].get("rationale") is None
    pages = [x["relevance"]["page"] for x in answer["results"]]
    assert pages == sorted(pages, key=["Good", "Mid"].index)
    return set(tiers.values())


def test_search_tiers_equal_the_relevance_runs_scorer(cascade, run_dir, run_scorer):
    client = TestClient(create_app(cascade), raise_server_exceptions=False)
    assert client.get("/healthz").json()["stages"]["relevance"]["method"] == "cumpt"
    _check_tiers(client, cascade, run_scorer, run_scorer.beta)  # the exported β is the dev-tuned one
    # The two-step model gives every pair nearly the same distribution, so at its tuned β the tiers may all agree;
    # a β between the candidates' tails at tier 3 splits them into Good and Mid (the override path, same scorer).
    parsed = cascade.parser.parse(QUERY)
    probs = cascade.relevance.tier_probabilities(parsed, np.arange(cascade.tables.n_pois))
    split = float(np.median(probs[:, 2:].sum(axis=1)))
    other = Cascade.load(run_dir, config=CascadeConfig(relevance_beta=split, **BUDGETS))
    seen = _check_tiers(TestClient(create_app(other)), other, run_scorer, split)
    assert len(seen) > 1, seen


def test_served_pairs_get_the_prompts_the_model_was_trained_on(cascade, run_scorer, tiny_world_dir):
    """Train/serve skew check: a world pair served online (its query text, its POI) gets exactly its training prompt
    whenever the parser retrieves the pair's rules, which it does for nearly every tiny-world query."""
    records = load_split(tiny_world_dir / "relevance", "valid")
    same_rules = [r for r in records if relevance_rules(cascade.parser.parse(r.query)) == r.rules]
    assert len(same_rules) >= 0.95 * len(records)
    for record in same_rules:
        served = cascade.relevance.records(cascade.parser.parse(record.query), np.array([int(record.item_id) - 1]))
        assert run_scorer.prompts(served) == run_scorer.prompts([record]), record.pair_id


def test_the_rationale_is_decoded_only_when_asked(cascade, run_scorer, monkeypatch):
    stage = cascade.relevance
    calls = []
    explain = stage.scorer.explain
    monkeypatch.setattr(stage.scorer, "explain", lambda *a, **kw: calls.append(a) or explain(*a, **kw))
    plain = cascade.search(17, QUERY, k=2)
    assert not calls and all("rationale" not in x["relevance"] for x in plain["results"])
    asked = cascade.search(17, QUERY, k=2, explain=True)
    assert len(calls) == len(asked["results"]) == 2
    parsed = cascade.parser.parse(QUERY)
    top = asked["results"][0]
    item = stage.items[top["poi_id"] - 1]
    assert top["relevance"]["rationale"] == run_scorer.explain(QUERY, item, relevance_rules(parsed))


def test_relevance_config_picks_the_stage_and_beta(run_dir, tmp_path):
    lexical = Cascade.load(run_dir, config=CascadeConfig(relevance="lexical", **BUDGETS))
    assert lexical.stage_methods()["relevance"]["method"] == "lexical_rules"
    # β = 1 puts every pair in tier 1 (Bad), so the override visibly applies to the TaoSR1 stage
    strict = Cascade.load(run_dir, config=CascadeConfig(relevance_beta=1.0, **BUDGETS))
    answer = strict.search(17, QUERY, k=10)
    assert answer["funnel"][-1]["method"] == "cumpt" and answer["results"] == []
    # the tail from tier 1 counts as reached even when a float32 softmax sums just below 1 (it fell to tier 4)
    below_one = np.array([[0.25, 0.25, 0.25, 0.25 - 3e-8]], dtype=np.float32)
    assert cumpt_tiers(below_one, 1.0).tolist() == [1]
    path = tmp_path / "serving.yaml"
    path.write_text("relevance: bert\n")
    with pytest.raises(ConfigError, match="relevance"):
        load_cascade_config(path)


def _corrupt(run_dir: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    edit(copy / "serving")
    return copy


def _drop_beta(serving: Path) -> None:
    manifest = json.loads((serving / "manifest.json").read_text())
    del manifest["relevance"]["beta"]
    (serving / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("name", "edit"), [
    ("relevance/model.safetensors", lambda d: (d / "relevance" / "model.safetensors").write_bytes(b"\0" * 64)),
    ("relevance/tokenizer.json", lambda d: (d / "relevance" / "tokenizer.json").unlink()),
    ("relevance/rules.json", lambda d: (d / "relevance" / "rules.json").write_text("{}")),
    ("manifest.json", _drop_beta),
])
def test_a_corrupt_relevance_artifact_fails_start_up_naming_it(run_dir, tmp_path, name, edit):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        Cascade.load(_corrupt(run_dir, tmp_path, edit))


def test_cumpt_without_an_exported_model_fails_start_up(run_dir, tmp_path):
    bare = _corrupt(run_dir, tmp_path, lambda d: None)
    assert main(["export", "--run", str(bare)]) == 0
    assert Cascade.load(bare).stage_methods()["relevance"]["method"] == "lexical_rules"  # auto: the baseline
    with pytest.raises(ConfigError, match=r"relevance.*relevance\.json"):
        Cascade.load(bare, config=CascadeConfig(relevance="cumpt"))


def test_a_think_first_run_is_refused_at_export(run_dir, relevance_run, tmp_path, capsys):
    think = tmp_path / "think"
    shutil.copytree(relevance_run, think)
    meta_path = think / "model" / "relevance.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "variant": "think_first"}))
    run = _corrupt(run_dir, tmp_path, lambda d: None)
    before = (run / "serving" / "manifest.json").read_text()
    assert main(["export", "--run", str(run), "--relevance", str(think)]) == 2
    assert "think-first" in capsys.readouterr().err
    assert (run / "serving" / "manifest.json").read_text() == before  # the previous export is left as it was
    with pytest.raises(ConfigError, match="think-first"):
        RelevanceScorer.from_run(think)
