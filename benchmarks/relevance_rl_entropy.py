"""Policy entropy during SRPO with and without diversified data filtering (relevance.md §4, §10.2), on CPU.

    python benchmarks/relevance_rl_entropy.py --init RUN [--seed 0] [--steps 30] [--lr 3e-4]
    python benchmarks/relevance_rl_entropy.py --summary 0 1 2 [--logs OUT]  # the seeds' curves in one plot, and stats

Two SRPO runs from the same `--init` run and seed, verifier step rewards only (ρ = 1, no step RM, to isolate the
filter): the diversified filter (mixed outcomes and ≥ 2 labels / verdict patterns / entropy ≥ the pool's 30th
percentile, re-balanced, re-filtered when the entropy falls below `diversity.collapse_ratio` of its start) against
GRPO's difficulty filter (mixed outcomes only). Plots TRL's logged policy entropy per step to
`benchmarks/results/relevance_rl_entropy_seed<seed>.png` and writes the curves and the pool sizes to
`benchmarks/results/relevance_rl_entropy_seed<seed>.json`; prints the command. `--summary SEEDS` reads those JSONs
and writes `relevance_rl_entropy.png` (each arm's mean over the seeds, the seeds' range shaded) and
`relevance_rl_entropy_summary.json`: per seed and arm, the entropy at the start, over the last 20 % of the steps,
its minimum, the steps below half the start (the collapse the diversified arm re-filters on), the prompts kept, and
with `--logs` (the runs' `--out`) the final KL to the start and the format failures over the last 20 % of the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ARMS = (("diversified", True), ("difficulty_only", False))


def entropy_stats(entropy: list[float]) -> dict[str, float]:
    """Start, tail mean (last 20 % of the steps), minimum, and the share of steps below half the start."""
    tail = entropy[-max(1, len(entropy) // 5):]
    return {"start": entropy[0], "tail_mean": sum(tail) / len(tail), "min": min(entropy),
            "share_below_half_start": sum(e < 0.5 * entropy[0] for e in entropy) / len(entropy)}


def drift(log: Path) -> dict[str, float]:
    """From a run's train_log.jsonl: the KL to the start at the last step, and the share of answers that failed the
    parser over the last 20 % of the steps."""
    steps = [row for row in map(json.loads, log.read_text().splitlines()) if "entropy" in row]
    tail = steps[-max(1, len(steps) // 5):]
    return {"final_kl": steps[-1]["kl"], "tail_format_failure": sum(r["format_failure"] for r in tail) / len(tail)}


def summarize(seeds: list[int], logs: Path | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = {seed: json.loads((RESULTS / f"relevance_rl_entropy_seed{seed}.json").read_text()) for seed in seeds}
    command = "python benchmarks/relevance_rl_entropy.py --summary " + " ".join(map(str, seeds))
    summary: dict = {"command": command + (f" --logs {logs}" if logs else ""),
                     "runs": {seed: run["command"] for seed, run in runs.items()}, "arms": {}}
    for name, _ in ARMS:
        curves = [run["curves"][name]["entropy"] for run in runs.values()]
        steps = min(map(len, curves))
        stack = np.array([c[:steps] for c in curves])
        per_seed = {seed: entropy_stats(c) | {"refilters": len(runs[seed]["curves"][name]["refreshes"]),
                                              "kept": runs[seed]["curves"][name]["pool"]["kept"]}
                    | (drift(logs / f"relevance-rl-entropy-{name}-{seed}" / "train_log.jsonl") if logs else {})
                    for seed, c in zip(runs, curves)}
        summary["arms"][name] = {"per_seed": per_seed, "tail_mean": float(np.mean(
            [s["tail_mean"] for s in per_seed.values()])), "tail_std": float(np.std(
                [s["tail_mean"] for s in per_seed.values()], ddof=1)) if len(seeds) > 1 else 0.0}
        x = np.arange(1, steps + 1)
        plt.plot(x, stack.mean(0), label=f"{name} (mean of {len(seeds)} seeds)")
        plt.fill_between(x, stack.min(0), stack.max(0), alpha=0.2)
    plt.xlabel("optimizer step")
    plt.ylabel("policy entropy (nats / token)")
    plt.title("SRPO entropy with and without diversified filtering, tiny city")
    plt.legend()
    plt.savefig(RESULTS / "relevance_rl_entropy.png", dpi=100)
    (RESULTS / "relevance_rl_entropy_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["arms"], indent=1))
    print(f"wrote {RESULTS}/relevance_rl_entropy.png and relevance_rl_entropy_summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="the SFT (or DPO) run both arms start from")
    parser.add_argument("--summary", type=int, nargs="+", metavar="SEED",
                        help="plot and tabulate the runs of these seeds instead of training")
    parser.add_argument("--logs", type=Path,
                        help="with --summary: the runs' --out folder, to add each run's final KL and format failures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    if args.summary:
        summarize(args.summary, args.logs)
        return
    if not args.init:
        parser.error("--init is required unless --summary is given")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankstack.relevance import train_relevance

    command = "python benchmarks/relevance_rl_entropy.py " + " ".join(sys.argv[1:])
    print(command, flush=True)
    curves = {}
    for name, diversified in ARMS:
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
    for name, curve in curves.items():
        plt.plot(range(1, len(curve["entropy"]) + 1), curve["entropy"], label=name)
    plt.xlabel("optimizer step")
    plt.ylabel("policy entropy (nats / token)")
    plt.title(f"SRPO entropy, tiny city, seed {args.seed}")
    plt.legend()
    plt.savefig(RESULTS / f"relevance_rl_entropy_seed{args.seed}.png", dpi=100)
    (RESULTS / f"relevance_rl_entropy_seed{args.seed}.json").write_text(json.dumps(
        {"command": command, "machine": "2-core AMD EPYC CPU, shared with other jobs", "curves": curves}, indent=1))
    print(f"wrote {RESULTS}/relevance_rl_entropy_seed{args.seed}.(png|json)")


if __name__ == "__main__":
    main()
