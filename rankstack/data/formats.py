"""Schemas shared by several producers, so that every source of one task yields the same columns.

`relevance_schema` is the one format of query–item relevance pairs: the synthetic world's `relevance` table and
the ESCI and WANDS converters all write it, and the relevance stage reads only it (spec: relevance.md §1).
"""

from __future__ import annotations

from rankstack.data.schema import ColumnSpec, Schema

#: Tier names, highest first (relevance.md §1): 4 Excellent, 3 Related, 2 Mismatch, 1 Irrelevant.
TIERS = {4: "Excellent", 3: "Related", 2: "Mismatch", 1: "Irrelevant"}
QUERY_TYPES = ("plain", "brand", "attribute", "negation", "alternative", "question", "knowledge")
HARD_QUERY_TYPES = ("negation", "alternative", "question", "knowledge")


def relevance_schema(name: str, splits: tuple[str, ...] = ("train", "valid", "test")) -> Schema:
    """Query–item pairs with a 4-tier label and, where known, the gold reasoning steps.

    `gold` is a JSON string `{constraints: [{name, op, value, hard}], category: match|near_miss|mismatch,
    attr_verdicts: [{name, verdict: satisfied|violated|unknown}], decisive_rule: rule_id}`, or "" when the
    source has no step annotations (ESCI, WANDS). `item_attrs` is a JSON object string; `rules` lists the ids of
    the atomic rules relevant to the pair.
    """
    columns = [
        ColumnSpec("pair_id", "categorical", "key", dtype="string"),
        ColumnSpec("query_id", "categorical", "key", dtype="string"),
        ColumnSpec("query", "text", "context", description="the query as typed"),
        ColumnSpec("query_type", "categorical", "context", dtype="string",
                   description=f"one of {', '.join(QUERY_TYPES)}, or `unknown` for sources without types"),
        ColumnSpec("is_hard", "numeric", "meta", description="1 for the hard query types"),
        ColumnSpec("item_id", "categorical", "key", dtype="string"),
        ColumnSpec("item_title", "text", "item"),
        ColumnSpec("item_category", "text", "item", description="category path, `l1 > l2`"),
        ColumnSpec("item_brand", "text", "item", description="brand, or empty"),
        ColumnSpec("item_price_level", "numeric", "item", description="1-4, or 0 when unknown"),
        ColumnSpec("item_attrs", "text", "item", description="JSON object of attributes"),
        ColumnSpec("rules", "sequence", "meta", dtype="string", max_len=16,
                   description="ids of the atomic relevance rules that apply to this pair"),
        ColumnSpec("label", "numeric", "label", description="tier 4 Excellent, 3 Related, 2 Mismatch, 1 Irrelevant"),
        ColumnSpec("gold", "text", "meta", description="gold reasoning steps as JSON, or empty"),
    ]
    return Schema(name=name, columns=columns, splits=list(splits), request_key="query_id",
                  description="query-item relevance pairs (rankstack relevance format)")
