"""Relevance records, prompts and SFT targets (relevance.md §1, §2 prompt, §3.1 targets).

`load_split` reads one split of a dataset in `relevance_schema` format (the city's `relevance/`, or the ESCI and
WANDS converters) into `RelevanceRecord`s. `prompt_message` writes the user turn: the task, the query, the item
record and the atomic rules retrieved for the pair; `chat_prompt` wraps it in the tokenizer's chat template so the
completion starts right after the assistant header. `render_completion` writes the SFT target from the gold steps:
each section is rendered with one of ≥ 3 paraphrase templates, picked per example by a seeded RNG. Every template
is a sentence of the grammar in `format.py`, so the parser reads back exactly the gold steps (tested).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rankstack.data.dataset import Dataset
from rankstack.errors import ConfigError, DataError
from rankstack.relevance.format import (
    ATOM_SEP,
    ATTR_SEPS,
    CLAUSE_SEP,
    LABEL_PREFIX,
    LEAD_SEP,
    NONE,
    SECTIONS,
    VARIANTS,
    constraint_text,
)
from rankstack.relevance.rules import GoldSteps, format_value, item_fact

INSTRUCTION = "Judge how well the item matches the query. Tiers: 4 Excellent, 3 Related, 2 Mismatch, 1 Irrelevant."
ANSWER = {
    "label_first": "Answer: the tier on the first line, then [Query], [Item], [Category], [Attributes], [Verdict].",
    "think_first": "Answer: [Query], [Item], [Category], [Attributes], [Verdict], then Label: and the tier.",
    "label_only": "Answer: the tier only.",
}
#: Item attributes shown as their own fields in the prompt, in this order; the rest follow as has / lacks / key.
_RECORD_FIELDS = ("district", "rating", "hours")
_MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class RelevanceRecord:
    """One query–item pair of the relevance format, with `item_attrs` and `gold` parsed."""

    pair_id: str
    query_id: str
    query: str
    query_type: str
    is_hard: bool
    item_id: str
    item_title: str
    item_category: str
    item_brand: str
    item_price_level: float
    attrs: dict[str, Any]
    rules: tuple[str, ...]
    label: int
    gold: GoldSteps | None

    @classmethod
    def from_row(cls, row: dict[str, Any], where: str = "record") -> RelevanceRecord:
        try:
            attrs = json.loads(row["item_attrs"]) if row["item_attrs"] else {}
        except ValueError as err:
            raise DataError(f"{where}: `item_attrs` is not a JSON object ({err}).") from None
        return cls(pair_id=str(row["pair_id"]), query_id=str(row["query_id"]), query=row["query"],
                   query_type=row["query_type"], is_hard=bool(row["is_hard"]), item_id=str(row["item_id"]),
                   item_title=row["item_title"], item_category=row["item_category"], item_brand=row["item_brand"],
                   item_price_level=float(row["item_price_level"]), attrs=attrs, rules=tuple(row["rules"]),
                   label=int(row["label"]), gold=GoldSteps.from_json(row["gold"], where))


def load_split(dataset_dir: str | Path, split: str, limit: int | None = None) -> list[RelevanceRecord]:
    """The records of one split (checked against the dataset's schema), in file order.

    With `limit`, a fixed random sample of `limit` rows (the same for every run and seed), still in file order:
    the splits are grouped by query, so the first rows would be a handful of queries (the first 128 train pairs
    of the small city are 11 of its queries, none of them an attribute query).
    """
    dataset = Dataset.open(dataset_dir)
    missing = {"label", "gold", "rules", "item_attrs"} - {c.name for c in dataset.schema.columns}
    if missing:
        raise DataError(f"{dataset_dir} is not a relevance dataset: column `{sorted(missing)[0]}` is missing; write it "
                        "with `relevance_schema` (rankstack/data/formats.py).")
    path = dataset.split_file(split)
    table = pq.read_table(path)
    rows = np.arange(table.num_rows)
    if limit is not None and limit < table.num_rows:
        rows = np.sort(np.random.default_rng(0).choice(table.num_rows, limit, replace=False))
        table = table.take(rows)
    return [RelevanceRecord.from_row(row, f"{path} row {i}") for i, row in zip(rows.tolist(), table.to_pylist())]


def load_rule_table(dataset_dir: str | Path) -> dict[str, str]:
    """The rule table `rules.json` next to the splits (rule id → text); empty when the source has none."""
    path = Path(dataset_dir) / "rules.json"
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f"{path} is not valid JSON ({err}); regenerate the dataset.") from None
    return {str(k): str(v) for k, v in table.items()}


# ------------------------------------------------------------------------------------------------------------
# Prompt


def item_line(record: RelevanceRecord) -> str:
    """The item record in one line: title | category | brand | price | district | rating | hours | has | lacks."""
    parts = [_clean(record.item_title), _clean(record.item_category) or "category unknown",
             f"brand {_clean(record.item_brand) or NONE}",
             f"price {int(record.item_price_level)}/4" if record.item_price_level > 0 else "price unknown"]
    attrs = dict(record.attrs)
    labels = {"district": "district", "rating": "rating", "hours": "open"}
    parts += [f"{labels[k]} {format_value(attrs.pop(k))}" for k in _RECORD_FIELDS if k in attrs]
    present = [k for k, v in attrs.items() if v is True]
    absent = [k for k, v in attrs.items() if v is False]
    if present:
        parts.append(f"has: {', '.join(present)}")
    if absent:
        parts.append(f"lacks: {', '.join(absent)}")
    parts += [f"{k}: {_clean(format_value(v))}" for k, v in sorted(attrs.items()) if not isinstance(v, bool)]
    return " | ".join(parts)


def _clean(text: str) -> str:
    """One line, at most `_MAX_VALUE_CHARS` characters: converter sources carry long, multi-line descriptions."""
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 1] + "…"


def prompt_message(record: RelevanceRecord, rule_table: dict[str, str], variant: str = "label_first",
                   rule_text: bool = True) -> str:
    """The user turn: task and tiers, query, item record, the pair's atomic rules, and the answer format."""
    _check_variant(variant)
    lines = [INSTRUCTION, f"Query: {record.query}", f"Item: {item_line(record)}"]
    if record.rules:
        if rule_text:
            lines.append("Rules:")
            lines += [f"{r}: {rule_table[r]}" if r in rule_table else r for r in record.rules]
        else:
            lines.append(f"Rules: {', '.join(record.rules)}")
    lines.append(ANSWER[variant])
    return "\n".join(lines)


def chat_prompt(tokenizer: Any, message: str) -> str:
    """The prompt text with the tokenizer's chat template applied, ending where the assistant's answer starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template; train one with rankstack.relevance.tokenizer (ChatML) "
                          "or load a chat model's tokenizer.")
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)


# ------------------------------------------------------------------------------------------------------------
# Completion renderer: paraphrase templates per section (each a sentence of format.py's grammar)

#: [Query]: (intent lead, hard lead, soft lead, lead of the "none" clause when there is no constraint).
QUERY_TEMPLATES = (
    ("wants", "hard constraints", "soft preferences", "constraints"),
    ("the user is looking for", "must", "nice to have", "conditions"),
    ("intent", "required", "preferred", "requirements"),
)
#: [Item]: (category lead, facts lead).
ITEM_TEMPLATES = (("category", "record"), ("the item is", "it states"), ("item category", "facts"))
CATEGORY_TEMPLATES = (
    "{verdict}: the item is {item}, the query wants {intent}",
    "{item} vs {intent}: {verdict}",
    "verdict {verdict} ({item} for {intent})",
)
ATTRIBUTE_TEMPLATES = ATTR_SEPS
VERDICT_TEMPLATES = ("{rule}: {reason}, so {tier}.", "by {rule}, {reason}; tier {tier}.",
                     "{reason}, which is {rule} -> {tier}.")
_REASONS = {
    "R1": "the category is unrelated to the intent",
    "R2": "the category fits but a hard constraint is violated",
    "R3": "the category fits but a preference is unmet or a constraint cannot be checked",
    "R3 near_miss": "the category is a near miss",
    "R4": "the category fits and every constraint holds",
}
TEMPLATE_COUNTS = {"Query": len(QUERY_TEMPLATES), "Item": len(ITEM_TEMPLATES), "Category": len(CATEGORY_TEMPLATES),
                   "Attributes": len(ATTRIBUTE_TEMPLATES), "Verdict": len(VERDICT_TEMPLATES)}


def render_sections(record: RelevanceRecord, templates: dict[str, int]) -> list[str]:
    """The five section lines from the record's gold steps, each with the template index `templates[name]`."""
    gold = record.gold
    if gold is None:
        raise DataError(f"pair {record.pair_id} has no gold steps (ESCI and WANDS have none); train it with variant "
                        "`label_only`, or give it gold steps.")
    intent = gold.intent or "the intent"
    lead, hard_lead, soft_lead, none_lead = QUERY_TEMPLATES[templates["Query"]]
    hard = [constraint_text(c) for c in gold.constraints if c.hard]
    soft = [constraint_text(c) for c in gold.constraints if not c.hard]
    query = [f"{lead}{LEAD_SEP}{intent}"]
    if hard:
        query.append(f"{hard_lead}{LEAD_SEP}{ATOM_SEP.join(hard)}")
    if soft:
        query.append(f"{soft_lead}{LEAD_SEP}{ATOM_SEP.join(soft)}")
    if not gold.constraints:
        query.append(f"{none_lead}{LEAD_SEP}{NONE}")

    cat_lead, facts_lead = ITEM_TEMPLATES[templates["Item"]]
    names = list(dict.fromkeys(c.name for c in gold.constraints))
    item = [f"{cat_lead}{LEAD_SEP}{record.item_category}"]
    if names:
        item.append(facts_lead + LEAD_SEP + ATOM_SEP.join(f"{n} = {item_fact(record, n)}" for n in names))

    category = CATEGORY_TEMPLATES[templates["Category"]].format(verdict=gold.category, item=record.item_category,
                                                                intent=intent)
    sep = ATTRIBUTE_TEMPLATES[templates["Attributes"]]
    attributes = CLAUSE_SEP.join(f"{constraint_text(c)}{sep}{v}" for c, v in zip(gold.constraints,
                                                                                    gold.attr_verdicts)) or NONE
    rule = gold.decisive_rule
    reason = _REASONS["R3 near_miss" if rule == "R3" and gold.category == "near_miss" else rule]
    verdict = VERDICT_TEMPLATES[templates["Verdict"]].format(rule=rule, reason=reason, tier=record.label)
    bodies = [CLAUSE_SEP.join(query), CLAUSE_SEP.join(item), category, attributes, verdict]
    return [f"[{name}] {body}" for name, body in zip(SECTIONS, bodies)]


def render_completion(record: RelevanceRecord, variant: str = "label_first", seed: int = 0,
                      templates: dict[str, int] | None = None) -> str:
    """The SFT target of one record. Templates are drawn per section from a RNG seeded by (seed, pair id) unless
    `templates` fixes them (section name → index)."""
    _check_variant(variant)
    if variant == "label_only":
        return str(record.label)
    if templates is None:
        rng = random.Random(f"{seed}:{record.pair_id}")
        templates = {name: rng.randrange(n) for name, n in TEMPLATE_COUNTS.items()}
    lines = render_sections(record, templates)
    if variant == "label_first":
        return "\n".join([str(record.label), *lines])
    return "\n".join([*lines, f"{LABEL_PREFIX}{record.label}"])


def sft_examples(records: Sequence[RelevanceRecord], tokenizer: Any, rule_table: dict[str, str],
                 variant: str = "label_first", seed: int = 0, rule_text: bool = True) -> list[dict[str, str]]:
    """Prompt/completion pairs (chat template applied to the prompt), the format TRL's SFTTrainer reads."""
    return [{"prompt": chat_prompt(tokenizer, prompt_message(r, rule_table, variant, rule_text)),
             "completion": render_completion(r, variant, seed)} for r in records]


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"variant `{variant}` is not one of {', '.join(VARIANTS)}.")


__all__ = ["INSTRUCTION", "ANSWER", "RelevanceRecord", "load_split", "load_rule_table", "item_line",
           "prompt_message", "chat_prompt", "QUERY_TEMPLATES", "ITEM_TEMPLATES", "CATEGORY_TEMPLATES",
           "ATTRIBUTE_TEMPLATES", "VERDICT_TEMPLATES", "TEMPLATE_COUNTS", "render_sections", "render_completion",
           "sft_examples"]
