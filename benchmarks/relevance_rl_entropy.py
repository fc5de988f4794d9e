"""Policy entropy during SRPO with and without diversified data filtering (relevance.md §4, §10.2), on CPU.

    python benchmarks/relevance_rl_entropy.py --init RUN [--seed 0] [--steps 30]

Two SRPO runs from the same `--init` run and seed, verifier step rewards only (ρ = 1, no step RM, to isolate the
filter): the diversified filter (mixed outcomes and ≥ 2 labels / verdict patterns / entropy ≥ the pool's 30th
percentile, re-balanced) against GRPO's difficulty filter (mixed outcomes only). Plots TRL's logged policy entropy
per step to `benchmarks/results/relevance_rl_entropy_seed<seed>.png` and writes the curves and the pool sizes to
`benchmarks/results/relevance_rl_entropy_seed<seed>.json`; prints the command.
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
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankstack.relevance import train_relevance

    command = "python benchmarks/relevance_rl_entropy.py " + " ".join(sys.argv[1:])
    print(command, flush=True)
    curves = {}
    for name, diversified in (("diversified", True), ("difficulty_only", False)):
        out = Path(args.out) / f"relevance-rl-entropy-{name}-{args.seed}"
        metrics = train_relevance("srpo", ROOT / "configs" / "relevance" / "srpo_tiny.yaml", {
            "data.max_train_examples": args.train_pairs, "training.max_steps": args.steps,
            "training.seed": args.seed, "training.learning_rate": args.lr, "training.logging_steps": 1,
            "diversity.enabled": diversified, "srpo.verifier_share": 1.0, "pool.refresh_steps": 0,
            "rollout.max_completion_length": 128, "eval.generate": False, "data.max_eval_examples": 8}, out,
            init=args.init)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        curves[name] = {"entropy": [row["entropy"] for row in log if "entropy" in row],
                        "pool": metrics["phases"][0]["pool"],
                        "refreshes": metrics["phases"][0].get("refreshes", [])}
        print(name, json.dumps(curves[name]), flush=True)
    results = ROOT / "benchmarks" / "results"
    for name, curve in curves.items():
        plt.plot(range(1, len(curve["entropy"]) + 1), curve["entropy"], label=name)
    plt.xlabel("optimizer step")
    plt.ylabel("policy entropy (nats / token)")
    plt.title(f"SRPO entropy, tiny city, seed {args.seed}")
    plt.legend()
    plt.savefig(results / f"relevance_rl_entropy_seed{args.seed}.png", dpi=100)
    (results / f"relevance_rl_entropy_seed{args.seed}.json").write_text(json.dumps(
        {"command": command, "machine": "2-core AMD EPYC CPU, shared with other jobs", "curves": curves}, indent=1))
    print(f"wrote {results}/relevance_rl_entropy_seed{args.seed}.(png|json)")


if __name__ == "__main__":
    main()
