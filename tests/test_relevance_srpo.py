"""TaoSR-SHE / SRPO (relevance.md §4): step token spans, hybrid step rewards, critical weights and per-token
advantages on a hand-built group, the step RM's scoring, the diversified filter and the curriculum, and a tiny SRPO
run (with a trained step RM) that changes the policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.relevance import train_relevance  # noqa: E402
from rankstack.relevance.data import (  # noqa: E402
    RelevanceRecord,
    load_rule_table,
    load_split,
    render_completion,
    render_sections,
)
from rankstack.relevance.evaluate import is_correct  # noqa: E402
from rankstack.relevance.format import CATEGORY_VERDICTS, STEPS, parse_output  # noqa: E402
from rankstack.relevance.sft import load_checkpoint  # noqa: E402
from rankstack.relevance.srpo import (  # noqa: E402
    CurriculumStage,
    PromptDiversity,
    critical_weights,
    curriculum_indices,
    diversified_mask,
    hybrid_step_rewards,
    outcome_advantages,
    rebalance_cells,
    stage_steps,
    step_advantages,
    token_advantages,
    verifier_visible,
)
from rankstack.relevance.steps import (  # noqa: E402
    StepJudge,
    StepRMConfig,
    balance_answers,
    judge_agreement,
    judge_examples,
    judge_message,
    step_token_index,
    train_step_judge,
)
from rankstack.relevance.tokenizer import train_tokenizer, training_corpus  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "relevance"
S = {name: i for i, name in enumerate(STEPS)}
TEMPLATES = {"Query": 0, "Item": 0, "Category": 0, "Attributes": 0, "Verdict": 0}


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir / "relevance"


@pytest.fixture(scope="module")
def records(world: Path) -> list[RelevanceRecord]:
    return load_split(world, "train")


@pytest.fixture(scope="module")
def tokenizer(records: list[RelevanceRecord], world: Path):
    return train_tokenizer(training_corpus(records[:300], load_rule_table(world)), 1024, 2)


@pytest.fixture(scope="module")
def record(records: list[RelevanceRecord]) -> RelevanceRecord:
    """A pair with gold steps, at least one constraint, and a label outside {3, 4}'s confusion."""
    return next(r for r in records if r.gold is not None and r.gold.constraints and r.label in (1, 2))


def completion(record: RelevanceRecord, label: int | None = None, **lines: str) -> str:
    """The gold completion with the label and some section lines replaced."""
    sections = render_sections(record, TEMPLATES)
    names = ["Query", "Item", "Category", "Attributes", "Verdict"]
    body = [lines.get(n, line) for n, line in zip(names, sections)]
    return "\n".join([str(record.label if label is None else label), *body])


def wrong_category(record: RelevanceRecord) -> str:
    other = next(v for v in CATEGORY_VERDICTS if v != record.gold.category)
    return f"[Category] {other}: the item is {record.item_category}, the query wants it"


def wrong_verdict(record: RelevanceRecord) -> str:
    other = "R4" if record.gold.decisive_rule != "R4" else "R1"
    return f"[Verdict] {other}: the category fits and every constraint holds, so 4."


# ------------------------------------------------------------------------------------------------------------
# Step spans


def test_each_token_belongs_to_the_section_it_spells(record: RelevanceRecord, tokenizer) -> None:
    text = render_completion(record, seed=3)
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    parsed = parse_output(text)
    index = step_token_index(tokenizer, ids, parsed)
    assert index[0] == S["label"] and tokenizer.decode(ids[:1]) == str(record.label)
    assert index[-1] == -1  # eos carries no step
    for step, (start, end) in parsed.spans.items():
        spelled = tokenizer.decode([t for t, s in zip(ids, index) if s == S[step]])
        assert spelled.strip() == text[start:end].strip(), step
    newlines = [i for i, t in enumerate(ids) if tokenizer.decode([t]) == "\n"]
    assert newlines and all(index[i] == -1 for i in newlines)


# ------------------------------------------------------------------------------------------------------------
# Hybrid step rewards, critical weights, advantages


def test_hybrid_rewards_use_the_verifier_where_visible_and_the_judge_elsewhere(record: RelevanceRecord) -> None:
    text = completion(record, Category=wrong_category(record))
    parsed = parse_output(text)
    judged = {"Query": -1, "Item": 0, "Category": 1, "Attributes": 1, "Verdict": 1}
    visible, source = hybrid_step_rewards(parsed, record, visible=True, judged=judged)
    assert visible.tolist() == [1, 1, 1, -1, 1, 1] and set(source) == {"v"}
    hidden, source = hybrid_step_rewards(parsed, record, visible=False, judged=judged)
    assert hidden.tolist() == [1, -1, 0, 1, 1, 1] and source.tolist() == ["v", "m", "m", "m", "m", "m"]
    no_verdict = parse_output(text.rsplit("\n", 1)[0])  # a missing section scores −1 without asking the judge
    rewards, source = hybrid_step_rewards(no_verdict, record, visible=False, judged={})
    assert rewards[S["Verdict"]] == -1 and source[S["Verdict"]] == "v" and rewards[S["Query"]] == 0
    no_gold = RelevanceRecord(**{**record.__dict__, "gold": None})
    rewards, source = hybrid_step_rewards(parsed, no_gold, visible=True)
    assert rewards.tolist() == [1, 0, 0, 0, 0, 0] and source.tolist() == ["v", "-", "-", "-", "-", "-"]


def test_verifier_visibility_is_a_stable_share_of_pairs() -> None:
    ids = [f"p{i}" for i in range(2000)]
    shown = [verifier_visible(p, 0.5, seed=0) for p in ids]
    assert 0.45 < np.mean(shown) < 0.55 and shown == [verifier_visible(p, 0.5, seed=0) for p in ids]
    assert not any(verifier_visible(p, 0.0) for p in ids) and all(verifier_visible(p, 1.0) for p in ids)


def test_critical_weights_stress_the_first_wrong_step() -> None:
    #            label Query Item Category Attributes Verdict
    rewards = np.array([[1, 1, 1, 1, 1, 1],          # correct, all steps right
                        [-1, 1, -1, -1, 1, -1],      # wrong: first wrong section is Item
                        [-1, 1, 1, 1, 1, 1],         # wrong label over right reasoning: the label is the first wrong
                        [1, 1, 0, 1, 1, 1]])         # correct, the judge unsure about Item
    weights = critical_weights(rewards, np.array([True, False, False, True]))
    assert weights[1].tolist() == [0.5, 0.5, 1.0, 0.5, 0.5, 0.5]
    assert weights[2].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    # a correct step of a correct rollout that another rollout got wrong: label, Item, Category, Verdict
    assert weights[0].tolist() == [1.0, 0.5, 1.0, 1.0, 0.5, 1.0]
    assert weights[3].tolist() == [1.0, 0.5, 0.0, 1.0, 0.5, 1.0]


def test_step_advantages_are_group_z_scores_per_step() -> None:
    rewards = np.array([[1, 1], [-1, 1], [1, 1], [1, 1]])
    adv = step_advantages(rewards)
    assert adv[:, 1].tolist() == [0.0] * 4  # no spread, no signal
    assert adv[1, 0] == pytest.approx(-1.5 / (1 + 1e-4)) and adv[0, 0] == pytest.approx(0.5 / (1 + 1e-4))
    out = outcome_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    assert out[4:].tolist() == [0.0] * 4 and out[0] == pytest.approx(0.5 / (np.std([1, 0, 0, 1], ddof=1) + 1e-4))


def test_token_advantages_add_the_step_term_on_its_tokens_and_clamp() -> None:
    outcome = torch.tensor([1.0, -1.0])
    terms = torch.zeros(2, len(STEPS))
    terms[0, S["Category"]], terms[1, S["label"]], terms[1, S["Verdict"]] = 2.0, -1.0, 10.0
    steps = torch.tensor([[0, -1, 3, 3, -1, 5], [0, -1, 1, 5, -1, -1]])
    adv = token_advantages(outcome, terms, steps, lam=0.5)
    assert adv[0].tolist() == [1.0, 1.0, 2.0, 2.0, 1.0, 1.0]
    assert adv[1].tolist() == [-1.5, -1.0, -1.0, 2.0, -1.0, -1.0]  # 10·0.5 − 1 clamped to 2
    assert torch.equal(token_advantages(outcome, terms, steps, lam=0.0), outcome.unsqueeze(1).expand(2, 6))


def test_a_hand_built_group_puts_the_largest_penalty_on_the_first_wrong_step(record: RelevanceRecord,
                                                                            tokenizer) -> None:
    wrong_label = 4 if record.label != 4 else 1
    texts = [completion(record),
             completion(record, wrong_label, Category=wrong_category(record), Verdict=wrong_verdict(record)),
             completion(record),
             completion(record, wrong_label)]  # right reasoning, wrong label: the label is its first wrong step
    parsed = [parse_output(t) for t in texts]
    correct = np.array([is_correct(p, record.label) for p in parsed])
    assert correct.tolist() == [True, False, True, False]
    step_rewards = np.stack([hybrid_step_rewards(p, record, visible=True)[0] for p in parsed])
    terms = critical_weights(step_rewards, correct) * step_advantages(step_rewards)
    ids = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    width = max(len(i) for i in ids)
    token_steps = torch.full((4, width), -1, dtype=torch.long)
    for i, (row, p) in enumerate(zip(ids, parsed)):
        token_steps[i, :len(row)] = torch.from_numpy(step_token_index(tokenizer, row, p))
    outcome = outcome_advantages(torch.tensor(correct, dtype=torch.float32), 4)
    adv = token_advantages(outcome, torch.as_tensor(terms, dtype=torch.float32), token_steps, lam=0.5)
    shift = adv[1] - outcome[1]
    on = {step: shift[token_steps[1] == S[step]] for step in STEPS}
    assert (on["Category"] < 0).all() and torch.allclose(on["Category"], on["Category"][0].expand_as(on["Category"]))
    # the first wrong step (Category, c = 1) gets twice the penalty of the later wrong Verdict (c = 0.5)
    assert on["Category"][0].item() == pytest.approx(2 * on["Verdict"][0].item())
    label_shift = [(adv[i] - outcome[i])[token_steps[i] == S["label"]].item() for i in (1, 3)]
    assert label_shift[1] < 0 and label_shift[1] == pytest.approx(2 * label_shift[0])
    assert (on["Query"] == 0).all() and (on["Item"] == 0).all()  # steps every rollout got right: no step signal
    assert (shift[token_steps[1] == -1] == 0).all()  # newlines and eos: the outcome advantage only
    assert (adv[0][token_steps[0] == S["Category"]] > outcome[0]).all()  # right where another rollout went wrong


# ------------------------------------------------------------------------------------------------------------
# Step RM


def tiny_lm(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                        bos_token_id=None))


def test_judge_reads_the_answer_up_to_its_step_and_scores_y_against_n(record: RelevanceRecord, tokenizer,
                                                                     world: Path) -> None:
    rules = load_rule_table(world)
    text = completion(record, Category=wrong_category(record))
    parsed = parse_output(text)
    message = judge_message(record, rules, "label_first", True, text, parsed, "Category")
    assert text[:parsed.spans["Category"][1]] in message and "[Attributes]" not in message
    examples = judge_examples(tokenizer, [record], [[text]], rules, "label_first", True)
    assert [(e["step"], e["completion"]) for e in examples] == [
        ("Query", "Y"), ("Item", "Y"), ("Category", "N"), ("Attributes", "Y"), ("Verdict", "Y")]
    judge = StepJudge(tiny_lm(tokenizer), tokenizer)
    q = judge.probabilities([e["prompt"] for e in examples[:2]])
    y, n = tokenizer.encode("Y", add_special_tokens=False)[0], tokenizer.encode("N", add_special_tokens=False)[0]
    ids = tokenizer(examples[0]["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    logits = judge.model(input_ids=ids).logits[0, -1]
    assert q[0] == pytest.approx(torch.softmax(logits[[y, n]], dim=0)[0].item(), abs=1e-5)
    assert judge.rewards(np.array([0.9, 0.71, 0.5, 0.29, 0.1])).tolist() == [1, 1, 0, -1, -1]
    balanced = balance_answers(examples * 2, seed=0)
    assert sorted(e["completion"] for e in balanced) == ["N", "N", "Y", "Y"]


def test_judge_agreement_reports_auc_and_the_majority_on_the_steps_it_is_sure_about() -> None:
    class FixedJudge(StepJudge):
        def probabilities(self, prompts):  # noqa: ANN001, ANN202
            return np.array([float(p) for p in prompts])

    answers = ["Y", "Y", "N", "N", "Y", "N"]
    q = ["0.9", "0.6", "0.5", "0.1", "0.2", "0.8"]  # sure on 0.9 (Y ✓), 0.1 (N ✓), 0.2 (Y ✗), 0.8 (N ✗)
    examples = [{"prompt": p, "completion": a, "step": "Query"} for p, a in zip(q, answers)]
    report = judge_agreement(FixedJudge(None, None), examples)
    assert report["unsure_rate"] == pytest.approx(2 / 6) and report["agreement"] == pytest.approx(2 / 6)
    assert report["agreement_when_sure"] == pytest.approx(0.5)
    assert report["majority_baseline_when_sure"] == pytest.approx(0.5)
    # AUC of q for Y: of the 9 (Y, N) pairs, Y is higher in 0.9>0.5, 0.9>0.1, 0.9>0.8, 0.6>0.5, 0.6>0.1, 0.2>0.1
    assert report["auc"] == pytest.approx(6 / 9)
    assert judge_agreement(FixedJudge(None, None), examples[:2])["auc"] is None  # one class only


# ------------------------------------------------------------------------------------------------------------
# Diversified filtering and curriculum


def test_diversified_filter_keeps_mixed_and_varied_prompts(records: list[RelevanceRecord]) -> None:
    stats = [PromptDiversity(passes=0, samples=8, distinct_labels=3, distinct_patterns=3, mean_entropy=2.0),
             PromptDiversity(passes=8, samples=8, distinct_labels=1, distinct_patterns=1, mean_entropy=2.0),
             PromptDiversity(passes=3, samples=8, distinct_labels=1, distinct_patterns=1, mean_entropy=0.1),
             PromptDiversity(passes=3, samples=8, distinct_labels=2, distinct_patterns=1, mean_entropy=0.1),
             PromptDiversity(passes=3, samples=8, distinct_labels=1, distinct_patterns=1, mean_entropy=1.5)]
    assert diversified_mask(stats, entropy_quantile=0.3).tolist() == [False, False, False, True, True]
    kept = rebalance_cells(records, range(len(records)), seed=0)
    cells: dict[tuple[str, int], int] = {}
    for i in kept:
        cells[(records[i].query_type, records[i].label)] = cells.get((records[i].query_type, records[i].label), 0) + 1
    assert len(set(cells.values())) == 1 and len(cells) == len({(r.query_type, r.label) for r in records})


def test_curriculum_windows_and_budget(records: list[RelevanceRecord]) -> None:
    p = np.linspace(0, 1, len(records))
    hard = CurriculumStage("hard", 0.01, 0.5, 0.5, hard_only=True)
    chosen = curriculum_indices(records, p, hard)
    assert chosen and all(records[i].is_hard and 0.01 <= p[i] <= 0.5 for i in chosen)
    assert stage_steps(10, [CurriculumStage("a", 0, 1, 0.25), CurriculumStage("b", 0, 1, 0.25), hard]) == [2, 2, 6]


# ------------------------------------------------------------------------------------------------------------
# A tiny run


@pytest.fixture(scope="module")
def label_first_sft(relevance_rl_init: Path) -> Path:
    return relevance_rl_init


@pytest.fixture(scope="module")
def step_rm(label_first_sft: Path, records: list[RelevanceRecord], world: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A judge fine-tuned for two steps on verifier-labelled hand-built answers (gold, and a wrong category)."""
    chosen = [r for r in records if r.gold is not None and r.gold.constraints][:6]
    texts = [[completion(r), completion(r, Category=wrong_category(r))] for r in chosen]
    tokenizer = load_checkpoint(label_first_sft / "model")[1]
    examples = judge_examples(tokenizer, chosen, texts, load_rule_table(world), "label_first", True)
    out = tmp_path_factory.mktemp("step-rm")
    judge = train_step_judge(label_first_sft / "model", examples, StepRMConfig(max_steps=2, batch_size=8), out)
    assert judge_agreement(judge, examples)["examples"] == len(examples) == 6 * 2 * 5
    return out


def test_srpo_run_with_the_hybrid_rewards_moves_the_policy(label_first_sft: Path, step_rm: Path,
                                                           tmp_path: Path) -> None:
    # The init has memorised 8 pairs; the RL pool is those 8 (unbalanced), every prompt kept.
    short = {"data.max_train_examples": 8, "pool.balance": False, "data.max_eval_examples": 4,
             "diversity.enabled": False, "pool.filter": False, "training.max_steps": 2,
             "rollout.max_completion_length": 128, "eval.max_new_tokens": 128, "srpo.step_rm.path": str(step_rm)}
    metrics = train_relevance("srpo", CONFIGS / "srpo_tiny.yaml", short, tmp_path, init=label_first_sft)
    assert metrics["steps"] == 2 and metrics["max_parameter_change"] > 0
    assert metrics["methods"] == {"srpo": True, "agrl": False} and metrics["step_rm"] == {"path": str(step_rm)}
    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "reward" in row]
    assert len(steps) == 2 and all("step_accuracy/Category" in row and "srpo/critical_share" in row
                                   and "entropy" in row for row in steps)
    with pytest.raises(ConfigError, match="srpo.enabled"):
        train_relevance("srpo", CONFIGS / "agrl_tiny.yaml", short, tmp_path / "x", init=label_first_sft)


def test_entropy_collapse_triggers_a_refilter_with_the_current_policy() -> None:
    from types import SimpleNamespace

    from rankstack.relevance.grpo import DifficultySampler
    from rankstack.relevance.rl import PoolRefresh, Survey

    calls: list[int] = []

    class Selector:
        def select(self, model, candidates, seed):
            calls.append(seed)
            return Survey(list(candidates), np.zeros(0), 8, [2, 3, 4, 5], {"kept": 4})

    sampler = DifficultySampler(pool_size=8, mini_repeat_count=2, batch_size=2, active=range(8))
    refresh = PoolRefresh(Selector(), sampler, list(range(8)), every=0, collapse_ratio=0.5, min_gap=2, seed=0)
    refresh.trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=None)
    # step 2's completions were all truncated: TRL logs entropy 0 for it, which is no collapse
    for step, (entropy, clipped) in enumerate([(2.0, 0.0), (0.0, 1.0), (1.1, 0.5), (0.9, 0.0), (0.8, 0.0)], start=1):
        refresh.on_log(None, None, None, logs={"entropy": entropy, "completions/clipped_ratio": clipped})
        refresh.on_step_end(None, SimpleNamespace(global_step=step), None)
    # 0.9 < 0.5 · 2.0 at step 4 triggers one re-filter; step 5 is within min_gap of it
    assert calls == [4] and sampler.active == [2, 3, 4, 5]
    assert refresh.history == [{"step": 4, "reason": "entropy_collapse", "applied": True, "kept": 4}]
