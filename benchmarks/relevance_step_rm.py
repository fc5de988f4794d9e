"""The generative step RM's agreement with the offline verifier on held-out steps (relevance.md §4, §10.2), on CPU.

    python benchmarks/relevance_step_rm.py --init RUN [--seed 0] [--prompts 64]

Samples rollouts from the `--init` checkpoint on train prompts, labels each section with the verifier, trains the
judge from the checkpoint's weights on three quarters of the prompts — once on the steps as they come, once with the
majority answer down-sampled (`step_rm.balance`) — and reports agreement, balanced accuracy and the unsure rate on
the held-out quarter. Writes `benchmarks/results/relevance_step_rm_steps<rm-steps>_seed<seed>.json` and prints the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rm-steps", type=int, default=30, help="SFT steps of the judge")
    parser.add_argument("--settings", default="natural,balanced")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rankstack.config import load_yaml
    from rankstack.relevance.data import chat_prompt, prompt_message
    from rankstack.relevance.rl import RLStageConfig, build_judge
    from rankstack.relevance.stage import load_stage_inputs

    command = "python benchmarks/relevance_step_rm.py " + " ".join(sys.argv[1:])
    print(command, flush=True)
    rows = {}
    for setting in args.settings.split(","):
        balance = setting == "balanced"
        config = load_yaml(RLStageConfig, ROOT / "configs" / "relevance" / "srpo_tiny.yaml", {
            "init": args.init, "training.seed": args.seed, "srpo.step_rm.balance": balance,
            "srpo.step_rm.max_prompts": args.prompts, "srpo.step_rm.max_new_tokens": 128,
            "srpo.step_rm.max_steps": args.rm_steps})
        inputs = load_stage_inputs(config.init, config.data)
        prompts = [chat_prompt(inputs.tokenizer, prompt_message(r, inputs.rule_table, inputs.variant,
                                                                inputs.rule_text)) for r in inputs.train_records]
        out = Path(args.out) / f"relevance-step-rm-{setting}-{args.rm_steps}-{args.seed}"
        _, report = build_judge(config, inputs, inputs.train_records, prompts, out)
        rows[setting] = report
        print(json.dumps({"balance": balance, **report}), flush=True)
    result = ROOT / "benchmarks" / "results" / f"relevance_step_rm_steps{args.rm_steps}_seed{args.seed}.json"
    result.write_text(json.dumps({"command": command, "machine": "2-core AMD EPYC CPU, shared with other jobs",
                                  "rows": rows}, indent=1))
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
