"""GPU benchmark of the relevance stages (relevance.md §10.4): SFT, then a few GRPO steps, of a ~100M-parameter
Llama-shaped model built from a config (pretrained weights cannot be carried to the GPU machine), on the small city.

    python benchmarks/relevance_gpu.py                 # on a CUDA card (bf16); refuses to run without one
    python benchmarks/relevance_gpu.py --smoke         # a tiny model and a few steps, anywhere (checks the script)

Reports the card, the parameter count, SFT training tokens/s (prompt + completion tokens, TRL's `num_tokens`),
GRPO tokens/s and seconds per step (rollout generation included), the loss/reward at the start and the end, and
whether the model learned: dev accuracy and macro-F1 of the first-token label before and after SFT, and after GRPO
(first token and generated answer).
The GRPO difficulty filter is off here: a policy after a short SFT fails most prompts, so the filter would keep
almost none, and this script measures throughput, not learning. Writes `benchmarks/results/relevance_gpu.json`
(or `relevance_gpu_smoke.json`) and prints the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "relevance"
#: ~99M parameters with the 8k BPE: 12 layers of d = 768 (GQA 12/4 heads), MLP 2,688, tied embeddings.
MODEL_100M = {"model.hidden_size": 768, "model.num_layers": 12, "model.num_heads": 12, "model.num_kv_heads": 4,
              "model.intermediate_size": 2688, "model.max_position_embeddings": 1024}
MODEL_SMOKE = {"model.hidden_size": 64, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
               "model.intermediate_size": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "relevance-gpu"))
    parser.add_argument("--world", default="small", help="world preset generated under --out")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-batch-size", type=int, default=32)
    parser.add_argument("--grpo-steps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny world, 4 + 2 steps; CPU is fine")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rankstack.relevance import train_relevance

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("relevance_gpu.py needs a CUDA card (run with --smoke to check the script on CPU).")
    if args.smoke:
        args.world, args.sft_steps, args.grpo_steps, args.sft_batch_size = "tiny", 4, 2, 8
    out = Path(args.out + ("-smoke" if args.smoke else ""))
    started = time.perf_counter()

    sft_overrides = {**(MODEL_SMOKE if args.smoke else MODEL_100M), "data.world_preset": args.world,
                     "data.max_eval_examples": 64 if args.smoke else 256, "tokenizer.vocab_size": 1024 if args.smoke
                     else 8000, "training.max_steps": args.sft_steps, "training.batch_size": args.sft_batch_size,
                     "training.gradient_accumulation_steps": 1, "training.learning_rate": 3.0e-4,
                     "training.bf16": cuda, "training.logging_steps": max(1, args.sft_steps // 10)}
    sft = train_relevance("sft", CONFIGS / "sft_world_cpu.yaml", sft_overrides, out / "sft")

    grpo_overrides = {"data.max_train_examples": 512, "data.max_eval_examples": 64, "pool.filter": False,
                      "rollout.num_generations": 8, "rollout.prompts_per_step": 8,
                      "rollout.max_completion_length": 64 if args.smoke else 160, "training.max_steps": args.grpo_steps,
                      "training.learning_rate": 1.0e-5, "training.bf16": cuda, "training.logging_steps": 1,
                      "eval.max_new_tokens": 64 if args.smoke else 160}
    grpo = train_relevance("grpo", CONFIGS / "grpo_tiny.yaml", grpo_overrides, out / "grpo", init=out / "sft")

    from rankstack.relevance.sft import load_checkpoint

    model, _, _ = load_checkpoint(out / "grpo" / "model")
    sft_log = [json.loads(line) for line in (out / "sft" / "train_log.jsonl").read_text().splitlines()]
    sft_losses = [row["loss"] for row in sft_log if "loss" in row]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "precision": "bf16" if cuda else "fp32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "world": args.world,
        "sft": {"steps": sft["steps"], "batch_size": args.sft_batch_size, "tokens_per_s": sft["tokens_per_s"],
                "train_runtime_s": sft["train_runtime_s"], "loss_first": sft_losses[0] if sft_losses else None,
                "loss_last": sft_losses[-1] if sft_losses else None,
                "valid_completion_loss": sft["after"]["valid"]["completion_loss"],
                "valid_first_token": {when: {key: sft[when]["valid"][key] for key in ("accuracy", "macro_f1")}
                                      for when in ("before", "after")}},
        "grpo": {"steps": grpo["steps"], "group_size": 8, "prompts_per_step": 8,
                 "tokens_per_s": grpo["tokens_per_s"], "train_runtime_s": grpo["train_runtime_s"],
                 "s_per_step": grpo["train_runtime_s"] / max(grpo["steps"], 1),
                 "reward_first": grpo["reward_first"], "reward_last": grpo["reward_last"],
                "eval_after": {kind: {key: grpo["after"][kind].get(key)
                                      for key in ("accuracy", "macro_f1", "format_failure_rate")}
                               for kind in ("first_token", "generation")}},
        "wall_s": time.perf_counter() - started,
    }
    target = ROOT / "benchmarks" / "results" / ("relevance_gpu_smoke.json" if args.smoke else "relevance_gpu.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
