"""TaoSR1 stage 2 (relevance.md §3.2): the pass@N pair builder on hand-built samples, the generation metrics, and a
tiny SFT → DPO run that lowers the DPO loss and moves the parameters."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance import dpo, train_relevance  # noqa: E402
from rankstack.relevance.data import RelevanceRecord, load_split, render_completion  # noqa: E402
from rankstack.relevance.dpo import DPOTrainingConfig, SamplingConfig, build_pairs, hinted_oracles  # noqa: E402
from rankstack.relevance.evaluate import generation_report, is_correct  # noqa: E402
from rankstack.relevance.format import parse_output  # noqa: E402
from rankstack.relevance.sft import load_checkpoint  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "relevance"
TEMPLATES = {name: 0 for name in ("Query", "Item", "Category", "Attributes", "Verdict")}


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir / "relevance"


@pytest.fixture(scope="module")
def record(world: Path) -> RelevanceRecord:
    """A tier-2 pair whose category verdict is `match` (so a corrupted verdict still parses)."""
    return next(r for r in load_split(world, "train") if r.label == 2 and r.gold and r.gold.category == "match")


def with_label(text: str, label: int) -> str:
    return f"{label}{text[1:]}"


def wrong_category(text: str) -> str:
    """The same answer with a wrong category verdict: well-formed, same label, one step wrong."""
    lines = text.split("\n")
    lines[3] = lines[3].replace("match", "mismatch", 1)
    return "\n".join(lines)


def test_self_correction_pairs_the_best_correct_with_the_most_confident_wrong(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    sloppy = wrong_category(gold)
    samples = [sloppy, with_label(gold, 3), gold, with_label(gold, 1), "2\n[Query] cut off"]
    probs = np.array([0.1, 0.2, 0.3, 0.4])  # p(3) > p(1) > p(no label) = 0
    pairs = build_pairs(record, samples, probs, max_pairs=2)
    assert [p.source for p in pairs] == ["self", "self"]
    # chosen by step accuracy: the fully right answer first, then the one with a wrong category verdict
    assert [p.chosen for p in pairs] == [gold, sloppy]
    assert [p.step_accuracy for p in pairs] == [1.0, pytest.approx(5 / 6)]
    assert [p.rejected for p in pairs] == [with_label(gold, 3), with_label(gold, 1)]
    # at most max_pairs, and the malformed sample only once the confident ones are used
    assert [p.rejected for p in build_pairs(record, samples, probs, max_pairs=3)][-1] == "2\n[Query] cut off"


def test_min_step_accuracy_drops_correct_samples_with_wrong_steps_for_the_oracle(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    sloppy = wrong_category(gold)  # the right label, one of the six verifier steps wrong
    samples = [sloppy, with_label(gold, 3)]
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    assert [p.source for p in build_pairs(record, samples, probs, min_step_accuracy=5 / 6)] == ["self"]
    pairs = build_pairs(record, samples, probs, min_step_accuracy=1.0, seed=3)
    assert [(p.source, p.chosen, p.step_accuracy) for p in pairs] == [("oracle", render_completion(record, seed=3), None)]
    assert [p.chosen for p in build_pairs(record, [gold, *samples], probs, min_step_accuracy=1.0)] == [gold]
    no_gold = dataclasses.replace(record, gold=None)  # only the label is checked: the sloppy answer is right
    assert [p.chosen for p in build_pairs(no_gold, samples, probs, min_step_accuracy=1.0)] == [sloppy]
    with pytest.raises(ConfigError, match="chosen_min_step_accuracy"):
        DPOTrainingConfig(chosen_min_step_accuracy=1.5)


def test_all_wrong_uses_the_gold_conditioned_oracle(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    samples = [with_label(gold, 4), with_label(gold, 4), with_label(gold, 1)]
    pairs = build_pairs(record, samples, np.array([0.25, 0.25, 0.25, 0.25]), max_pairs=3, seed=3)
    assert [p.source for p in pairs] == ["oracle", "oracle"]  # the two identical samples give one pair
    assert {p.chosen for p in pairs} == {render_completion(record, seed=3)}
    assert [p.rejected for p in pairs] == [with_label(gold, 4), with_label(gold, 1)]


def test_without_gold_steps_all_wrong_takes_the_hinted_answer_or_gives_no_pair(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    no_gold = dataclasses.replace(record, gold=None)  # an ESCI / WANDS pair: a label, no gold steps
    samples = [with_label(gold, 4), with_label(gold, 1)]
    probs = np.full(4, 0.25)
    assert build_pairs(no_gold, samples, probs) == []
    pairs = build_pairs(no_gold, samples, probs, hinted=gold)
    assert [(p.source, p.chosen) for p in pairs] == [("hinted", gold), ("hinted", gold)]
    assert build_pairs(no_gold, samples, probs, hinted=with_label(gold, 3)) == []  # a wrong hinted answer is dropped
    # a correct sample of its own wins over the hinted answer
    assert {p.source for p in build_pairs(no_gold, [gold, *samples], probs, hinted=gold)} == {"self"}


def test_hinted_oracles_keep_the_first_correct_answer_that_does_not_quote_the_hint(
        record: RelevanceRecord, monkeypatch: pytest.MonkeyPatch) -> None:
    from rankstack.relevance.tokenizer import train_tokenizer

    gold = render_completion(record, templates=TEMPLATES)
    other = dataclasses.replace(record, pair_id=f"{record.pair_id}-b", label=3, gold=None)
    quoting = gold.replace("[Query]", "[Query] as the hint says,", 1)
    assert is_correct(parse_output(quoting, "label_first"), 2)  # right, but it quotes the hint: not kept
    answers = {2: [with_label(gold, 4), quoting, gold], 3: [with_label(gold, 1), with_label(gold, 2)]}
    seen: list[str] = []

    def fake_generate(model, tokenizer, prompts, num_samples, **kwargs):  # noqa: ANN001, ANN003
        seen.extend(prompts)
        return [answers[2] if "tier is 2." in prompt else answers[3] for prompt in prompts]

    monkeypatch.setattr(dpo, "generate_completions", fake_generate)
    tokenizer = train_tokenizer([gold, quoting], vocab_size=300)
    found = hinted_oracles(None, tokenizer, [dataclasses.replace(record, gold=None), other], {}, "label_first",
                           False, SamplingConfig(num_samples=3), seed=0)
    assert found == [gold, None]
    assert "Hint: the correct tier is 2." in seen[0] and "Hint: the correct tier is 3." in seen[1]


def test_all_correct_gives_no_pair(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    assert build_pairs(record, [gold, gold], np.full(4, 0.25)) == []


def test_generation_report_counts_hallucinations_and_format_failures(record: RelevanceRecord) -> None:
    gold = render_completion(record, templates=TEMPLATES)
    # label 4 while the own verdicts (a violated hard constraint) imply 2: a discriminative hallucination
    outputs = [gold, with_label(gold, 4), "garbage"]
    report = generation_report([record] * 3, outputs)
    assert report["format_failure_rate"] == pytest.approx(1 / 3)
    assert report["hallucination_rate"] == pytest.approx(1 / 2) and report["hallucination_judged"] == 2
    assert report["correct_rate"] == pytest.approx(1 / 3)
    assert report["mean_reward"] == pytest.approx(1 / 3 - 1 / 3)
    assert report["accuracy"] == pytest.approx(1 / 3)
    assert report["step_accuracy/Category"] == pytest.approx(2 / 3)
    assert report["rule_adherence"] == pytest.approx(1 / 2)


@pytest.fixture(scope="module")
def sft_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft-for-dpo")
    train_relevance("sft", CONFIGS / "sft_tiny.yaml", {
        "data.world_preset": None, "data.dataset": str(world), "data.rule_text": False,
        "data.max_train_examples": 32, "data.max_eval_examples": 8, "training.max_steps": 10,
        "training.learning_rate": 5.0e-3, "training.logging_steps": 5}, out)
    return out


def test_dpo_run_lowers_its_loss_against_a_frozen_reference(sft_run: Path, tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"data.max_train_examples": 16, "data.max_eval_examples": 8, "training.max_steps": 6,
                                 "eval.max_new_tokens": 48, "sampling.max_new_tokens": 64}
    metrics = train_relevance("dpo", CONFIGS / "dpo_tiny.yaml", overrides, tmp_path, init=sft_run)
    sampling = metrics["sampling"]
    assert sampling["pairs"] == sampling["pairs_self"] + sampling["pairs_oracle"] + sampling["pairs_hinted"] > 0
    assert sampling["prompts_hinted"] == sampling["pairs_hinted"] == 0  # every city pair has gold steps
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == sampling["pairs"]
    assert sum(sampling["pairs_by_chosen_label"].values()) == sum(sampling["pairs_by_rejected_label"].values()) \
        == sampling["pairs"]
    assert metrics["steps"] == 6 and metrics["max_parameter_change"] > 1e-4
    first, last = metrics["first_logged"], metrics["last_logged"]
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-3)  # the policy starts equal to the reference
    assert last["loss"] < first["loss"] - 0.1 and last["rewards/margins"] > 0
    model, _, meta = load_checkpoint(tmp_path / "model")
    assert meta["stage"] == "dpo" and meta["parent"] == str(sft_run / "model")
    assert json.loads((tmp_path / "metrics.json").read_text())["after"] == metrics["after"]
    # the reference is the SFT checkpoint, unchanged on disk
    sft_model, _, _ = load_checkpoint(sft_run / "model")
    assert any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), sft_model.parameters()))


def test_nll_weight_adds_the_chosen_answers_nll_to_the_dpo_loss(sft_run: Path, tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"data.max_train_examples": 8, "data.max_eval_examples": 4, "training.max_steps": 1,
                                 "training.logging_steps": 1, "eval.generate": False, "sampling.max_new_tokens": 48}
    first_loss = {}
    for weight in (0.0, 0.5, 1.0):
        metrics = train_relevance("dpo", CONFIGS / "dpo_tiny.yaml", {**overrides, "training.nll_weight": weight},
                                  tmp_path / str(weight), init=sft_run)
        first_loss[weight] = metrics["first_logged"]["loss"]
    # step 1 sees the same pairs with the policy equal to the reference: the DPO term is log 2 in every run, and
    # the weight scales the chosen answers' mean token NLL on top of it
    assert first_loss[0.0] == pytest.approx(np.log(2), abs=1e-3)
    assert first_loss[0.5] - np.log(2) > 0.05
    assert first_loss[1.0] - np.log(2) == pytest.approx(2 * (first_loss[0.5] - np.log(2)), rel=1e-3)
    with pytest.raises(ConfigError, match="training.nll_weight"):
        train_relevance("dpo", CONFIGS / "dpo_tiny.yaml", {"training.nll_weight": -1}, tmp_path / "bad",
                        init=sft_run)


def test_dpo_needs_an_init_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--init"):
        train_relevance("dpo", CONFIGS / "dpo_tiny.yaml", {}, tmp_path)
    with pytest.raises(ConfigError, match="holds no relevance checkpoint"):
        train_relevance("dpo", CONFIGS / "dpo_tiny.yaml", {}, tmp_path, init=tmp_path)


def test_cli_trains_dpo_from_an_init_run(sft_run: Path, tmp_path: Path) -> None:
    from rankstack.cli import main

    settings = ["data.max_train_examples=4", "data.max_eval_examples=4", "training.max_steps=1",
                "sampling.max_new_tokens=16", "eval.generate=false"]
    assert main(["train", "relevance", "--stage", "dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), "--init",
                 str(sft_run), "--out", str(tmp_path), *[a for s in settings for a in ("--set", s)]]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["init"] == str(sft_run / "model")
    assert main(["train", "relevance", "--stage", "sft", "--config", str(CONFIGS / "sft_tiny.yaml"), "--init",
                 str(sft_run), "--out", str(tmp_path / "again")]) == 2
