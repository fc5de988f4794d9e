"""The TaoSR1 ladder on the city (relevance.md §10.1, §10.3): sized for 2 shared cores by default, or a ~94M
model on the small city on a CUDA card.

    python benchmarks/relevance_cpu.py [--seed 0] [--sft-steps 300] [--skip-cross-encoder]
    python benchmarks/relevance_cpu.py --model 100m --world small --sft-steps 700 --sft-batch-size 32 \
        --sft-lr 3e-4 --dpo-lr 1e-5 --grpo-lr 3e-6 --gen-batch-size 128 --eval-pairs 256 \
        --skip-cross-encoder                                                  # on a GPU (bf16)

One seed per call. Runs, under `runs/bench/relevance-cpu-<seed>/`:
label-first CoT SFT → + DPO → + GRPO, the label-only and think-first SFT variants, and the MiniLM cross-encoder;
then `bench relevance` on every LLM run (CumPT with β tuned on valid, argmax, the labels of the full greedy decode,
hallucination and format-failure rates, single-pass vs decode throughput on the same pairs). The LLM is a small
random Llama (d = 64, 2 layers: what 2 shared cores train in minutes) trained from scratch: no LM pre-training, so expect it to learn the format long
before the tiers. `--model 100m` is `relevance_gpu.py`'s ~94M Llama (d = 768, 12 layers), which does learn the
tiers from scratch in a few hundred steps on a GPU. Writes `benchmarks/results/relevance_cpu_seed<seed>.json`
(or `--result`) after every stage, so a run cut short keeps what it finished, and prints the command.
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
MODELS = {
    "tiny": {"model.hidden_size": 64, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
             "model.intermediate_size": 128},
    "100m": {"model.hidden_size": 768, "model.num_layers": 12, "model.num_heads": 12, "model.num_kv_heads": 4,
             "model.intermediate_size": 2688, "model.max_position_embeddings": 1024, "tokenizer.vocab_size": 8000},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--sft-batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["label_first", "label_only", "think_first"],
                        help="SFT variants (label_first is needed: DPO and GRPO continue it)")
    parser.add_argument("--dpo-prompts", type=int, default=128)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--grpo-refresh-steps", type=int, default=10, help="steps between difficulty-pool refreshes")
    parser.add_argument("--eval-pairs", type=int, default=128)
    parser.add_argument("--gen-batch-size", type=int, default=16,
                        help="sequences per generate() call (pass@N sampling, the GRPO pool filter, evaluation)")
    parser.add_argument("--skip-cross-encoder", action="store_true")
    parser.add_argument("--chain", choices=["full", "dpo", "sft", "none"], default="full",
                        help="the label-first chain to run: SFT → DPO → GRPO, SFT → DPO, SFT only, or none (variants "
                             "only)")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--world", default="tiny", help="world preset (seed 0) the pairs come from")
    parser.add_argument("--sft-lr", type=float, default=5.0e-3)
    parser.add_argument("--dpo-lr", type=float, default=1.0e-4)
    parser.add_argument("--dpo-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further DPO setting (e.g. training.nll_weight=1.0); repeatable")
    parser.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further setting of every SFT run (e.g. data.hint_share=0.5); repeatable")
    parser.add_argument("--sft-run", help="start the chain from this label-first SFT run instead of training one")
    parser.add_argument("--name", default="", help="suffix of the run folder (DPO arms from one --sft-run)")
    parser.add_argument("--grpo-lr", type=float, default=1.0e-4)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--result", help="the JSON to write (default benchmarks/results/relevance_cpu_seed<seed>.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from rankstack.config import parse_override
    from rankstack.errors import DataError
    from rankstack.relevance import train_relevance
    from rankstack.relevance.bench import bench_run
    from rankstack.world import WorldConfig, generate

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else None
    suffix = "" if (args.model, args.world) == ("tiny", "tiny") else f"-{args.model}-{args.world}"
    out = Path(args.out) / f"relevance-cpu{suffix}-{args.seed}{args.name}"
    world = Path(args.out) / f"world-{args.world}-0"
    if not (world / "relevance").is_dir():
        generate(WorldConfig.preset(args.world), seed=0, out=world, overwrite=True)
    data = {"data.world_preset": None, "data.dataset": str(world / "relevance"), "data.rule_text": False,
            "data.max_train_examples": None, "data.max_eval_examples": 64}
    sft = {**MODELS[args.model], **data, "training.max_steps": args.sft_steps, "training.learning_rate": args.sft_lr,
           "training.batch_size": args.sft_batch_size, "training.seed": args.seed, "training.logging_steps": 25,
           "training.bf16": cuda, **dict(map(parse_override, args.sft_set))}
    timings: dict[str, float] = {}
    target = Path(args.result) if args.result else ROOT / "benchmarks" / "results" / f"relevance_cpu_seed{args.seed}.json"
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "seed": args.seed, "world": f"{args.world} (seed 0)", "model": MODELS[args.model],
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "runs": {}, "stages": {},
              "timings_s": timings,
              "notes": []}

    def save() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))

    def stage(name: str, *call: object, **kwargs: object) -> dict:
        start = time.perf_counter()
        metrics = train_relevance(*call, **kwargs)
        timings[name] = time.perf_counter() - start
        result["stages"][name] = {k: metrics[k] for k in ("sampling", "steps", "first_logged", "last_logged",
                                                          "tokens_per_s") if k in metrics}
        print(f"[{name}] {timings[name]:.0f} s", flush=True)
        save()
        return metrics

    def bench(name: str, run: Path) -> None:
        start = time.perf_counter()
        result["runs"][name] = bench_run(run, "test", max_examples=args.eval_pairs, decode=True, device=device,
                                         batch_size=args.gen_batch_size)
        timings[f"bench_{name}"] = time.perf_counter() - start
        print(f"[bench {name}] {timings[f'bench_{name}']:.0f} s", flush=True)
        save()

    # The label-first chain first (SFT → DPO → GRPO), then the other SFT variants, each benched as it finishes.
    chain = Path(args.sft_run) if args.sft_run else out / "sft-label_first"
    if args.chain != "none" and not args.sft_run:
        stage("sft_label_first", "sft", CONFIGS / "sft_tiny.yaml", {**sft, "data.variant": "label_first"}, chain)
        bench("sft_label_first", chain)
    if args.chain in ("full", "dpo"):
        stage("dpo", "dpo", CONFIGS / "dpo_tiny.yaml",
              {"data.max_train_examples": args.dpo_prompts, "data.max_eval_examples": 64,
               "sampling.max_new_tokens": 160,
               "training.max_steps": -1, "training.learning_rate": args.dpo_lr, "training.seed": args.seed,
               "sampling.batch_size": args.gen_batch_size, "eval.batch_size": args.gen_batch_size,
               "training.bf16": cuda, "eval.max_new_tokens": 160, **dict(map(parse_override, args.dpo_set))},
              out / "dpo", init=chain)
        bench("dpo", out / "dpo")
    if args.chain == "full":
        grpo = {"data.max_train_examples": 256, "data.max_eval_examples": 64, "rollout.num_generations": 8,
                "rollout.prompts_per_step": 8, "rollout.max_completion_length": 160,
                "pool.refresh_steps": args.grpo_refresh_steps, "training.max_steps": args.grpo_steps,
                "training.learning_rate": args.grpo_lr, "training.seed": args.seed,
                "rollout.generation_batch_size": args.gen_batch_size, "eval.batch_size": args.gen_batch_size,
                "training.bf16": cuda, "eval.max_new_tokens": 160}
        try:
            stage("grpo", "grpo", CONFIGS / "grpo_tiny.yaml", grpo, out / "grpo", init=out / "dpo")
        except DataError as err:  # a weak policy fails every pool prompt: the filter keeps too few to train on
            result["notes"].append(f"GRPO difficulty filter kept too few prompts ({err}); GRPO was rerun without it.")
            stage("grpo", "grpo", CONFIGS / "grpo_tiny.yaml", {**grpo, "pool.filter": False}, out / "grpo",
                  init=out / "dpo")
        bench("grpo", out / "grpo")
    for variant in dict.fromkeys(args.variants):
        if variant != "label_first":
            run = out / f"sft-{variant}"
            stage(f"sft_{variant}", "sft", CONFIGS / "sft_tiny.yaml", {**sft, "data.variant": variant}, run)
            bench(f"sft_{variant}", run)
    if not args.skip_cross_encoder:
        from rankstack.config import load_yaml
        from rankstack.relevance.cross_encoder import CrossEncoderConfig, train_cross_encoder

        start = time.perf_counter()
        config = load_yaml(CrossEncoderConfig, CONFIGS / "cross_encoder_world.yaml",
                           {"world_preset": None, "dataset": str(world / "relevance"), "seed": args.seed,
                            "max_eval_examples": args.eval_pairs})
        result["cross_encoder"] = train_cross_encoder(config, out / "minilm")
        timings["cross_encoder"] = time.perf_counter() - start
    save()
    print(json.dumps(result, indent=2))
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
