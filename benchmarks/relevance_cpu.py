"""CPU benchmark of the TaoSR1 ladder on the tiny city (relevance.md §10.1, §10.3), sized for 2 shared cores.

    python benchmarks/relevance_cpu.py [--seed 0] [--sft-steps 300] [--skip-cross-encoder]

One seed per call. Runs, under `runs/bench/relevance-cpu-<seed>/`:
label-first CoT SFT → + DPO → + GRPO, the label-only and think-first SFT variants, and the MiniLM cross-encoder;
then `bench relevance` on every LLM run (CumPT with β tuned on valid, argmax, the labels of the full greedy decode,
hallucination and format-failure rates, single-pass vs decode throughput on the same pairs). The LLM is a small
random Llama (d = 64, 2 layers: what 2 shared cores train in minutes) trained from scratch: no LM pre-training, so expect it to learn the format long
before the tiers. Writes `benchmarks/results/relevance_cpu_seed<seed>.json` and prints the command.
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
MODEL = {"model.hidden_size": 64, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
         "model.intermediate_size": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--sft-batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["label_first", "label_only", "think_first"],
                        help="SFT variants (label_first is needed: DPO and GRPO continue it)")
    parser.add_argument("--dpo-prompts", type=int, default=128)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--eval-pairs", type=int, default=128)
    parser.add_argument("--skip-cross-encoder", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from rankstack.errors import DataError
    from rankstack.relevance import train_relevance
    from rankstack.relevance.bench import bench_run
    from rankstack.world import WorldConfig, generate

    out = Path(args.out) / f"relevance-cpu-{args.seed}"
    world = Path(args.out) / "world-tiny-0"
    if not (world / "relevance").is_dir():
        generate(WorldConfig.preset("tiny"), seed=0, out=world, overwrite=True)
    data = {"data.world_preset": None, "data.dataset": str(world / "relevance"), "data.rule_text": False,
            "data.max_train_examples": None, "data.max_eval_examples": 64}
    sft = {**MODEL, **data, "training.max_steps": args.sft_steps, "training.learning_rate": 5.0e-3,
           "training.batch_size": args.sft_batch_size, "training.seed": args.seed, "training.logging_steps": 25}
    timings: dict[str, float] = {}

    def stage(name: str, *call: object, **kwargs: object) -> dict:
        start = time.perf_counter()
        metrics = train_relevance(*call, **kwargs)
        timings[name] = time.perf_counter() - start
        print(f"[{name}] {timings[name]:.0f} s", flush=True)
        return metrics

    runs = {}
    for variant in dict.fromkeys(["label_first", *args.variants]):
        runs[f"sft_{variant}"] = out / f"sft-{variant}"
        stage(f"sft_{variant}", "sft", CONFIGS / "sft_tiny.yaml", {**sft, "data.variant": variant},
              runs[f"sft_{variant}"])
    runs["dpo"] = out / "dpo"
    stage("dpo", "dpo", CONFIGS / "dpo_tiny.yaml",
          {"data.max_train_examples": args.dpo_prompts, "data.max_eval_examples": 64, "sampling.max_new_tokens": 160,
           "training.max_steps": -1, "training.learning_rate": 1.0e-4, "training.seed": args.seed,
           "eval.max_new_tokens": 160}, runs["dpo"], init=runs["sft_label_first"])
    runs["grpo"] = out / "grpo"
    grpo = {"data.max_train_examples": 256, "data.max_eval_examples": 64, "rollout.num_generations": 8,
            "rollout.prompts_per_step": 8, "rollout.max_completion_length": 160, "pool.refresh_steps": 10,
            "training.max_steps": args.grpo_steps, "training.learning_rate": 1.0e-4, "training.seed": args.seed,
            "eval.max_new_tokens": 160}
    notes = []
    try:
        stage("grpo", "grpo", CONFIGS / "grpo_tiny.yaml", grpo, runs["grpo"], init=runs["dpo"])
    except DataError as err:  # a weak policy fails every pool prompt: the filter keeps too few to train on
        notes.append(f"GRPO difficulty filter kept too few prompts ({err}); GRPO was rerun without the filter.")
        stage("grpo", "grpo", CONFIGS / "grpo_tiny.yaml", {**grpo, "pool.filter": False}, runs["grpo"],
              init=runs["dpo"])

    reports = {}
    for name, run in runs.items():
        start = time.perf_counter()
        reports[name] = bench_run(run, "test", max_examples=args.eval_pairs, decode=True)
        timings[f"bench_{name}"] = time.perf_counter() - start
        print(f"[bench {name}] {timings[f'bench_{name}']:.0f} s", flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "seed": args.seed, "world": "tiny (seed 0)", "model": MODEL, "runs": reports, "timings_s": timings,
              "notes": notes}
    if not args.skip_cross_encoder:
        from rankstack.config import load_yaml
        from rankstack.relevance.cross_encoder import CrossEncoderConfig, train_cross_encoder

        start = time.perf_counter()
        config = load_yaml(CrossEncoderConfig, CONFIGS / "cross_encoder_world.yaml",
                           {"world_preset": None, "dataset": str(world / "relevance"), "seed": args.seed,
                            "max_eval_examples": args.eval_pairs})
        result["cross_encoder"] = train_cross_encoder(config, out / "minilm")
        timings["cross_encoder"] = time.perf_counter() - start
    target = ROOT / "benchmarks" / "results" / f"relevance_cpu_seed{args.seed}.json"
    target.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
