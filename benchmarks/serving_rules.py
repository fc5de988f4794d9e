"""How often the serving path retrieves a query's atomic rules exactly as the world's relevance pairs list them.

    python benchmarks/serving_rules.py --world runs/demo/world [--world /tmp/world-medium-v2]

A served search request has only its text: `rankstack.serving.stages.relevance_rules` reads the rules from the
parsed query (docs/serving.md). For every distinct query of a world's relevance pairs (all splits), this compares
those rules with the pair's own `rules` column (generated from the query's true constraints). Where they agree, a
served pair gets exactly its training prompt. Prints one line per world, and the queries that disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.relevance.data import load_split  # noqa: E402
from rankstack.serving.features import WorldTables  # noqa: E402
from rankstack.serving.stages import QueryParser, relevance_rules  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", action="append", required=True, help="a world folder (repeatable)")
    parser.add_argument("--show", type=int, default=5, help="disagreeing queries printed per world")
    args = parser.parse_args()
    print("command: python " + " ".join(sys.argv))
    for world in args.world:
        query_parser = QueryParser(WorldTables.load(world))
        rules = {r.query: r.rules for split in ("train", "valid", "test")
                 for r in load_split(Path(world) / "relevance", split)}
        misses = [q for q, expected in rules.items() if relevance_rules(query_parser.parse(q)) != expected]
        print(f"{world}: {len(rules) - len(misses)} of {len(rules)} queries get their pairs' rules")
        for query in misses[:args.show]:
            print(f"  differs: {query!r}")


if __name__ == "__main__":
    main()
