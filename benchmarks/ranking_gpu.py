"""HeMix training throughput and MFU in bf16 on a CUDA card (ranking issue, "GPU"; hemix.md §6, §12.6).

Builds the model from a ranking run config (default `configs/ranking/hemix_gpu_large.yaml`, d = 1024, L = 6,
≈ 0.6 B dense parameters) for a layout shaped like the `medium` world's schema, and trains it on synthetic
batches that already sit on the device (`rankstack.ranking.bench.synthetic_batch`), so nothing has to travel and
the loader is not what is measured. One training step is the trainer's recipe (`rankstack.train.Trainer`):
AdamW on the dense parameters and Adagrad on the embedding tables (`split_parameters`), the model's fp32 BCE
loss under bf16 autocast, gradient clipping. The step is written out here rather than run through `Trainer.fit`
so that no checkpoint of the large model is written and the timing can synchronise the device.

Reports:
- the card's name, dense and embedding parameters, peak memory;
- FLOPs per training sample (forward + backward) counted by `torch.utils.flop_counter`, and the forward count;
- samples/s: median over `--windows` timed windows of `--steps` steps each, after `--warmup` untimed steps;
- MFU = FLOPs per sample × samples/s / the card's dense bf16 peak (a table of known cards, or `--peak-tflops`);
- bf16 vs fp32: the trained model's probabilities on held-out synthetic batches under bf16 autocast against fp32
  (TF32 off), max and mean absolute difference, and whether they are within the stated tolerance.

    python benchmarks/ranking_gpu.py                             # on a CUDA machine
    python benchmarks/ranking_gpu.py --device cpu --smoke        # a tiny model on the CPU: checks it runs

Writes `benchmarks/results/ranking_gpu.json` (`--out`) with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.ranking import build_model  # noqa: E402
from rankstack.ranking.bench import machine_info, synthetic_batch, synthetic_layout  # noqa: E402
from rankstack.ranking.run import load_run_config  # noqa: E402
from rankstack.train.trainer import split_parameters  # noqa: E402

# Dense bf16 peak (no sparsity), TFLOP/s, from the vendors' data sheets; the first matching name wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)
SMOKE_ARGS = {"dim": 32, "n_layers": 1, "rank": 4, "tower": [16]}
TOLERANCE = {"max_abs": 5e-2, "mean_abs": 5e-3}  # bf16 has an 8-bit mantissa: ~0.4 % relative per rounding


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["machine"]


def peak_tflops(name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "ranking" / "hemix_gpu_large.yaml"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, help="default: the config's batch_size")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense peak for MFU, if not in the table")
    parser.add_argument("--smoke", action="store_true", help=f"tiny model {SMOKE_ARGS}, batch 64, 2 steps")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ranking_gpu.json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here; run on a GPU machine, or pass --device cpu --smoke to check the script.")
    config = load_run_config(args.config)
    model_args = {**config.model.args, **(SMOKE_ARGS if args.smoke else {})}
    batch_size = 64 if args.smoke else (args.batch_size or config.batch_size)
    steps, windows, warmup = (2, 1, 1) if args.smoke else (args.steps, args.windows, args.warmup)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(config.trainer.seed)
    layout = synthetic_layout()
    model = build_model(config.model.name, model_args, layout, where=args.config).to(device)
    params = model.count_params() if hasattr(model, "count_params") else {}
    generator = torch.Generator().manual_seed(config.trainer.seed)
    batches = [{k: v.to(device) for k, v in synthetic_batch(layout, batch_size, generator).items()} for _ in range(4)]
    held_out = [{k: v.to(device) for k, v in synthetic_batch(layout, batch_size, generator).items()} for _ in range(2)]

    # FLOPs of one training step's forward and backward (optimiser excluded), and of the forward alone.
    with FlopCounterMode(display=False) as counter:
        model.loss(batches[0]).backward()
    train_flops = counter.get_total_flops() / batch_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.logits(batches[0])
    forward_flops = counter.get_total_flops() / batch_size
    model.zero_grad(set_to_none=True)

    embedding_params, dense_params = split_parameters(model)
    optimizers = [torch.optim.AdamW(dense_params, lr=config.trainer.lr_dense, weight_decay=config.trainer.weight_decay),
                  torch.optim.Adagrad(embedding_params, lr=config.trainer.lr_embedding)]
    clip = config.trainer.grad_clip_norm or float("inf")
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    autocast = args.precision == "bf16"

    def train_step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(embedding_params + dense_params, clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    losses = [train_step(batches[i % len(batches)]) for i in range(warmup)]
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(windows):
        synchronize(device)
        start = time.perf_counter()
        for i in range(steps):
            losses.append(train_step(batches[i % len(batches)]))
        synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    samples_per_s = statistics.median(rates)
    losses_seen = [float(x) for x in losses]

    # bf16 vs fp32 scores of the trained model on batches it has not trained on.
    model.eval()
    differences = []
    with torch.no_grad():
        for batch in held_out:
            fp32 = model(batch).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = model(batch).float()
            differences.append((bf16 - fp32).abs())
    difference = torch.cat(differences)
    name = card_name(device)
    peak = peak_tflops(name, args.peak_tflops)
    achieved = train_flops * samples_per_s
    result = {
        "command": " ".join(["python", *sys.argv]),
        **machine_info(),
        "device": str(device), "card": name, "config": args.config, "model_args": model_args, "smoke": args.smoke,
        "precision": args.precision, "compiled": args.compile, "batch_size": batch_size,
        "params": params,
        "train_flops_per_sample": train_flops, "forward_flops_per_sample": forward_flops,
        "steps_per_window": steps, "windows": windows, "warmup_steps": warmup,
        "samples_per_s": samples_per_s, "samples_per_s_windows": rates,
        "achieved_tflops": achieved / 1e12, "peak_bf16_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first_last": [losses_seen[0], losses_seen[-1]],
        "bf16_vs_fp32": {"max_abs": difference.max().item(), "mean_abs": difference.mean().item(),
                         "tolerance": TOLERANCE,
                         "within_tolerance": difference.max().item() < TOLERANCE["max_abs"]
                         and difference.mean().item() < TOLERANCE["mean_abs"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    mfu = f"{100 * result['mfu']:.1f} %" if result["mfu"] is not None else "unknown peak (pass --peak-tflops)"
    print(f"card: {name}\nmodel: {model_args}\ndense params: {params.get('dense', 0):,}  "
          f"embedding params: {params.get('embeddings', 0):,}\nbatch {batch_size}, {args.precision}"
          f"{', compiled' if args.compile else ''}\ntrain FLOPs/sample: {train_flops / 1e9:.3f} G "
          f"(forward {forward_flops / 1e9:.3f} G)\nsamples/s: {samples_per_s:,.0f} (median of {windows} windows "
          f"of {steps} steps: {', '.join(f'{r:,.0f}' for r in rates)})\nachieved: {achieved / 1e12:.2f} TFLOP/s; "
          f"MFU: {mfu}\nbf16 vs fp32 probabilities: max |Δ| {result['bf16_vs_fp32']['max_abs']:.2e}, mean |Δ| "
          f"{result['bf16_vs_fp32']['mean_abs']:.2e} (within {TOLERANCE}: "
          f"{result['bf16_vs_fp32']['within_tolerance']})\nloss first/last step: {losses_seen[0]:.4f} / "
          f"{losses_seen[-1]:.4f}\ncommand: {result['command']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
