"""Can a relevance checkpoint read AGRL's guided-replay hints (relevance.md §5)? Per hint level, answers sampled
with the rollout settings under the unguided prompt (level 0), the tier hint (1) and the tier + deciding-rule hint
(2), on held-out pairs: format failures, label accuracy, hint quotes and the share replay would keep
(`agrl.usable_guided`: correct, well-formed, not quoting the hint).

    python benchmarks/relevance_hints.py --init RUN [--pairs 64] [--samples 4] [--split valid] [--seed 0] \\
        [--result benchmarks/results/relevance_hints.json]

Guided replay can only swap in what this finds usable, so a checkpoint whose level-1/2 usable share is 0 never
replays anything, whatever τ is (BENCHMARKS.md "A fifth device session").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="a relevance run folder or its model/ checkpoint")
    parser.add_argument("--pairs", type=int, default=64, help="held-out pairs (a fixed sample of the split)")
    parser.add_argument("--samples", type=int, default=4, help="answers per pair and level (replay's m)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--temperature", type=float, default=0.99, help="the rollouts' (the configs' default)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rankstack.relevance.agrl import guided_prompt, hint_text, quotes_hint, usable_guided
    from rankstack.relevance.data import chat_prompt, prompt_message
    from rankstack.relevance.evaluate import generate_completions
    from rankstack.relevance.format import parse_output
    from rankstack.relevance.sft import process_device
    from rankstack.relevance.stage import StageDataConfig, load_stage_inputs

    command = "python benchmarks/relevance_hints.py " + " ".join(sys.argv[1:])
    print(command, flush=True)
    inputs = load_stage_inputs(args.init, StageDataConfig(eval_split=args.split, max_eval_examples=args.pairs))
    model, tokenizer, rules, variant = inputs.model.to(process_device()), inputs.tokenizer, inputs.rule_table, \
        inputs.variant
    records = inputs.eval_records
    rows = {}
    for level in (0, 1, 2):
        hints = [hint_text(r, level, rules) if level else "" for r in records]
        prompts = [guided_prompt(tokenizer, r, rules, variant, inputs.rule_text, h) if level else
                   chat_prompt(tokenizer, prompt_message(r, rules, variant, inputs.rule_text))
                   for r, h in zip(records, hints)]
        samples = generate_completions(model, tokenizer, prompts, args.samples, do_sample=True,
                                       temperature=args.temperature, top_k=args.top_k,
                                       batch_size=args.batch_size, seed=args.seed + level)
        counts = {"answers": 0, "malformed": 0, "label_right": 0, "quotes_hint": 0, "usable": 0}
        for record, hint, texts in zip(records, hints, samples):
            for text in texts:
                parsed = parse_output(text, variant)
                counts["answers"] += 1
                counts["malformed"] += not parsed.ok
                counts["label_right"] += parsed.label == record.label
                if level:
                    counts["quotes_hint"] += quotes_hint(text, hint, tokenizer)
                    counts["usable"] += usable_guided(text, record, hint, variant, tokenizer)[0]
        n = counts["answers"]
        rows[f"level{level}"] = {"format_failure_rate": counts["malformed"] / n,
                                 "label_accuracy": counts["label_right"] / n,
                                 **({"hint_quote_rate": counts["quotes_hint"] / n, "usable_rate": counts["usable"] / n}
                                    if level else {}),
                                 "answers": n, "example": samples[0][0]}
        print(json.dumps({"level": level, **{k: v for k, v in rows[f"level{level}"].items() if k != "example"}}),
              flush=True)
    if args.result:
        Path(args.result).write_text(json.dumps({"command": command, "init": str(inputs.checkpoint),
                                                 "pairs": len(records), "rows": rows}, indent=1))
        print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
