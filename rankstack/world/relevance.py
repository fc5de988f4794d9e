"""Search relevance in the city: the query bank, the rule engine and the judged query–POI pairs (world.md §2.9,
relevance.md §1).

Queries come from templates per intent type. Each query has an intent category and a list of constraints
`{name, op, value, hard}`:

| op | holds when | verdict if the record is silent |
|---|---|---|
| `eq` brand / district | the item's brand / district equals `value` | — (always stated) |
| `has` attribute | the record states the attribute as present | unknown |
| `not_has` attribute | the record states it as absent | unknown |
| `le` / `lt` price_level | the item's price level is ≤ / < `value` | — |
| `ge` rating (soft) | the item's rating is ≥ `value` | — |

**The rule engine** (`decide`) maps the verdicts to a tier; rules are checked in this order, the first that
applies is the *decisive rule*:

- R1 → 1 Irrelevant: the item's category is unrelated to the intent (another top-level category);
- R3 → 3 Related: the category is a near miss (same top-level category, another sub-category);
- R2 → 2 Mismatch: the category serves the intent but a hard constraint is violated;
- R3 → 3 Related: the category serves the intent, no hard constraint is violated, but a soft preference is
  unmet or a hard constraint cannot be checked (the record is silent);
- R4 → 4 Excellent: the category serves the intent and every constraint holds.

The gold steps of every pair are the verdicts themselves (`gold` JSON), so a verifier can check each step of a
model's reasoning. Candidate POIs are drawn per query from five pools (all constraints hold / a hard one is
violated / other same-category / near-miss / unrelated) so that every tier is represented in each query that
can have it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from rankstack.data.formats import HARD_QUERY_TYPES, QUERY_TYPES
from rankstack.world import city
from rankstack.world.config import WorldConfig
from rankstack.world.places import Districts, Pois

#: The city's rule table (written to `relevance/rules.json`): tier rules R1-R4 and atomic constraint rules.
RULES: dict[str, str] = {
    "R1": "The item's category is unrelated to the query's intent (another top-level category) → 1 Irrelevant.",
    "R2": "The category serves the intent but a hard constraint (brand, required or negated attribute, price "
          "cap, district) is violated → 2 Mismatch.",
    "R3": "The category is a near miss (same top-level category, different sub-category), or it serves the intent "
          "but a soft preference is unmet or a hard constraint cannot be checked from the record → 3 Related.",
    "R4": "The category serves the intent and every constraint holds → 4 Excellent.",
    "C_BRAND": "A brand constraint holds iff the item's brand is that brand.",
    "C_ATTR": "A required attribute holds iff the record states it as present; stated absent → violated; "
              "not stated → unknown.",
    "C_NEG": "A negated attribute ('not spicy') holds iff the record states it as absent; stated present → "
             "violated; not stated → unknown.",
    "C_PRICE": "A price cap ('cheap', 'like X but cheaper') compares price levels 1-4; 'cheaper than X' means "
               "a price level below X's.",
    "C_DISTRICT": "A district constraint ('in Old Town') holds iff the item is in that district.",
    "C_RATING": "A rating preference ('good') holds iff the rating is at least the value.",
    "C_SOFT": "Soft preferences ('cheap', 'good') are wishes: unmet, they lower an otherwise excellent item to 3.",
    "K_MAP": "Knowledge queries name a need, not a category; the city's knowledge table maps the need to a "
             "category (e.g. 'somewhere to charge my car' → Charging station).",
}
_OP_RULE = {"has": "C_ATTR", "not_has": "C_NEG", "le": "C_PRICE", "lt": "C_PRICE", "ge": "C_RATING"}
SATISFIED, VIOLATED, UNKNOWN = 0, 1, 2
VERDICTS = ("satisfied", "violated", "unknown")
_POOL_QUOTA = (3, 3, 1, 3, 2)  # all hold, hard violated, other same-category, near miss, unrelated


@dataclass
class Query:
    num: int
    text: str
    intent_type: str
    cat: int  # category_l2 index of the intent
    constraints: list[dict] = field(default_factory=list)

    @property
    def query_id(self) -> str:
        return f"q{self.num:06d}"

    @property
    def is_hard(self) -> bool:
        return self.intent_type in HARD_QUERY_TYPES


def category_path(cat: int) -> str:
    spec = city.CATEGORIES[cat]
    return f"{spec.l1} > {spec.l2}"


def make_queries(config: WorldConfig, pois: Pois, districts: Districts, rng: np.random.Generator) -> list[Query]:
    """The query bank: `n_queries` queries, hard types at `hard_query_share`, spread evenly within easy/hard."""
    easy = [t for t in QUERY_TYPES if t not in HARD_QUERY_TYPES]
    present = np.bincount(pois.cat, minlength=len(city.CATEGORIES)) > 0
    brands_present = np.unique(pois.brand[pois.brand > 0])
    district_names = districts.names
    queries = []
    for num in range(1, config.n_queries + 1):
        hard = rng.uniform() < config.hard_query_share
        kind = str(rng.choice(HARD_QUERY_TYPES if hard else easy))
        make = _TEMPLATES[kind]
        query = None
        while query is None:  # a template may not fit the drawn category; draw again
            query = make(rng, present, brands_present, district_names)
        text, cat, constraints = query
        queries.append(Query(num, text, kind, cat, constraints))
    return queries


def _draw_category(rng: np.random.Generator, present: np.ndarray, ok: np.ndarray | None = None) -> int:
    weight = city.CAT_POPULARITY * present * (ok if ok is not None else 1.0)
    return int(rng.choice(len(weight), p=weight / weight.sum()))


def _attr_ok(cat: int, attr: str, threshold: float = 0.15) -> bool:
    return city.CATEGORIES[cat].attrs.get(attr, 0.0) >= threshold or (
        attr == "24h" and city.ROUND_THE_CLOCK.get(city.CAT_L2[cat], 0.0) >= threshold)


def _district(names: list[str], rng: np.random.Generator) -> str:
    return str(rng.choice([n for n in names if n != "Airport"] or names))


def _attr_phrase_with(word: str, attr: str) -> str:
    phrase = city.ATTR_PHRASES[attr][0]
    return f"{word} {phrase}" if phrase.startswith(("with", "open", "smoking")) else f"{phrase} {word}"


def _plain(rng, present, brands, districts):
    cat = _draw_category(rng, present)
    word = str(rng.choice(city.CATEGORIES[cat].words))
    variant = rng.integers(4)
    if variant == 0:
        return word, cat, []
    if variant == 1:
        where = _district(districts, rng)
        return f"{word} in {where}", cat, [{"name": "district", "op": "eq", "value": where, "hard": True}]
    if variant == 2:
        return f"cheap {word}", cat, [{"name": "price_level", "op": "le", "value": 2, "hard": False}]
    return f"good {word}", cat, [{"name": "rating", "op": "ge", "value": 4.2, "hard": False}]


def _brand(rng, present, brands, districts):
    b = int(rng.choice(brands))
    name, l2, _ = city.BRANDS[b - 1]
    constraints = [{"name": "brand", "op": "eq", "value": name, "hard": True}]
    if rng.uniform() < 0.4:
        where = _district(districts, rng)
        constraints.append({"name": "district", "op": "eq", "value": where, "hard": True})
        return f"{name} in {where}", city.L2_INDEX[l2], constraints
    return name, city.L2_INDEX[l2], constraints


def _attribute(rng, present, brands, districts):
    cat = _draw_category(rng, present)
    options = [a for a in city.ATTRIBUTES if _attr_ok(cat, a)]
    if not options:
        return None
    attr = str(rng.choice(options))
    text = _attr_phrase_with(str(rng.choice(city.CATEGORIES[cat].words)), attr)
    constraints = [{"name": attr, "op": "has", "value": True, "hard": True}]
    if rng.uniform() < 0.3:
        text = f"cheap {text}"
        constraints.append({"name": "price_level", "op": "le", "value": 2, "hard": False})
    return text, cat, constraints


def _negation(rng, present, brands, districts):
    cat = _draw_category(rng, present)
    options = [a for a in city.ATTRIBUTES if city.ATTR_PHRASES[a][1] and _attr_ok(cat, a)]
    if not options:
        return None
    attr = str(rng.choice(options))
    word = str(rng.choice(city.CATEGORIES[cat].words))
    negation = city.ATTR_PHRASES[attr][1]
    text = f"{negation} {word}" if negation.startswith("non-") else f"{word}, {negation}"
    return text, cat, [{"name": attr, "op": "not_has", "value": True, "hard": True}]


def _alternative(rng, present, brands, districts):
    pricey = [b for b in brands if city.BRANDS[b - 1][2] >= 2]
    if not pricey:
        return None
    b = int(rng.choice(pricey))
    name, l2, price = city.BRANDS[b - 1]
    template = str(rng.choice(["like {b} but cheaper", "cheaper alternative to {b}", "something like {b} for less"]))
    return template.format(b=name), city.L2_INDEX[l2], [
        {"name": "price_level", "op": "lt", "value": price, "hard": True}]


def _question(rng, present, brands, districts):
    cat = _draw_category(rng, present)
    options = [a for a in city.ATTRIBUTES if _attr_ok(cat, a)]
    if not options:
        return None
    attr = str(rng.choice(options))
    word = str(rng.choice(city.CATEGORIES[cat].words))
    phrase = city.ATTR_PHRASES[attr][0]
    described = f"{word} {phrase}" if phrase.startswith(("with", "open", "smoking")) else f"{word} that is {phrase}"
    where = _district(districts, rng)
    return f"is there a {described} in {where}?", cat, [
        {"name": attr, "op": "has", "value": True, "hard": True},
        {"name": "district", "op": "eq", "value": where, "hard": True}]


def _knowledge(rng, present, brands, districts):
    phrase, l2, attrs = city.KNOWLEDGE[int(rng.integers(len(city.KNOWLEDGE)))]
    cat = city.L2_INDEX[l2]
    if not present[cat]:
        return None
    constraints = [{"name": a, "op": "has", "value": True, "hard": True} for a in attrs]
    if rng.uniform() < 0.3:
        where = _district(districts, rng)
        phrase = f"{phrase} near {where}"
        constraints.append({"name": "district", "op": "eq", "value": where, "hard": True})
    return phrase, cat, constraints


_TEMPLATES = {"plain": _plain, "brand": _brand, "attribute": _attribute, "negation": _negation,
              "alternative": _alternative, "question": _question, "knowledge": _knowledge}


def verdicts(constraint: dict, pois: Pois, districts: Districts, idx: np.ndarray) -> np.ndarray:
    """Verdict codes (SATISFIED / VIOLATED / UNKNOWN) of one constraint for the POIs `idx`."""
    name, op, value = constraint["name"], constraint["op"], constraint["value"]
    if name == "brand":
        brand_names = np.array([""] + [b[0] for b in city.BRANDS])
        holds = brand_names[pois.brand[idx]] == value
        return np.where(holds, SATISFIED, VIOLATED)
    if name == "district":
        holds = np.array(districts.names)[pois.district[idx]] == value
        return np.where(holds, SATISFIED, VIOLATED)
    if name == "price_level":
        holds = pois.price[idx] <= value if op == "le" else pois.price[idx] < value
        return np.where(holds, SATISFIED, VIOLATED)
    if name == "rating":
        return np.where(pois.rating[idx] >= value, SATISFIED, VIOLATED)
    a = city.ATTR_INDEX[name]
    present = pois.attrs[idx, a]
    holds = present if op == "has" else ~present
    return np.where(pois.recorded[idx, a], np.where(holds, SATISFIED, VIOLATED), UNKNOWN)


def category_verdict(query_cat: int, item_cat: np.ndarray) -> np.ndarray:
    """'match', 'near_miss' or 'mismatch' per item."""
    same_l1 = city.L1_OF_L2[item_cat] == city.L1_OF_L2[query_cat]
    return np.where(item_cat == query_cat, "match", np.where(same_l1, "near_miss", "mismatch"))


def decide(category: str, verdict_names: list[str], hard: list[bool]) -> tuple[int, str]:
    """The rule engine: (tier, decisive rule) from the category verdict and the constraint verdicts."""
    if category == "mismatch":
        return 1, "R1"
    if category == "near_miss":
        return 3, "R3"
    if any(v == "violated" and h for v, h in zip(verdict_names, hard)):
        return 2, "R2"
    if any((v == "unknown" and h) or (v == "violated" and not h) for v, h in zip(verdict_names, hard)):
        return 3, "R3"
    return 4, "R4"


def query_split(query_id: str) -> str:
    """Whole queries go to one split: 80/10/10 by a stable hash of the query id."""
    bucket = int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "little") % 10
    return "train" if bucket < 8 else ("valid" if bucket == 8 else "test")


def item_attrs_json(pois: Pois, districts: Districts, i: int) -> str:
    """The item record as the relevance stage sees it: stated attributes, district, rating, hours."""
    record: dict[str, object] = {a: bool(pois.attrs[i, k]) for k, a in enumerate(city.ATTRIBUTES)
                                 if pois.recorded[i, k]}
    record.update(district=districts.names[pois.district[i]], rating=float(pois.rating[i]),
                  hours=f"{pois.open_hour[i]:02d}-{pois.close_hour[i]:02d}")
    return json.dumps(record)


def relevance_pairs(config: WorldConfig, queries: list[Query], pois: Pois, districts: Districts,
                    rng: np.random.Generator) -> dict[str, dict[str, list]]:
    """Judged pairs per split, as columns of `relevance_schema`."""
    by_cat = pois.by_category()
    l1 = city.L1_OF_L2[pois.cat]
    near_pools = [np.flatnonzero((l1 == city.L1_OF_L2[c]) & (pois.cat != c)) for c in range(len(by_cat))]
    unrelated_pools = [np.flatnonzero(l1 != city.L1_OF_L2[c]) for c in range(len(by_cat))]
    brand_names = [""] + [b[0] for b in city.BRANDS]
    quota = list(_POOL_QUOTA)
    quota[0] += config.pairs_per_query - sum(_POOL_QUOTA)
    splits: dict[str, dict[str, list]] = {}
    for q in queries:
        match = by_cat[q.cat]
        hard = [bool(c["hard"]) for c in q.constraints]
        codes = np.array([verdicts(c, pois, districts, match) for c in q.constraints]).reshape(len(hard), len(match))
        all_hold = (codes == SATISFIED).all(axis=0)
        hard_violated = ((codes == VIOLATED) & np.array(hard, dtype=bool)[:, None]).any(axis=0)
        pools = [match[all_hold], match[hard_violated], match[~all_hold & ~hard_violated], near_pools[q.cat],
                 unrelated_pools[q.cat]]
        picked: list[int] = []
        carry = 0  # a pool that is too small passes its shortfall on to the next one
        for pool, want in zip(pools, quota):
            take = min(want + carry, len(pool))
            carry = want + carry - take
            picked.extend(rng.choice(pool, size=take, replace=False).tolist())
        idx = np.array(picked, dtype=np.int64)
        item_codes = np.array([verdicts(c, pois, districts, idx) for c in q.constraints]).reshape(len(hard), len(idx))
        rules = ["R1", "R2", "R3", "R4", *dict.fromkeys(r for c in q.constraints for r in constraint_rules(c))]
        if q.intent_type == "knowledge":
            rules.append("K_MAP")
        cols = splits.setdefault(query_split(q.query_id), {k: [] for k in _PAIR_COLUMNS})
        for j, (i, cat_verdict) in enumerate(zip(picked, category_verdict(q.cat, pois.cat[idx]))):
            names = [VERDICTS[c] for c in item_codes[:, j]]
            tier, rule = decide(str(cat_verdict), names, hard)
            gold = {"intent": category_path(q.cat), "constraints": q.constraints, "category": str(cat_verdict),
                    "attr_verdicts": [{"name": c["name"], "verdict": v} for c, v in zip(q.constraints, names)],
                    "decisive_rule": rule}
            cols["pair_id"].append(f"{q.query_id}-p{i + 1:06d}")
            cols["query_id"].append(q.query_id)
            cols["query"].append(q.text)
            cols["query_type"].append(q.intent_type)
            cols["is_hard"].append(float(q.is_hard))
            cols["item_id"].append(str(i + 1))
            cols["item_title"].append(pois.names[i])
            cols["item_category"].append(category_path(int(pois.cat[i])))
            cols["item_brand"].append(brand_names[pois.brand[i]])
            cols["item_price_level"].append(float(pois.price[i]))
            cols["item_attrs"].append(item_attrs_json(pois, districts, i))
            cols["rules"].append(rules)
            cols["label"].append(float(tier))
            cols["gold"].append(json.dumps(gold))
    return splits


def constraint_rules(c: dict) -> list[str]:
    """The atomic rules that judge one constraint."""
    if c["name"] == "brand":
        rules = ["C_BRAND"]
    elif c["name"] == "district":
        rules = ["C_DISTRICT"]
    else:
        rules = [_OP_RULE[c["op"]]]
    return rules if c["hard"] else [*rules, "C_SOFT"]


_PAIR_COLUMNS = ("pair_id", "query_id", "query", "query_type", "is_hard", "item_id", "item_title", "item_category",
                 "item_brand", "item_price_level", "item_attrs", "rules", "label", "gold")
