"""The relevance output format (relevance.md §2): strict parser, error kinds, spans, label distribution and the
discriminative-hallucination check."""

from __future__ import annotations

import pytest
import torch

from rankstack.relevance.format import (
    SECTIONS,
    discriminative_hallucination,
    label_distribution,
    own_tier,
    parse_output,
)
from rankstack.relevance.rules import Constraint

BODIES = {
    "Query": "wants: Food > Noodles; hard constraints: not spicy, district = Old Town; soft preferences: "
             "price_level <= 2",
    "Item": "category: Food > Noodles; record: spicy = yes, district = Old Town, price_level = 3",
    "Category": "match: the item is Food > Noodles, the query wants Food > Noodles",
    "Attributes": "not spicy: violated; district = Old Town -> satisfied; price_level <= 2 is violated",
    "Verdict": "R2: the category fits but a hard constraint is violated, so 2.",
}


def lines(bodies: dict[str, str] = BODIES, names: tuple[str, ...] = SECTIONS) -> list[str]:
    return [f"[{name}] {bodies[name]}" for name in names]


GOOD = "\n".join(["2", *lines()])


def test_well_formed_label_first_parses_every_step() -> None:
    parsed = parse_output(GOOD)
    assert parsed.ok, parsed.errors
    assert parsed.label == 2
    assert parsed.intent == "Food > Noodles"
    assert parsed.constraints == [Constraint("spicy", "not_has", True, True),
                                  Constraint("district", "eq", "Old Town", True),
                                  Constraint("price_level", "le", 2, False)]
    assert parsed.item_category == "Food > Noodles"
    assert parsed.item_facts == {"spicy": "yes", "district": "Old Town", "price_level": "3"}
    assert parsed.category == "match"
    assert [(c.name, c.hard, v) for c, v in parsed.attr_verdicts] == [
        ("spicy", True, "violated"), ("district", True, "satisfied"), ("price_level", False, "violated")]
    assert parsed.cited_rule == "R2" and parsed.verdict_tier == 2
    assert own_tier(parsed) == 2 and discriminative_hallucination(parsed) is False


def test_spans_cover_the_label_and_each_section_line() -> None:
    parsed = parse_output(GOOD)
    start, end = parsed.spans["label"]
    assert GOOD[start:end] == "2"
    for name, line in zip(SECTIONS, lines()):
        start, end = parsed.spans[name]
        assert GOOD[start:end] == line
    # Spans are disjoint and in order.
    ordered = [parsed.spans[s] for s in ("label", *SECTIONS)]
    assert all(a[1] < b[0] for a, b in zip(ordered, ordered[1:]))


def test_think_first_and_label_only_variants() -> None:
    think = "\n".join([*lines(), "Label: 2"])
    parsed = parse_output(think, "think_first")
    assert parsed.ok and parsed.label == 2
    assert think[slice(*parsed.spans["label"])] == "2"
    assert parse_output("3", "label_only").label == 3 and parse_output("3", "label_only").ok
    assert parse_output("3\n[Query] x", "label_only").errors == ["trailing"]
    assert parse_output("", "label_only").errors == ["no_label", "truncated"]
    assert parse_output(GOOD, "think_first").errors  # a label-first output is not a think-first one


def with_body(name: str, body: str) -> str:
    return "\n".join(["2", *lines({**BODIES, name: body})])


@pytest.mark.parametrize(("text", "expected"), [
    ("\n".join(["5", *lines()]), ["no_label"]),
    ("\n".join(["Tier 2", *lines()]), ["no_label"]),
    ("\n".join(lines()), ["no_label"]),
    ("\n".join(["2", *lines(names=("Query", "Category", "Attributes", "Verdict"))]), ["missing_section:Item"]),
    ("\n".join(["2", *lines(names=("Query", "Category", "Item", "Attributes", "Verdict"))]), ["order"]),
    ("\n".join(["2", *lines(names=("Query", "Query", "Item", "Category", "Attributes", "Verdict"))]), ["order"]),
    (with_body("Category", "maybe: the item is Food > Noodles"), ["bad_verdict"]),
    (with_body("Category", "match or mismatch"), ["bad_verdict"]),
    (with_body("Attributes", "not spicy: violated; district = Old Town: fine; price_level <= 2: violated"),
     ["bad_verdict"]),
    (with_body("Query", "Food > Noodles; hard constraints: not spicy"), ["bad_section:Query"]),
    (with_body("Query", "wants: Food > Noodles; whatever: not spicy"), ["bad_section:Query"]),
    (with_body("Query", "wants: Food > Noodles; must: very spicy"), ["bad_section:Query"]),
    (with_body("Item", "category: Food > Noodles; record: spicy"), ["bad_section:Item"]),
    (with_body("Attributes", "spicy violated"), ["bad_section:Attributes"]),
    (with_body("Verdict", "the category fits, so 2."), ["bad_section:Verdict"]),
    (with_body("Verdict", "R2: the category fits but a hard con"), ["truncated"]),
    ("\n".join(["2", *lines()[:3]]), ["missing_section:Attributes", "missing_section:Verdict", "truncated"]),
    ("2", [f"missing_section:{s}" for s in SECTIONS] + ["truncated"]),
    (GOOD + "\n[Verdict] R4: again, so 4.", ["trailing"]),
    (GOOD + "\nAnd more.", ["trailing"]),
    ("\n".join(["2", *lines()[:2], "some musing", *lines()[2:]]), ["stray_text"]),
])
def test_each_malformation_is_named(text: str, expected: list[str]) -> None:
    assert parse_output(text).errors == expected


def test_trailing_whitespace_is_not_an_error() -> None:
    assert parse_output(GOOD + "\n").ok and parse_output(GOOD + "\n\n  ").ok


def test_discriminative_hallucination_compares_the_label_with_its_own_verdicts() -> None:
    lying = parse_output("4" + GOOD[1:])  # the verdicts imply 2 (R2), the label says 4
    assert lying.ok and discriminative_hallucination(lying) is True
    # A violated soft preference alone gives 3 (R3), so 3 is consistent.
    soft_only = with_body("Attributes", "not spicy: satisfied; district = Old Town: satisfied; "
                                        "price_level <= 2: violated")
    assert own_tier(parse_output(soft_only)) == 3
    assert discriminative_hallucination(parse_output("3" + soft_only[1:])) is False
    near_miss = with_body("Category", "near_miss: the item is Food > Hotpot")
    assert own_tier(parse_output(near_miss)) == 3
    assert discriminative_hallucination(parse_output(with_body("Category", "no idea"))) is None


def test_label_distribution_is_the_softmax_over_the_four_label_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 50, generator=generator)
    label_ids = [11, 12, 13, 14]
    probs = label_distribution(logits, label_ids)
    manual = torch.exp(logits[:, -1, 11:15]) / torch.exp(logits[:, -1, 11:15]).sum(-1, keepdim=True)
    torch.testing.assert_close(probs, manual)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    # Other vocabulary entries do not matter.
    shifted = logits.clone()
    shifted[:, -1, :11] += 100.0
    torch.testing.assert_close(label_distribution(shifted, label_ids), probs)
    torch.testing.assert_close(label_distribution(logits[:, -1], label_ids), probs)
