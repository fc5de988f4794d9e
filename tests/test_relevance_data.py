"""Relevance records, the rule engine, SFT targets and the tokenizer on the tiny city (relevance.md §1-§3.1)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from rankstack.errors import DataError  # noqa: E402
from rankstack.relevance.data import (  # noqa: E402
    TEMPLATE_COUNTS,
    RelevanceRecord,
    chat_prompt,
    load_rule_table,
    load_split,
    prompt_message,
    render_completion,
    render_sections,
)
from rankstack.relevance.format import (  # noqa: E402
    LABELS,
    SECTIONS,
    discriminative_hallucination,
    label_token_ids,
    parse_output,
)
from rankstack.relevance.rules import (  # noqa: E402
    decisive_rule,
    rule_adherence,
    tier_from_verdicts,
    verify_steps,
)
from rankstack.relevance.tokenizer import load_tokenizer, train_tokenizer, training_corpus  # noqa: E402


@pytest.fixture(scope="module")
def world(tiny_world_dir: Path) -> Path:
    return tiny_world_dir / "relevance"


@pytest.fixture(scope="module")
def records(world: Path) -> dict[str, list[RelevanceRecord]]:
    return {split: load_split(world, split) for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def tokenizer(world: Path, records: dict[str, list[RelevanceRecord]]):
    return train_tokenizer(training_corpus(records["train"], load_rule_table(world)), vocab_size=512)


def test_records_load_with_gold_steps(records: dict[str, list[RelevanceRecord]]) -> None:
    assert all(len(r) > 0 for r in records.values())
    queries = [{r.query_id for r in rs} for rs in records.values()]
    assert not (queries[0] & queries[1] or queries[0] & queries[2] or queries[1] & queries[2])  # held-out queries
    labels = {r.label for rs in records.values() for r in rs}
    assert labels == set(LABELS)
    assert all(r.gold is not None for rs in records.values() for r in rs)


def test_a_limited_split_is_a_fixed_sample_spread_over_queries(world: Path,
                                                               records: dict[str, list[RelevanceRecord]]) -> None:
    train = records["train"]
    limit = len(train) // 10
    sample = load_split(world, "train", limit)
    assert len(sample) == limit and sample == load_split(world, "train", limit)  # the same rows on every call
    order = {r.pair_id: i for i, r in enumerate(train)}
    positions = [order[r.pair_id] for r in sample]
    assert positions == sorted(positions)  # file order kept
    # The file is grouped by query, so its first rows hold a few queries only; the sample spans far more.
    assert len({r.query_id for r in sample}) > 2 * len({r.query_id for r in train[:limit]})


def test_rule_engine_reproduces_every_tier_of_the_city(records: dict[str, list[RelevanceRecord]]) -> None:
    for record in itertools.chain(*records.values()):
        gold = record.gold
        hard = [c.hard for c in gold.constraints]
        assert tier_from_verdicts(gold.category, gold.attr_verdicts, hard) == record.label, record.pair_id
        assert decisive_rule(gold.category, gold.attr_verdicts, hard) == gold.decisive_rule, record.pair_id


def test_prompt_holds_query_item_and_rules(world: Path, records: dict[str, list[RelevanceRecord]]) -> None:
    rule_table = load_rule_table(world)
    record = next(r for r in records["train"] if len(r.rules) > 4)
    message = prompt_message(record, rule_table)
    assert f"Query: {record.query}\n" in message
    assert f"Item: {record.item_title} | {record.item_category} | " in message
    for rule in record.rules:
        assert f"{rule}: {rule_table[rule]}" in message
    assert prompt_message(record, rule_table, rule_text=False).count("Rules: R1, R2, R3, R4") == 1
    assert "Answer: the tier only." in prompt_message(record, rule_table, "label_only")


@pytest.mark.parametrize("variant", ["label_first", "think_first"])
def test_every_template_parses_back_to_the_gold_steps(records: dict[str, list[RelevanceRecord]],
                                                      variant: str) -> None:
    assert min(TEMPLATE_COUNTS.values()) >= 3
    for record in records["train"]:
        for i in range(max(TEMPLATE_COUNTS.values())):
            templates = {name: i % n for name, n in TEMPLATE_COUNTS.items()}
            text = render_completion(record, variant, templates=templates)
            parsed = parse_output(text, variant)
            assert parsed.ok, (text, parsed.errors)
            assert parsed.label == record.label
            assert parsed.category == record.gold.category
            assert [v for _, v in parsed.attr_verdicts] == list(record.gold.attr_verdicts)
            assert parsed.cited_rule == record.gold.decisive_rule
            assert verify_steps(parsed, record) == {step: 1 for step in ("label", *SECTIONS)}
            assert rule_adherence(parsed, record) is True
            assert discriminative_hallucination(parsed) is False


def test_templates_are_drawn_per_example_and_seeded(records: dict[str, list[RelevanceRecord]]) -> None:
    train = records["train"][:60]
    first = [render_completion(r, seed=0) for r in train]
    assert first == [render_completion(r, seed=0) for r in train]
    assert first != [render_completion(r, seed=1) for r in train]
    used: dict[str, set[int]] = {name: set() for name in SECTIONS}
    for record, text in zip(train, first):
        drawn = text.splitlines()[1:]
        for k, name in enumerate(SECTIONS):
            used[name] |= {i for i in range(TEMPLATE_COUNTS[name])
                           if render_sections(record, {**dict.fromkeys(SECTIONS, 0), name: i})[k] == drawn[k]}
    assert used == {name: set(range(n)) for name, n in TEMPLATE_COUNTS.items()}  # every template shows up
    assert render_completion(train[0], "label_only") == str(train[0].label)


def test_verifier_flags_the_wrong_step(records: dict[str, list[RelevanceRecord]]) -> None:
    record = next(r for r in records["train"] if r.gold.category == "match" and r.gold.constraints)
    text = render_completion(record, templates={name: 0 for name in SECTIONS})
    wrong_item = text.replace(f"category: {record.item_category}", "category: Food > Nowhere")
    assert verify_steps(parse_output(wrong_item), record)["Item"] == -1
    wrong_category = text.replace("[Category] match", "[Category] mismatch")
    scores = verify_steps(parse_output(wrong_category), record)
    assert scores["Category"] == -1 and scores["Query"] == scores["Attributes"] == 1
    wrong_rule = parse_output(text.replace(f"[Verdict] {record.gold.decisive_rule}", "[Verdict] R1"))
    assert verify_steps(wrong_rule, record)["Verdict"] == -1 and rule_adherence(wrong_rule, record) is False
    dropped = "\n".join(line for line in text.splitlines() if not line.startswith("[Query]"))
    assert verify_steps(parse_output(dropped), record)["Query"] == -1
    wrong_label = str(5 - record.label) + text[1:]
    assert verify_steps(parse_output(wrong_label), record)["label"] == -1


def test_records_without_gold_steps_train_label_only(records: dict[str, list[RelevanceRecord]]) -> None:
    esci_like = dataclasses.replace(records["train"][0], gold=None, rules=())
    assert render_completion(esci_like, "label_only") == str(esci_like.label)
    with pytest.raises(DataError, match="label_only"):
        render_completion(esci_like, "label_first")
    assert verify_steps(parse_output(str(esci_like.label), "label_only"), esci_like) == {"label": 1}


def test_labels_are_single_tokens_and_start_the_completion(world: Path, tokenizer,
                                                          records: dict[str, list[RelevanceRecord]]) -> None:
    label_ids = label_token_ids(tokenizer)
    assert len(set(label_ids)) == 4
    rule_table = load_rule_table(world)
    by_label = {r.label: r for r in records["valid"]}
    assert set(by_label) == set(LABELS)
    for label, record in by_label.items():
        for variant in ("label_first", "label_only"):
            prompt = chat_prompt(tokenizer, prompt_message(record, rule_table, variant))
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(prompt + render_completion(record, variant), add_special_tokens=False)["input_ids"]
            assert full_ids[:len(prompt_ids)] == prompt_ids
            assert full_ids[len(prompt_ids)] == label_ids[label - 1]


def test_tokenizer_round_trips_through_a_folder(tmp_path: Path, tokenizer) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    text = "<|im_start|>user\nQuery: café, not spicy 4.2<|im_end|>\n"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.padding_side == "left" and loaded.pad_token == "<|pad|>" and loaded.eos_token == "<|im_end|>"
    assert label_token_ids(loaded) == label_token_ids(tokenizer)


def test_esci_pairs_prompt_and_train_label_only(tmp_path: Path, tokenizer) -> None:
    from rankstack.data.converters import convert

    esci = convert("esci", Path(__file__).parent / "fixtures" / "esci", tmp_path / "esci")
    records = load_split(esci, "train")
    assert records and all(r.gold is None and not r.rules for r in records)
    record = records[0]
    message = prompt_message(record, load_rule_table(esci), "label_only")
    assert f"Item: {record.item_title} | " in message and "Rules" not in message
    text = render_completion(record, "label_only")
    assert parse_output(text, "label_only").label == record.label
    prompt = chat_prompt(tokenizer, message)
    full = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    assert full[len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] == label_token_ids(tokenizer)[
        record.label - 1]
