"""Decoding speed of GeoGR's retriever (geogr.md §4.4, §10.5): the tensor trie-constrained beam search against HF
`generate` + `prefix_allowed_tokens_fn`, on the same model, the same batches of prompts and the same W.

Takes a finished `rankstack train retrieval` run (its served model, SIDs and data), writes the first `--requests`
test prompts in batches of `--batch-size`, runs both searches on each batch (tensor search first, then HF,
alternating over `--repeats`), and checks that both return the same top-W leaves (POIs) with scores within 1e-4.
Prints the command, appends one JSON row to `benchmarks/results/retrieval_decode.jsonl`.

    python benchmarks/retrieval_decode.py --run runs/geogr-city-tiny --requests 64 --batch-size 16 --beams 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished train_retrieval run folder")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrieval_decode.jsonl"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    from rankstack.retrieval.data import load_retrieval_data
    from rankstack.retrieval.decode import hf_constrained_beam_search, trie_beam_search
    from rankstack.retrieval.lm import PromptWriter, area_grid, load_lm
    from rankstack.retrieval.run import load_run_config
    from rankstack.retrieval.semantic_ids import SemanticIds
    from rankstack.retrieval.trie import sid_level_offsets

    run = Path(args.run)
    config = load_run_config(run / "config.yaml")
    data = load_retrieval_data(config.data)
    sids = SemanticIds.load(run / "sids")
    model, tokenizer = load_lm(run / "sft", args.device)
    writer = PromptWriter(sids, area_grid(data, config.lm.prompt), config.lm.prompt, data.catalogue.lat,
                          data.catalogue.lon)
    prompts = writer.prompts(data.splits["test"])[:args.requests]
    trie = sids.trie(sid_level_offsets(tokenizer, sids.level_sizes)).to(args.device)
    batches = [tokenizer(prompts[lo:lo + args.batch_size], return_tensors="pt", padding=True,
                         add_special_tokens=False).to(args.device) for lo in range(0, len(prompts), args.batch_size)]

    def timed(search, enc):
        start = time.perf_counter()
        out = search(enc)
        return out, time.perf_counter() - start

    def ours(enc):
        return trie_beam_search(model, enc["input_ids"], enc["attention_mask"], trie, args.beams)

    def reference(enc):
        return hf_constrained_beam_search(model, enc["input_ids"], enc["attention_mask"], trie, args.beams,
                                          pad_token_id=tokenizer.pad_token_id)

    times = {"tensor": [], "hf": []}
    same_leaves, max_score_diff = True, 0.0
    for _ in range(args.repeats):
        total = {"tensor": 0.0, "hf": 0.0}
        for enc in batches:
            a, ta = timed(ours, enc)
            b, tb = timed(reference, enc)
            total["tensor"] += ta
            total["hf"] += tb
            same_leaves &= bool(torch.equal(a.leaves, b.leaves))
            finite = torch.isfinite(a.scores)
            max_score_diff = max(max_score_diff, float((a.scores[finite] - b.scores[finite]).abs().max()))
        for key in times:
            times[key].append(total[key])
    tensor_s, hf_s = float(np.median(times["tensor"])), float(np.median(times["hf"]))
    row = {
        "benchmark": "retrieval_decode", "run": str(run), "model_parameters": sum(p.numel() for p in model.parameters()),
        "n_sids": int(trie.num_leaves), "sid_length": trie.length, "requests": len(prompts),
        "batch_size": args.batch_size, "beams": args.beams, "device": args.device,
        "prompt_tokens_max": max(int(enc["input_ids"].shape[1]) for enc in batches),
        "tensor_s_median": tensor_s, "hf_s_median": hf_s, "speedup": hf_s / tensor_s,
        "tensor_s_all": times["tensor"], "hf_s_all": times["hf"],
        "identical_top_w_leaves": same_leaves, "max_score_abs_diff": max_score_diff,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "torch_threads": torch.get_num_threads(),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print("command:", row["command"])
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}, indent=2))


if __name__ == "__main__":
    main()
