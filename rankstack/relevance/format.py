"""The relevance output format: its grammar, a strict parser and the first-token label distribution
(relevance.md §2; the section spans serve SRPO §4, the verdicts the rule-aware rewards §5).

A label-first completion (the default; TaoSR1's post-CoT order) is the tier, then five one-line sections:

    2
    [Query] wants: Food > Noodles; hard constraints: not spicy; soft preferences: price_level <= 2
    [Item] category: Food > Noodles; record: spicy = yes, price_level = 3
    [Category] match: the item is Food > Noodles, the query wants Food > Noodles
    [Attributes] not spicy: violated; price_level <= 2: violated
    [Verdict] R2: the category fits but a hard constraint is violated, so 2.

`think_first` puts the five sections first and ends with `Label: k`; `label_only` is the bare digit.

**Grammar.** Each section body is a list of clauses joined by "; ". In [Query] and [Item] a clause is
`lead: payload`; the lead is free wording (the paraphrase templates in `data.py` vary it), the payload is canonical.
[Query]: the first clause's payload is the intent category; later clauses list constraints (", "-separated atoms)
and are hard when their lead contains one of `HARD_LEADS`, soft for `SOFT_LEADS`; a payload `none` lists nothing.
Constraint atoms: `has <attr>`, `not <attr>`, `<name> = <value>`, `<name> <= <n>`, `<name> < <n>`,
`<name> >= <n>`. [Item]: the first payload is the item's category path, later payloads are facts `<name> = <value>`
(`yes` / `no` / `not stated` for attributes). [Category]: exactly one of `CATEGORY_VERDICTS` as a word.
[Attributes]: `<atom><sep><verdict>` clauses with sep one of ": ", " -> ", " is ", or `none`. [Verdict]: cites a
rule `R<n>`, may state the tier as its last digit, and ends with a full stop.

**Parser errors** (named, so the rewards and the format-failure rate can count them): `no_label`,
`missing_section:<name>`, `order` (a section out of order or repeated), `bad_verdict` (a category or constraint
verdict that is not a known word), `bad_section:<name>` (a section whose content does not follow the grammar),
`truncated` (the output stops before its final element is complete), `trailing` (text after the final element),
`stray_text` (a line between sections that is no section).

**Label distribution.** p(k | x) = softmax over the logits of the four label tokens at the last prompt position,
from one forward pass (TaoSR1 serving, §3.4).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rankstack.errors import ConfigError
from rankstack.relevance.rules import Constraint, format_value, tier_from_verdicts

LABELS = (1, 2, 3, 4)
SECTIONS = ("Query", "Item", "Category", "Attributes", "Verdict")
STEPS = ("label", *SECTIONS)
VARIANTS = ("label_first", "think_first", "label_only")
CATEGORY_VERDICTS = ("match", "near_miss", "mismatch")
ATTR_VERDICTS = ("satisfied", "violated", "unknown")
HARD_LEADS = ("hard", "must", "required")
SOFT_LEADS = ("soft", "nice to have", "preferred")
NONE = "none"
CLAUSE_SEP = "; "
ATOM_SEP = ", "
LEAD_SEP = ": "
ATTR_SEPS = (": ", " -> ", " is ")
LABEL_PREFIX = "Label: "

_OP_SYMBOL = {"eq": "=", "le": "<=", "lt": "<", "ge": ">="}
_SYMBOL_OP = {v: k for k, v in _OP_SYMBOL.items()}
_ATOM = re.compile(r"(?:(?P<unary>has|not) (?P<attr>\w+)|(?P<name>\w+) (?P<sym><=|>=|<|=) (?P<value>\S.*))")
_FACT = re.compile(r"(?P<name>\w+) = (?P<value>\S.*)")
_SECTION_LINE = re.compile(r"\[(?P<name>\w+)\] ?(?P<body>.*)")
_ATTR_CLAUSE = re.compile(r"(?P<atom>.+?)(?::| ->| is) (?P<verdict>\S+)")
_CATEGORY_WORD = re.compile(r"\b(near_miss|mismatch|match)\b")
_RULE = re.compile(r"\b(R\d+)\b")
_TIER = re.compile(r"(?<![\w.])([1-4])(?![\w])")


def constraint_text(constraint: Constraint) -> str:
    """The canonical atom of a constraint: `has wifi`, `not spicy`, `brand = Lumen Coffee`, `price_level <= 2`."""
    if constraint.op == "has":
        return f"has {constraint.name}"
    if constraint.op == "not_has":
        return f"not {constraint.name}"
    if constraint.op not in _OP_SYMBOL:
        raise ValueError(f"constraint op `{constraint.op}` has no text form; known ops: has, not_has, "
                         f"{', '.join(_OP_SYMBOL)}.")
    return f"{constraint.name} {_OP_SYMBOL[constraint.op]} {format_value(constraint.value)}"


def parse_constraint(text: str, hard: bool) -> Constraint | None:
    """The constraint an atom states, or None when it does not follow the atom grammar."""
    match = _ATOM.fullmatch(text.strip())
    if match is None:
        return None
    if match["unary"]:
        return Constraint(match["attr"], "has" if match["unary"] == "has" else "not_has", True, hard)
    return Constraint(match["name"], _SYMBOL_OP[match["sym"]], _parse_value(match["value"]), hard)


def _parse_value(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass
class ParsedOutput:
    """What a completion says, step by step, and what is malformed in it.

    `spans` maps `label` and each section present to its character span `[start, end)` in the text (a section's
    span runs from its `[` to the end of its line, newline excluded), for SRPO's per-step token advantages.
    Fields of a section that is missing or does not parse stay None (or empty).
    """

    variant: str
    label: int | None = None
    sections: dict[str, str] = field(default_factory=dict)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    intent: str | None = None
    constraints: list[Constraint] | None = None
    item_category: str | None = None
    item_facts: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    attr_verdicts: list[tuple[Constraint, str]] | None = None
    cited_rule: str | None = None
    verdict_tier: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Well-formed: no error of any kind."""
        return not self.errors

    def step_parsed(self, step: str) -> bool:
        """Whether `step` is present and its content follows the grammar."""
        if step == "label":
            return self.label is not None
        return step in self.sections and f"bad_section:{step}" not in self.errors

    def _error(self, name: str) -> None:
        if name not in self.errors:
            self.errors.append(name)


def parse_output(text: str, variant: str = "label_first") -> ParsedOutput:
    """Parse a completion (decoded without special tokens) strictly; see the module docstring for the grammar."""
    if variant not in VARIANTS:
        raise ValueError(f"variant `{variant}` is not one of {', '.join(VARIANTS)}.")
    out = ParsedOutput(variant)
    if variant == "label_only":
        if text[:1] in {str(k) for k in LABELS}:
            out.label, out.spans["label"] = int(text[0]), (0, 1)
            if text[1:].strip():
                out._error("trailing")
        else:
            out._error("no_label")
            if not text.strip():
                out._error("truncated")
        return out

    start = 0
    if variant == "label_first":
        if re.match(r"[1-4](?:\n|$)", text):
            out.label, out.spans["label"] = int(text[0]), (0, 1)
            start = 2
        else:
            out._error("no_label")
            if not text.startswith("["):  # skip a malformed label line rather than also calling it stray text
                newline = text.find("\n")
                start = len(text) if newline < 0 else newline + 1
    done = False  # the final element (the Verdict line, or the Label line for think_first) has been read
    for line_start, line in _lines(text, start):
        if done:
            if line.strip():
                out._error("trailing")
                break
            continue
        if variant == "think_first" and line.startswith(LABEL_PREFIX):
            digit = line[len(LABEL_PREFIX):]
            if digit in {str(k) for k in LABELS}:
                out.label = int(digit)
                out.spans["label"] = (line_start + len(LABEL_PREFIX), line_start + len(line))
            else:
                out._error("no_label")
            done = True
            continue
        match = _SECTION_LINE.fullmatch(line)
        if match is None or match["name"] not in SECTIONS:
            if line.strip():
                out._error("stray_text")
            continue
        name = match["name"]
        if name in out.sections:
            out._error("order")
            continue
        if out.sections and SECTIONS.index(name) < SECTIONS.index(list(out.sections)[-1]):
            out._error("order")
        out.sections[name] = match["body"]
        out.spans[name] = (line_start, line_start + len(line))
        if name == "Verdict" and variant == "label_first":
            done = True

    for name in SECTIONS:
        if name not in out.sections:
            out._error(f"missing_section:{name}")
    if variant == "think_first" and out.label is None:
        out._error("no_label")
    if not done or not out.sections.get("Verdict", ".").rstrip().endswith("."):
        out._error("truncated")
    _parse_sections(out)
    return out


def _lines(text: str, start: int) -> list[tuple[int, str]]:
    lines = []
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        lines.append((start, text[start:end]))
        start = end + 1
    return lines


def _lead_kind(lead: str) -> bool | None:
    """True for a hard-constraint lead, False for a soft one, None when it is neither or both."""
    lead = lead.lower()
    hard = any(re.search(rf"\b{w}\b", lead) for w in HARD_LEADS)
    soft = any(re.search(rf"\b{w}\b", lead) for w in SOFT_LEADS)
    return None if hard == soft else hard


def _parse_sections(out: ParsedOutput) -> None:
    if "Query" in out.sections:
        _parse_query(out, out.sections["Query"])
    if "Item" in out.sections:
        _parse_item(out, out.sections["Item"])
    if "Category" in out.sections:
        words = set(_CATEGORY_WORD.findall(out.sections["Category"]))
        if len(words) == 1:
            out.category = words.pop()
        else:
            out._error("bad_verdict")
    if "Attributes" in out.sections:
        _parse_attributes(out, out.sections["Attributes"])
    if "Verdict" in out.sections:
        body = out.sections["Verdict"]
        rule = _RULE.search(body)
        if rule is None:
            out._error("bad_section:Verdict")
        else:
            out.cited_rule = rule[1]
        tiers = _TIER.findall(body)
        out.verdict_tier = int(tiers[-1]) if tiers else None


def _parse_query(out: ParsedOutput, body: str) -> None:
    first, *rest = body.split(CLAUSE_SEP)
    _, sep, intent = first.partition(LEAD_SEP)
    ok = bool(sep and intent.strip())
    out.intent = intent.strip() if ok else None
    constraints = []
    for clause in rest:
        lead, sep, payload = clause.partition(LEAD_SEP)
        if not sep:
            ok = False
            continue
        if payload.strip() == NONE:
            continue
        hard = _lead_kind(lead)
        atoms = [parse_constraint(a, bool(hard)) for a in payload.split(ATOM_SEP)]
        if hard is None or any(a is None for a in atoms):
            ok = False
            continue
        constraints.extend(a for a in atoms if a is not None)
    if ok:
        out.constraints = constraints
    else:
        out._error("bad_section:Query")


def _parse_item(out: ParsedOutput, body: str) -> None:
    first, *rest = body.split(CLAUSE_SEP)
    _, sep, category = first.partition(LEAD_SEP)
    ok = bool(sep and category.strip())
    for clause in rest:
        _, sep, payload = clause.partition(LEAD_SEP)
        if not sep:
            ok = False
            continue
        if payload.strip() == NONE:
            continue
        for fact in payload.split(ATOM_SEP):
            match = _FACT.fullmatch(fact.strip())
            if match is None:
                ok = False
            else:
                out.item_facts[match["name"]] = match["value"].strip()
    if ok:
        out.item_category = category.strip()
    else:
        out._error("bad_section:Item")


def _parse_attributes(out: ParsedOutput, body: str) -> None:
    if body.strip() == NONE:
        out.attr_verdicts = []
        return
    hardness = {c.key: c.hard for c in out.constraints or []}
    verdicts, ok, verdicts_ok = [], True, True
    for clause in body.split(CLAUSE_SEP):
        match = _ATTR_CLAUSE.fullmatch(clause.strip())
        atom = parse_constraint(match["atom"], True) if match else None
        if atom is None:
            ok = False
            continue
        if match["verdict"] not in ATTR_VERDICTS:
            verdicts_ok = False
            continue
        # A constraint the Query section does not list counts as hard: the stricter reading.
        atom = Constraint(atom.name, atom.op, atom.value, hardness.get(atom.key, True))
        verdicts.append((atom, match["verdict"]))
    if not ok:
        out._error("bad_section:Attributes")
    if not verdicts_ok:
        out._error("bad_verdict")
    if ok and verdicts_ok:
        out.attr_verdicts = verdicts


def own_tier(parsed: ParsedOutput) -> int | None:
    """The tier the rule engine gives the output's own category and constraint verdicts; None if unparsed."""
    if parsed.category is None or parsed.attr_verdicts is None:
        return None
    return tier_from_verdicts(parsed.category, [v for _, v in parsed.attr_verdicts],
                              [c.hard for c, _ in parsed.attr_verdicts])


def discriminative_hallucination(parsed: ParsedOutput) -> bool | None:
    """True when the label contradicts the output's own verdicts (§6); None when either cannot be read."""
    tier = own_tier(parsed)
    if tier is None or parsed.label is None:
        return None
    return parsed.label != tier


def label_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of the labels 1, 2, 3, 4; each label must be exactly one token."""
    ids = []
    for k in LABELS:
        encoded = tokenizer.encode(str(k), add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(f"the tokenizer splits label `{k}` into {len(encoded)} tokens {encoded}; the relevance "
                              "format needs each label 1-4 to be a single token (train the tokenizer with "
                              "`rankstack.relevance.tokenizer.train_tokenizer`, which isolates digits).")
        ids.append(encoded[0])
    return ids


def label_distribution(logits_or_model: torch.Tensor | torch.nn.Module, label_ids: Sequence[int],
                       input_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """p(k | x) for k = 1..4, shape (B, 4): a softmax over the four label logits at the last position.

    Pass logits (B, V) or (B, T, V) — taken at position −1 — or a causal LM with a left-padded batch of prompts
    (`input_ids`, `attention_mask`), which runs one forward pass without gradients and computes the logits of the
    last position only.
    """
    if isinstance(logits_or_model, torch.Tensor):
        logits = logits_or_model
    else:
        if input_ids is None or attention_mask is None:
            raise ValueError("label_distribution(model, ...) needs `input_ids` and `attention_mask` of a left-padded "
                             "batch of prompts.")
        if attention_mask[:, -1].eq(0).any():
            raise ValueError("the prompts must be left-padded (the last position of every row is a real token); "
                             "set tokenizer.padding_side = 'left'.")
        model = logits_or_model
        # Positions count real tokens only, as generate() does, so a padded row sees the positions it would alone.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, **kwargs).logits
    if logits.dim() == 3:
        logits = logits[:, -1]
    ids = torch.as_tensor(list(label_ids), device=logits.device)
    return torch.softmax(logits.index_select(-1, ids).float(), dim=-1)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


__all__ = [
    "LABELS", "SECTIONS", "STEPS", "VARIANTS", "CATEGORY_VERDICTS", "ATTR_VERDICTS", "HARD_LEADS", "SOFT_LEADS",
    "NONE", "CLAUSE_SEP", "ATOM_SEP", "LEAD_SEP", "ATTR_SEPS", "LABEL_PREFIX", "ParsedOutput", "constraint_text",
    "parse_constraint", "parse_output", "own_tier", "discriminative_hallucination", "label_token_ids",
    "label_distribution",
]
