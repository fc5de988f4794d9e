"""The relevance rule engine, the gold steps and the deterministic step verifier (relevance.md §1, §4 verifier, §6).

The rule engine f(verdicts) → tier is the city's documented labeller, `rankstack.world.relevance.decide`, used
here as is so that the labels, the discriminative-hallucination check and every reward later on agree by
construction. `GoldSteps` is the parsed `gold` JSON of a pair. `verify_steps` scores each step of a parsed model
output against the gold steps and the item record, +1 right / −1 wrong, as SRPO's offline verifier (§4) and AGRL's
shaped reward (§5) will use it:

| step | +1 when |
|---|---|
| label | the parsed label equals the gold label |
| Query | the intent equals the gold intent (when the gold states one) and the constraint set equals gold's |
| Item | the item category and every stated fact agree with the item record |
| Category | the category verdict (match / near_miss / mismatch) equals gold's |
| Attributes | every gold constraint has a verdict and each equals gold's, with no extra constraints |
| Verdict | the cited rule is the gold decisive rule |
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rankstack.errors import DataError
from rankstack.world.relevance import decide

if TYPE_CHECKING:
    from rankstack.relevance.data import RelevanceRecord
    from rankstack.relevance.format import ParsedOutput

#: The tier each decisive rule implies (rule adherence, §6).
RULE_TIER = {"R1": 1, "R2": 2, "R3": 3, "R4": 4}
#: The value an item fact takes when the record does not state it.
NOT_STATED = "not stated"


def normalise_value(value: Any) -> Any:
    """One comparable form per value: numbers (and numeric strings) become floats, other strings stay strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


@dataclass(frozen=True)
class Constraint:
    """One query constraint `{name, op, value, hard}` (ops: eq, has, not_has, le, lt, ge)."""

    name: str
    op: str
    value: Any
    hard: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Constraint:
        return cls(str(data["name"]), str(data["op"]), data.get("value", True), bool(data.get("hard", True)))

    @property
    def key(self) -> tuple[str, str, Any]:
        """What identifies the constraint regardless of how its value was written (and of hardness)."""
        value = True if self.op in ("has", "not_has") else normalise_value(self.value)
        return self.name, self.op, value


@dataclass(frozen=True)
class GoldSteps:
    """The gold reasoning steps of one pair: the verdicts its label was computed from."""

    intent: str | None
    constraints: tuple[Constraint, ...]
    category: str
    attr_verdicts: tuple[str, ...]  # one per constraint, in order
    decisive_rule: str

    @classmethod
    def from_json(cls, text: str, where: str = "gold") -> GoldSteps | None:
        """Parse a `gold` cell; None for "" (sources without step annotations)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            constraints = tuple(Constraint.from_dict(c) for c in data["constraints"])
            verdicts = {v["name"]: v["verdict"] for v in data["attr_verdicts"]}
            return cls(intent=data.get("intent"), constraints=constraints, category=str(data["category"]),
                       attr_verdicts=tuple(verdicts[c.name] for c in constraints),
                       decisive_rule=str(data["decisive_rule"]))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{where}: the gold steps are not valid ({type(err).__name__}: {err}); expected JSON "
                            "{constraints, category, attr_verdicts, decisive_rule} as relevance_schema documents."
                            ) from None

    @property
    def tier(self) -> int:
        return tier_from_verdicts(self.category, self.attr_verdicts, [c.hard for c in self.constraints])


def tier_from_verdicts(category: str, verdicts: list[str] | tuple[str, ...], hard: list[bool]) -> int:
    """The rule engine f: tier from the category verdict and the per-constraint verdicts (world.md §2.9)."""
    return decide(category, list(verdicts), list(hard))[0]


def decisive_rule(category: str, verdicts: list[str] | tuple[str, ...], hard: list[bool]) -> str:
    """The first rule that applies (R1-R4)."""
    return decide(category, list(verdicts), list(hard))[1]


def item_fact(record: RelevanceRecord, name: str) -> str:
    """What the item record says about `name`, as the Item section states it.

    brand → the brand or `none`; price_level → the level 1-4; district and rating from the record; an attribute →
    `yes` / `no` where the record states it, `not stated` where it is silent.
    """
    if name == "brand":
        return record.item_brand or "none"
    if name == "price_level":
        return str(int(record.item_price_level)) if record.item_price_level > 0 else NOT_STATED
    value = record.attrs.get(name)
    if value is None:
        return NOT_STATED
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_value(value)


def format_value(value: Any) -> str:
    """Numbers without a trailing `.0`; everything else as text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def verify_steps(parsed: ParsedOutput, record: RelevanceRecord) -> dict[str, int]:
    """+1 / −1 per step of `parsed` against the record's gold steps; only `label` without gold steps.

    A missing or unparseable section scores −1. Deterministic: the same output and record give the same scores.
    """
    scores = {"label": 1 if parsed.label == record.label else -1}
    gold = record.gold
    if gold is None:
        return scores
    query_ok = (parsed.constraints is not None
                and (gold.intent is None or parsed.intent == gold.intent)
                and Counter(_hard_keys(parsed.constraints)) == Counter(_hard_keys(gold.constraints)))
    item_ok = (parsed.item_category is not None and parsed.item_category == record.item_category
               and all(normalise_value(v) == normalise_value(item_fact(record, k))
                       for k, v in parsed.item_facts.items()))
    attrs_ok = parsed.attr_verdicts is not None and (
        Counter((c.key, v) for c, v in parsed.attr_verdicts)
        == Counter((c.key, v) for c, v in zip(gold.constraints, gold.attr_verdicts)))
    scores.update(Query=_sign(query_ok), Item=_sign(item_ok), Category=_sign(parsed.category == gold.category),
                  Attributes=_sign(attrs_ok), Verdict=_sign(parsed.cited_rule == gold.decisive_rule))
    return scores


def rule_adherence(parsed: ParsedOutput, record: RelevanceRecord) -> bool | None:
    """§6: the cited rule is the gold decisive rule and the label is what that rule implies; None without gold."""
    if record.gold is None:
        return None
    return parsed.cited_rule == record.gold.decisive_rule and parsed.label == RULE_TIER.get(parsed.cited_rule or "")


def _hard_keys(constraints: tuple[Constraint, ...] | list[Constraint]) -> list[tuple[Any, ...]]:
    return [(*c.key, c.hard) for c in constraints]


def _sign(ok: bool) -> int:
    return 1 if ok else -1


__all__ = ["RULE_TIER", "NOT_STATED", "Constraint", "GoldSteps", "tier_from_verdicts", "decisive_rule",
           "item_fact", "format_value", "normalise_value", "verify_steps", "rule_adherence"]
