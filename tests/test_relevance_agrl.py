"""TaoSR-AGRL (relevance.md §5): the shaped reward with its hard gate and wrong-label cap, hints and the leak filter,
replay only at or below τ with progressive hints, swapped rows rescored under the unguided prompt, and a tiny AGRL
run with replay that changes the policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rankstack.relevance import agrl, train_relevance  # noqa: E402
from rankstack.relevance.agrl import (  # noqa: E402
    GuidedReplay,
    ReplayConfig,
    ShapedReward,
    hint_text,
    quotes_hint,
    replay_groups,
    rescore_rows,
    reward_components,
    shaped_reward,
    swap_rows,
)
from rankstack.relevance.data import (  # noqa: E402
    RelevanceRecord,
    load_rule_table,
    load_split,
    render_completion,
    sft_examples,
)
from rankstack.relevance.format import parse_output  # noqa: E402
from rankstack.relevance.sft import DataConfig, hinted_examples  # noqa: E402
from rankstack.relevance.tokenizer import train_tokenizer, training_corpus  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "relevance"


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir / "relevance"


@pytest.fixture(scope="module")
def records(world: Path) -> list[RelevanceRecord]:
    return load_split(world, "train")


@pytest.fixture(scope="module")
def tokenizer(records: list[RelevanceRecord], world: Path):
    return train_tokenizer(training_corpus(records[:300], load_rule_table(world)), 1024, 2)


def with_label(text: str, label: int) -> str:
    return f"{label}{text[1:]}"


# ------------------------------------------------------------------------------------------------------------
# Shaped reward


def test_shaped_reward_gate_cap_and_partial_credit(records: list[RelevanceRecord]) -> None:
    low = next(r for r in records if r.gold is not None and r.label == 2 and r.gold.constraints)
    gold = render_completion(low)
    assert shaped_reward(reward_components(parse_output(gold), low)) == pytest.approx(1.0)
    # Wrong label over right reasoning: 0.1·(cat + attr + rule) = 0.3 of step credit, capped at 0.2.
    wrong = reward_components(parse_output(with_label(gold, 1)), low)
    assert wrong["label"] == 0.0 and wrong["consistency"] == 0.0 and wrong["category"] == 1.0
    assert shaped_reward(wrong) == pytest.approx(0.2) and shaped_reward(wrong, gated=False) == pytest.approx(0.3)
    # The hard gate: a malformed answer gets −0.5 whatever it says; GRPO-PR (no gate) still pays its step credit.
    truncated = reward_components(parse_output(gold[:-20]), low)
    assert truncated["gate"] == 0.0 and shaped_reward(truncated) == -0.5
    assert shaped_reward(truncated, gated=False) > 0.5
    # The {3, 4} confusion earns 0.3 of the label weight, and is not capped.
    high = next(r for r in records if r.gold is not None and r.label == 4)
    near = reward_components(parse_output(with_label(render_completion(high), 3)), high)
    assert near["label"] == 0.3
    assert shaped_reward(near) == pytest.approx(0.6 * 0.3 + 0.1 * (near["category"] + near["attributes"]
                                                                   + near["rule"] + near["consistency"]))
    assert shaped_reward(near) > 0.2
    # Without gold steps only the gate and the label count (weights renormalised).
    no_gold = RelevanceRecord(**{**low.__dict__, "gold": None})
    assert shaped_reward(reward_components(parse_output(gold), no_gold)) == 1.0
    assert shaped_reward(reward_components(parse_output(with_label(gold, 3)), no_gold)) == 0.0
    logged: dict[str, float] = {}
    reward = ShapedReward([low, high])
    values = reward([""] * 3, [gold, with_label(gold, 1), gold[:-20]], pool_index=[0, 0, 0],
                    log_metric=lambda k, v: logged.__setitem__(k, v))
    assert values == pytest.approx([1.0, 0.2, -0.5])
    assert logged["shaped/gate"] == pytest.approx(2 / 3) and logged["accuracy"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------------------
# Hints, leak filter, replay


def test_hints_and_the_leak_filter(records: list[RelevanceRecord], world: Path, tokenizer) -> None:
    record = next(r for r in records if r.gold is not None)
    rules = load_rule_table(world)
    tier = hint_text(record, 1, rules)
    assert tier == f"Hint: the correct tier is {record.label}."
    rule = hint_text(record, 2, rules)
    assert rule.startswith(tier) and f"The deciding rule is {record.gold.decisive_rule}: " in rule
    gold = render_completion(record)
    assert not quotes_hint(gold, rule, tokenizer)
    assert quotes_hint(gold.replace("[Verdict] ", "[Verdict] as the hint says, "), tier, tokenizer)
    quoting = gold + " " + rules[record.gold.decisive_rule]
    assert quotes_hint(quoting, rule, tokenizer) and not quotes_hint(quoting, rule, tokenizer, ngram=200)


def test_hinted_sft_examples_use_the_replay_prompt_and_the_gold_answer(records: list[RelevanceRecord], world: Path,
                                                                       tokenizer) -> None:
    rules = load_rule_table(world)
    pairs = records[:200]
    plain = sft_examples(pairs, tokenizer, rules)
    data = DataConfig(dataset=str(world), hint_share=0.25)
    hinted = hinted_examples(pairs, plain, tokenizer, rules, data, seed=0)
    assert 20 < len(hinted) < 80  # about a quarter of 200
    assert hinted == hinted_examples(pairs, plain, tokenizer, rules, data, seed=0)
    by_completion = {}
    for record, example in zip(pairs, plain):
        by_completion.setdefault(example["completion"], []).append(record)
    levels = set()
    for example in hinted:
        record = next(r for r in by_completion[example["completion"]]
                      if example["prompt"] in {agrl.guided_prompt(tokenizer, r, rules, "label_first", True,
                                                                  hint_text(r, level, rules)) for level in (1, 2)})
        levels.add("The deciding rule is" in example["prompt"])
        assert f"Hint: the correct tier is {record.label}." in example["prompt"]
        assert int(example["completion"][0]) == record.label
    assert levels == {True, False}  # both hint levels occur
    assert hinted_examples(pairs, plain, tokenizer, rules, DataConfig(dataset=str(world)), seed=0) == []
    with pytest.raises(ValueError, match="hint_share"):
        DataConfig(dataset=str(world), hint_share=1.5)


def test_replay_fires_only_at_or_below_tau() -> None:
    correct = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1]
    assert replay_groups(correct, 4, tau=0.25) == [0, 1]
    assert replay_groups(correct, 4, tau=0.125) == [0]
    assert replay_groups(correct, 4, tau=0.0) == [0]
    assert replay_groups([1] * 8, 4, tau=0.125) == []


def test_tau_can_follow_half_the_batch_accuracy() -> None:
    from rankstack.config import from_dict
    from rankstack.errors import ConfigError

    correct = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]  # 9 of 16: τ = 9/32 ≈ 0.28
    fixed = agrl.GuidedReplay(ReplayConfig(), {}, "label_first", True, None, lambda text, record: 0.0)
    half = agrl.GuidedReplay(ReplayConfig(tau_mode="half_batch_accuracy"), {}, "label_first", True, None,
                             lambda text, record: 0.0)
    assert fixed.threshold(correct) == 0.125 and half.threshold(correct) == pytest.approx(9 / 32)
    assert replay_groups(correct, 4, fixed.threshold(correct)) == [0]
    assert replay_groups(correct, 4, half.threshold(correct)) == [0, 1]  # group 1 (1 of 4) now replays too
    assert half.threshold([1] * 8) == 0.5 and half.threshold([0] * 8) == 0.0
    with pytest.raises(ConfigError, match="tau_mode"):
        from_dict(ReplayConfig, {"tau_mode": "half"}, "replay")


def test_guided_replay_keeps_correct_unquoted_rollouts_with_progressive_hints(
        records: list[RelevanceRecord], world: Path, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = load_rule_table(world)
    distinct: dict[str, RelevanceRecord] = {}
    for r in records:
        if r.gold is not None and r.label in (1, 2):
            distinct.setdefault(r.query, r)
    a, b, c = list(distinct.values())[:3]
    gold = {r.pair_id: render_completion(r) for r in (a, b, c)}

    def wrong(r: RelevanceRecord) -> str:
        return with_label(gold[r.pair_id], 4)

    # group 0 (a): none correct → replay; group 1 (b): 2 of 4 correct → no replay; group 2 (c): 1 of 4 = τ → replay
    group_records = [a] * 4 + [b] * 4 + [c] * 4
    texts = [wrong(a)] * 4 + [gold[b.pair_id], wrong(b), gold[b.pair_id], wrong(b)] + [wrong(c)] * 3 + [gold[c.pair_id]]
    score = ShapedReward(group_records).score
    rewards = [score(t, r) for t, r in zip(texts, group_records)]
    rewards[1] = -0.5  # the lowest of group 0
    calls: list[list[str]] = []

    def fake_generate(model, tok, prompts, num_samples, **_):
        calls.append(list(prompts))
        out = []
        for prompt in prompts:
            r = a if f"Query: {a.query}\n" in prompt else c
            if len(calls) == 1 and r is a:  # tier hint: one leaks the hint, one is wrong, one is malformed
                out.append([gold[a.pair_id].replace("[Verdict] ", "[Verdict] per the hint, "), wrong(a), gold[a.pair_id], gold[a.pair_id][:-30]])
            elif len(calls) == 1:  # tier hint fails for c
                out.append([wrong(c)] * num_samples)
            else:  # tier + rule hint for c
                out.append([gold[c.pair_id], wrong(c), gold[c.pair_id], wrong(c)])
        return out

    monkeypatch.setattr(agrl, "generate_completions", fake_generate)
    replay = GuidedReplay(ReplayConfig(tau=0.25, num_guided=4), rules, "label_first", True, tokenizer, score)
    result = replay.run(None, group_records, texts, rewards, group_size=4)
    assert len(calls) == 2 and len(calls[0]) == 2 and len(calls[1]) == 1
    assert "Hint: the correct tier" in calls[0][0] and "deciding rule" not in calls[0][0]
    assert f"Query: {c.query}\n" in calls[1][0] and "The deciding rule is" in calls[1][0]
    assert result.replayed == 2 and result.succeeded == 2 and result.leaks == 1 and result.guided == 12
    # right labels: a's leaked, gold and truncated answers (the truncated one keeps its label line), c's 2 golds;
    # the truncated answer is the one that does not parse
    assert result.labelled_right == 5 and result.malformed == 1
    assert result.rows[0] == 1  # group 0's lowest-reward rollout is replaced by its one usable guided answer
    assert sorted(result.rows[1:]) == [8, 9]  # group 2: two usable answers replace two of its three wrong ones
    assert not set(result.rows) & {4, 5, 6, 7}  # group 1 is above τ: untouched
    assert result.rewards == pytest.approx([1.0, 1.0, 1.0])
    assert replay.completion_ids(result.texts[0])[-1] == tokenizer.eos_token_id


def tiny_lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
                                        bos_token_id=None, eos_token_id=1))


def completion_logps(model, input_ids, attention_mask, logits_to_keep):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -logits_to_keep:, None]).squeeze(-1)


def test_swapped_rows_are_rescored_under_the_unguided_prompt() -> None:
    ref, policy = tiny_lm(0), tiny_lm(1)
    unguided = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    output = {"prompt_ids": unguided, "prompt_mask": torch.ones(2, 4, dtype=torch.long),
              "completion_ids": torch.tensor([[20, 21, 1], [22, 1, 0]]),
              "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
              "ref_per_token_logps": torch.full((2, 3), -7.0), "old_per_token_logps": torch.full((2, 3), -9.0),
              "advantages": torch.zeros(2)}
    guided_ids = [30, 31, 32, 33, 1]  # longer than the batch: every per-token tensor widens
    swap_rows(output, [1], [guided_ids], pad_token_id=0)
    assert output["completion_ids"].tolist() == [[20, 21, 1, 0, 0], guided_ids]
    assert output["completion_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    rescore_rows(output, [1], completion_logps, {"ref_per_token_logps": ref, "old_per_token_logps": policy})
    unguided_ids = torch.cat([unguided[1], torch.tensor(guided_ids)]).unsqueeze(0)
    expected_ref = completion_logps(ref, unguided_ids, torch.ones_like(unguided_ids), 5)[0]
    assert torch.allclose(output["ref_per_token_logps"][1], expected_ref)
    assert torch.allclose(output["old_per_token_logps"][1],
                          completion_logps(policy, unguided_ids, torch.ones_like(unguided_ids), 5)[0])
    hint = torch.tensor([40, 41, 42])  # the guided prompt would give other log-probs
    guided = torch.cat([unguided[1], hint, torch.tensor(guided_ids)]).unsqueeze(0)
    assert not torch.allclose(output["ref_per_token_logps"][1],
                              completion_logps(ref, guided, torch.ones_like(guided), 5)[0])
    assert output["ref_per_token_logps"][0].tolist() == [-7.0, -7.0, -7.0, 0.0, 0.0]  # other rows untouched


def test_option_b_takes_pi_old_of_swapped_rows_from_the_guided_prompt() -> None:
    policy = tiny_lm(1)
    unguided = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    output = {"prompt_ids": unguided, "prompt_mask": torch.ones(2, 4, dtype=torch.long),
              "completion_ids": torch.tensor([[20, 21, 1], [22, 23, 1]]),
              "completion_mask": torch.ones(2, 3, dtype=torch.long)}
    guided_prompt = [9, 10, 11, 12, 40, 41, 42]  # row 1's prompt with a hint appended
    agrl.guided_old_logps(output, [1], [guided_prompt], completion_logps, policy)
    ids = torch.cat([unguided, output["completion_ids"]], dim=1)
    assert torch.allclose(output["old_per_token_logps"][0], completion_logps(policy, ids[:1], torch.ones(1, 7), 3)[0])
    guided = torch.tensor([guided_prompt + [22, 23, 1]])
    assert torch.allclose(output["old_per_token_logps"][1], completion_logps(policy, guided, torch.ones_like(guided), 3)[0])
    assert not torch.allclose(output["old_per_token_logps"][1],
                              completion_logps(policy, ids[1:], torch.ones(1, 7), 3)[0])  # not the unguided π
    from rankstack.config import from_dict
    from rankstack.errors import ConfigError
    with pytest.raises(ConfigError, match="ratio_cap"):
        from_dict(ReplayConfig, {"old_logps": "guided", "ratio_cap": 1.0}, "replay")
    with pytest.raises(ConfigError, match="old_logps"):
        from_dict(ReplayConfig, {"old_logps": "sampled"}, "replay")


# ------------------------------------------------------------------------------------------------------------
# A tiny run


def test_agrl_run_replays_low_accuracy_groups_and_moves_the_policy(relevance_rl_init: Path, tmp_path: Path) -> None:
    short = {"data.max_train_examples": 8, "pool.balance": False, "data.max_eval_examples": 4, "pool.filter": False,
             "training.max_steps": 2, "rollout.max_completion_length": 128, "eval.max_new_tokens": 128,
             "agrl.replay.tau": 0.5, "agrl.replay.num_guided": 2}
    metrics = train_relevance("agrl", CONFIGS / "agrl_tiny.yaml", short, tmp_path, init=relevance_rl_init)
    assert metrics["steps"] == 2 and metrics["max_parameter_change"] > 0
    assert metrics["methods"] == {"srpo": False, "agrl": True}
    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "reward" in row]
    assert all("replay/rate" in row and "shaped/gate" in row and "rule_adherence" in row for row in steps)
    assert any(row["replay/rate"] > 0 for row in steps)
    assert all(row["reward"] >= -0.5 and row["reward"] <= 1.0 for row in steps)


def test_option_b_swaps_a_rollout_in_with_its_guided_pi_old_and_the_ratio_cap(
        relevance_rl_init: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer step with `old_logps: guided`. The tiny model's hinted answers rarely parse, so the replay is made to
    swap row 0's own rollout in as if it came from the tier hint; π_old of that row must then come from the guided
    prompt, and TRL's ratio cap (`delta`) must be option B's."""
    from rankstack.relevance import rl

    original_run, original_old = agrl.GuidedReplay.run, rl.guided_old_logps
    seen: dict = {"calls": []}

    def forced_run(self, model, records, texts, rewards, group_size):
        result = original_run(self, model, records, texts, rewards, group_size)
        if not result.rows:
            hint = agrl.hint_text(records[0], 1, self.rule_table)
            prompt = agrl.guided_prompt(self.tokenizer, records[0], self.rule_table, self.variant, self.rule_text, hint)
            result.rows, result.texts, result.rewards, result.prompts = [0], [texts[0]], [rewards[0]], [prompt]
        return result

    def spy(output, rows, prompt_ids, logps, model):
        unguided = [int(output["prompt_mask"][r].sum()) for r in rows]  # the rows' own prompts, without padding
        seen["calls"].append((list(rows), [len(p) for p in prompt_ids], unguided))
        out = original_old(output, rows, prompt_ids, logps, model)
        seen["old"] = out["old_per_token_logps"].clone()
        return out

    original_advantages = rl.RelevanceRLTrainer.compute_advantages

    def advantages(self, output, inputs):
        seen["delta"] = self.args.delta
        return original_advantages(self, output, inputs)

    monkeypatch.setattr(agrl.GuidedReplay, "run", forced_run)
    monkeypatch.setattr(rl, "guided_old_logps", spy)
    monkeypatch.setattr(rl.RelevanceRLTrainer, "compute_advantages", advantages)
    short = {"data.max_train_examples": 8, "pool.balance": False, "data.max_eval_examples": 4, "pool.filter": False,
             "training.max_steps": 1, "rollout.max_completion_length": 128, "eval.max_new_tokens": 128,
             "agrl.replay.tau": 1.0, "agrl.replay.num_guided": 2, "agrl.replay.old_logps": "guided"}
    metrics = train_relevance("agrl", CONFIGS / "agrl_tiny.yaml", short, tmp_path, init=relevance_rl_init)
    assert metrics["steps"] == 1 and metrics["max_parameter_change"] > 0
    assert seen["delta"] == 2.0
    (rows, guided_lengths, unguided_lengths), = seen["calls"]
    assert rows == [0] and guided_lengths[0] > unguided_lengths[0]  # the hint lengthens the prompt
    assert torch.isfinite(seen["old"]).all() and seen["old"].shape[0] >= 2


def test_srpo_and_agrl_together_through_a_curriculum(relevance_rl_init: Path, tmp_path: Path) -> None:
    stages = [{"name": "outcome_only", "pass_low": 0.0, "pass_high": 1.0, "budget_share": 0.5, "step_reward": False},
              {"name": "stepwise", "pass_low": 0.0, "pass_high": 1.0, "budget_share": 0.5}]
    short = {"data.max_train_examples": 8, "pool.balance": False, "data.max_eval_examples": 4,
             "training.max_steps": 2, "rollout.max_completion_length": 128, "eval.generate": False,
             "curriculum.enabled": True, "curriculum.stages": stages, "diversity.samples": 4,
             "diversity.rebalance": False, "diversity.entropy_quantile": 0.0, "srpo.verifier_share": 1.0,
             "rollout.prompts_per_step": 1,
             "agrl.replay.tau": 0.5, "agrl.replay.num_guided": 2}
    metrics = train_relevance("srpo", CONFIGS / "srpo_agrl_tiny.yaml", short, tmp_path, init=relevance_rl_init)
    assert metrics["methods"] == {"srpo": True, "agrl": True}
    phases = metrics["phases"]
    assert [p["phase"] for p in phases] == ["outcome_only", "stepwise"] and all("skipped" not in p for p in phases), \
        phases
    assert all(p["in_window"] == 8 and 1 <= p["pool"]["kept"] <= 8 for p in phases), phases
    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "reward" in row]
    assert [row["phase"] for row in steps] == ["outcome_only", "stepwise"] and [r["step"] for r in steps] == [1, 2]
    assert "srpo/critical_share" not in steps[0] and "srpo/critical_share" in steps[1]  # λ = 0 in the first stage
    assert all("replay/rate" in row for row in steps)
