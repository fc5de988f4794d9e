"""GRPO vs SRPO vs AGRL vs SRPO+AGRL from one relevance checkpoint, on CPU (relevance.md §10.2), sized for 2 shared
cores.

    python benchmarks/relevance_rl.py --init RUN [--seed 0] [--steps 30] [--arms grpo,srpo,agrl,srpo_agrl]
        [--set rollout.num_generations=8 ...] [--result FILE]

On a CUDA card the arms train in bf16 (`benchmarks/gpu_relevance.sh` runs them for a ~94M model, one process per
arm and seed).

Every arm starts from the same `--init` run (an SFT or DPO run of `rankstack train relevance`), draws the same pool
(class-balanced train pairs, GRPO's difficulty filter from K = 8 samples) and spends the same number of optimizer
steps × prompts × G rollouts; AGRL's guided replay samples extra hinted rollouts on top, counted in the row. Each
arm is evaluated before and after on the eval split by greedy decoding: macro-F1 overall and on the hard query
types, step accuracy, rule adherence, discriminative-hallucination and format-failure rates. The SRPO arms also
report the generative step RM's agreement with the verifier on held-out rollouts. Writes one JSON row per arm to
`benchmarks/results/relevance_rl_seed<seed>.json` (or `--result`) and prints the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "relevance"
ARMS = {"grpo": ("grpo", "grpo_tiny.yaml"), "srpo": ("srpo", "srpo_tiny.yaml"), "agrl": ("agrl", "agrl_tiny.yaml"),
        "srpo_agrl": ("srpo", "srpo_agrl_tiny.yaml")}
REPORTED = ("macro_f1", "accuracy", "macro_f1/hard", "format_failure_rate", "hallucination_rate", "rule_adherence",
            "step_accuracy/label", "step_accuracy/Query", "step_accuracy/Item", "step_accuracy/Category",
            "step_accuracy/Attributes", "step_accuracy/Verdict")


def summary(report: dict) -> dict:
    generation = report.get("generation", {})
    return {k: generation.get(k) for k in REPORTED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="the SFT or DPO run every arm starts from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--eval-pairs", type=int, default=228)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a config override for every arm (after the script's own)")
    parser.add_argument("--result", help="the JSON to write (default benchmarks/results/relevance_rl_seed<seed>.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rankstack.config import parse_override
    from rankstack.relevance import train_relevance

    cuda = torch.cuda.is_available()

    command = "python benchmarks/relevance_rl.py " + " ".join(sys.argv[1:])
    print(command, flush=True)
    shared = {"data.max_train_examples": args.train_pairs, "data.eval_split": args.eval_split,
              "data.max_eval_examples": args.eval_pairs, "training.max_steps": args.steps, "training.seed": args.seed,
              "training.learning_rate": args.lr,
              "training.logging_steps": 1, "pool.refresh_steps": 0, "rollout.max_completion_length": 128,
              "eval.max_new_tokens": 128, "training.bf16": cuda}
    shared.update(parse_override(text) for text in args.set)
    rows = []
    for arm in args.arms.split(","):
        stage, config = ARMS[arm]
        overrides = dict(shared)
        if arm != "grpo":
            overrides["diversity.enabled"] = False  # the same difficulty-filtered pool as GRPO
        out = Path(args.out) / f"relevance-rl-{arm}-{args.seed}"
        start = time.time()
        metrics = train_relevance(stage, CONFIGS / config, overrides, out, init=args.init)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        steps = [row for row in log if "reward" in row]
        guided = sum(row.get("replay/swapped_rows", 0) for row in steps)
        rows.append({"arm": arm, "seed": args.seed, "init": args.init, "steps": metrics["steps"],
                     "wall_s": round(time.time() - start, 1), "before": summary(metrics["before"]),
                     "after": summary(metrics["after"]), "swapped_guided_rollouts": guided,
                     "entropy": [row.get("entropy") for row in steps], "reward": [row.get("reward") for row in steps],
                     "step_rm": metrics.get("step_rm", {}), "pool": metrics.get("pool", {})})
        print(json.dumps({k: rows[-1][k] for k in ("arm", "wall_s", "before", "after")}), flush=True)
    result = Path(args.result) if args.result else ROOT / "benchmarks" / "results" / f"relevance_rl_seed{args.seed}.json"
    machine = torch.cuda.get_device_name(0) if cuda else f"CPU, {os.cpu_count()} cores"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
