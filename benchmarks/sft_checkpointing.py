"""What gradient checkpointing costs a small LM's SFT on CPU (the retrieval stage's CPT/SFT ran with it on until
`TrainingConfig.activation_checkpointing` made it an explicit setting, off by default).

Builds the CPU-sized retrieval LM of `configs/retrieval/nyc_cpu.yaml` (2-layer d = 128 Llama, a 512-token BPE)
and trains it through `retrieval.lm.train_causal_lm` on synthetic prompt/completion records shaped like NYC's
20-history prompts (about 100 prompt tokens, a 4-token answer), from the same initial weights, with checkpointing
off and on, alternating, `--rounds` times. Reports the median wall time of each, their ratio, and the largest
difference between the two runs' logged losses (activation recomputation changes speed, not the arithmetic, for a
model without dropout). Writes one JSON row to `--results` (appends) and prints it with the command.

    OMP_NUM_THREADS=1 python benchmarks/sft_checkpointing.py --steps 40 --rounds 3 \
        --results benchmarks/results/sft_checkpointing.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rankstack.relevance.sft import ModelConfig, TrainingConfig, build_model
from rankstack.relevance.tokenizer import train_tokenizer
from rankstack.retrieval.lm import train_causal_lm


def records(n: int, prompt_words: int, seed: int) -> list[dict[str, str]]:
    """Prompt/completion pairs of random words from a 2,000-word vocabulary."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(2000)]
    pick = lambda k: " ".join(words[j] for j in rng.integers(0, len(words), k))  # noqa: E731
    return [{"prompt": pick(prompt_words), "completion": pick(2)} for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=22, help="about 100 prompt tokens")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()

    data = records(args.steps * args.batch_size, args.prompt_words, seed=0)
    tokenizer = train_tokenizer((r["prompt"] + " " + r["completion"] for r in data), vocab_size=512)
    torch.manual_seed(0)
    model0 = build_model(ModelConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                     intermediate_size=256, max_position_embeddings=512), tokenizer)
    prompt_tokens = float(np.mean([len(tokenizer(r["prompt"])["input_ids"]) for r in data[:256]]))

    times: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for checkpointing in (False, True):
                training = TrainingConfig(learning_rate=3e-3, max_steps=args.steps, batch_size=args.batch_size,
                                          max_length=256, logging_steps=1, activation_checkpointing=checkpointing)
                model = copy.deepcopy(model0)
                report = train_causal_lm(model, tokenizer, data, training, Path(tmp))
                times[checkpointing].append(report["wall_time_s"])
                losses[checkpointing] = [row["loss"] for row in report["log"] if "loss" in row]
    off, on = statistics.median(times[False]), statistics.median(times[True])
    row = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "batch_size": args.batch_size,
        "mean_prompt_tokens": prompt_tokens, "rounds": args.rounds,
        "wall_s_off": times[False], "wall_s_on": times[True], "median_s_off": off, "median_s_on": on,
        "on_over_off": on / off,
        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(losses[False], losses[True])),
        "final_loss_off": losses[False][-1], "final_loss_on": losses[True][-1],
    }
    print(json.dumps(row, indent=1))
    if args.results is not None:
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
