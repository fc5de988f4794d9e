"""Ranking efficiency benchmarks (hemix.md §4, §12.5, §12.7; `rankstack bench ranking`).

Two measurements, each beside the spec's cost model:

- `mixing_vs_attention`: the HeteroMixer layer against a self-attention layer at equal tokens and width
  (N = 12, d = 256, batch 1024 by default). Forward + backward time of the mixing sub-layers alone
  (HeteroMixing vs multi-head self-attention) and of whole blocks with the same per-token FFN, repeats
  interleaved so that load from other jobs hits both sides alike; medians, their ratio, the §4 MAC ratio and the
  MACs that `torch.utils.flop_counter` counts.
- `serving_throughput`: HeMix scoring C candidates of one request, without the user cache (the full forward on C
  rows) and with it (`encode_user` once, then `score`), in candidates/s, with the largest difference between
  the two paths' scores.

Both run on synthetic inputs, so they need no dataset: `synthetic_layout` mirrors the `medium` world's ranking
schema (field counts, request/candidate levels, a 100-event long-term and a 20-event real-time stream) and
`synthetic_batch` fills it with random ids. The GPU throughput script (`benchmarks/ranking_gpu.py`) uses them
too.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankstack.errors import ConfigError
from rankstack.nn.features import FieldLayout, SequenceLayout
from rankstack.ranking.hemix import (
    HeMix,
    HeMixConfig,
    HeteroMixerBlock,
    HeteroMixing,
    PerTokenFFN,
    SelfAttentionMixing,
)

# -- synthetic inputs ---------------------------------------------------------------------------------------------


def synthetic_layout(request_ns: int = 16, candidate_ns: int = 16, item_fields: int = 12, sequence_item_fields: int = 6,
                     streams: tuple[tuple[str, int], ...] = (("longterm_seq", 100), ("realtime_seq", 20)),
                     item_vocab: int = 5000, field_vocab: int = 20, multi_valued: int = 1,
                     labels: tuple[str, ...] = ("click", "order")) -> FieldLayout:
    """A `FieldLayout` shaped like the `medium` world's ranking schema (the defaults): 16 request-level and 16
    candidate-level NS fields, one multi-valued candidate field, 12 target item fields of which the first 6 (item
    id first, `item_vocab` ids) also appear in both behaviour streams, an action per event, click and order."""
    ns = tuple((f"request_{i}", f"request_{i}") for i in range(request_ns)) + tuple(
        (f"cross_{i}", f"cross_{i}") for i in range(candidate_ns))
    mv = tuple((f"attributes_{i}", f"attribute_{i}") for i in range(multi_valued))
    target = tuple((f"item_{i}", f"item_{i}") for i in range(item_fields))
    sequences = tuple(
        SequenceLayout(role, tuple(f"{role}_item_{i}" if i < sequence_item_fields else None for i in range(item_fields)),
                       f"{role}_action", max_len)
        for role, max_len in streams)
    tables = {group: field_vocab for _, group in ns + mv + target} | {"item_0": item_vocab, "action": 6}
    levels = {key: "request" for key, _ in ns[:request_ns]} | {
        key: "candidate" for key, _ in ns[request_ns:] + mv + target}
    return FieldLayout(ns, mv, (), target, sequences, tables, (), levels, labels)


def synthetic_batch(layout: FieldLayout, size: int, generator: torch.Generator | None = None,
                    max_values: int = 4) -> dict[str, torch.Tensor]:
    """A random batch for `layout`: ids in each table's range (0 is padding), multi-valued fields with up to
    `max_values` values, left-padded streams of random lengths (some empty), Bernoulli labels (click 10 %,
    order 2 %)."""
    g = generator or torch.Generator().manual_seed(0)

    def ids(group: str, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(1, max(2, layout.tables[group]), shape, generator=g)

    batch: dict[str, torch.Tensor] = {}
    for key, group in layout.ns + layout.target:
        batch[key] = ids(group, (size,))
    for key, group in layout.multi_valued:
        values = ids(group, (size, max_values))
        keep = torch.arange(max_values) < torch.randint(0, max_values + 1, (size, 1), generator=g)
        batch[key] = values * keep
    groups = [g_ for _, g_ in layout.target]
    for seq in layout.sequences:
        lengths = torch.randint(0, seq.max_len + 1, (size, 1), generator=g)
        real = torch.arange(seq.max_len).flip(0) < lengths  # left padding: the newest event is last
        for column, group in zip(seq.item_columns, groups):
            if column is not None:
                batch[column] = ids(group, (size, seq.max_len)) * real
        if seq.action_column is not None:
            batch[seq.action_column] = ids("action", (size, seq.max_len)) * real
    rates = {"click": 0.1, "order": 0.02}
    for label in layout.labels:
        batch[label] = torch.bernoulli(torch.full((size,), rates.get(label, 0.1)), generator=g)
    return batch


def synthetic_request(layout: FieldLayout, candidates: int, generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
    """One request with `candidates` rows: request-level fields and the behaviour streams are those of the
    first row on every row; candidate-level fields and the target item vary."""
    batch = synthetic_batch(layout, candidates, generator)
    shared = [key for key, _ in layout.ns + layout.multi_valued if layout.level_of(key) == "request"]
    shared += [c for seq in layout.sequences for c in (*seq.item_columns, seq.action_column) if c is not None]
    for key in shared:
        batch[key] = batch[key][:1].expand_as(batch[key]).clone()
    return batch


# -- timing helpers -----------------------------------------------------------------------------------------------


def interleaved_medians(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
                        ) -> dict[str, list[float]]:
    """Seconds per call of each step, `repeats` times, calling the steps in turn (A, B, A, B, …) so that load
    from other processes affects all of them alike; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def forward_backward(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward and backward pass of `module` on `x` (gradients w.r.t. the input and the weights)."""
    grad = torch.randn_like(x)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)
    return step


def counted_macs_per_sample(module: nn.Module, x: torch.Tensor) -> float:
    """Forward multiply-accumulates per sample counted by `torch.utils.flop_counter` (1 MAC = 2 FLOPs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 2 / x.shape[0]


# -- §12.5 mixing vs attention ------------------------------------------------------------------------------------


def mixing_cost_model(tokens: int, dim: int, rank: int, ffn_mult: int) -> dict[str, float]:
    """MACs per sample and layer from hemix.md §4: self-attention `4Nd² + 2N²d`, HeteroMixing `2Ndr`, per-token
    FFN `2kNd²`."""
    attention = 4 * tokens * dim**2 + 2 * tokens**2 * dim
    mixing = 2 * tokens * dim * rank
    ffn = 2 * ffn_mult * tokens * dim**2
    return {"attention_macs": attention, "heteromixing_macs": mixing, "ffn_macs": ffn,
            "sublayer_ratio": attention / mixing, "block_ratio": (mixing + ffn) / (attention + ffn)}


def mixing_vs_attention(tokens: int = 12, dim: int = 256, batch: int = 1024, mix_heads: int = 2, rank: int = 16,
                        attention_heads: int = 4, ffn_mult: int = 4, repeats: int = 7, seed: int = 0
                        ) -> dict[str, Any]:
    """Forward+backward seconds of HeteroMixing vs self-attention (sub-layers), and of a HeteroMixer block vs the
    same block with self-attention mixing (same per-token FFN and norms), fp32 on the CPU."""
    torch.manual_seed(seed)
    x = torch.randn(batch, tokens, dim, requires_grad=True)
    modules = {
        "heteromixing": HeteroMixing(tokens, dim, mix_heads, rank),
        "self_attention": SelfAttentionMixing(dim, attention_heads),
        "heteromixer_block": HeteroMixerBlock(HeteroMixing(tokens, dim, mix_heads, rank),
                                              PerTokenFFN(tokens, dim, ffn_mult * dim), dim),
        "attention_block": HeteroMixerBlock(SelfAttentionMixing(dim, attention_heads),
                                            PerTokenFFN(tokens, dim, ffn_mult * dim), dim),
    }
    times = interleaved_medians({name: forward_backward(m, x) for name, m in modules.items()}, repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    model = mixing_cost_model(tokens, dim, rank, ffn_mult)
    counted = {name: counted_macs_per_sample(m, x) for name, m in modules.items()}
    return {
        "tokens": tokens, "dim": dim, "batch": batch, "mix_heads": mix_heads, "rank": rank,
        "attention_heads": attention_heads, "ffn_mult": ffn_mult, "repeats": repeats,
        "threads": torch.get_num_threads(),
        "seconds_median": median, "seconds_all": times,
        "measured_sublayer_ratio": median["self_attention"] / median["heteromixing"],
        "measured_block_ratio": median["heteromixer_block"] / median["attention_block"],
        "cost_model": model,
        "counted_macs_per_sample": counted,
        "counted_sublayer_ratio": counted["self_attention"] / counted["heteromixing"],
        "counted_block_ratio": counted["heteromixer_block"] / counted["attention_block"],
    }


# -- §12.7 serving with the user cache ----------------------------------------------------------------------------


def serving_throughput(layout: FieldLayout | None = None, config: HeMixConfig | None = None, candidates: int = 500,
                       repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Candidates/s of one request scored without the user cache (`model(request)`) and with it
    (`score(encode_user(request's first row), request)`), medians over `repeats` requests' worth of repeats, and
    the largest absolute difference between the two paths' probabilities."""
    layout = layout or synthetic_layout()
    config = config or HeMixConfig(realtime_len=min(20, max(s.max_len for s in layout.sequences)))
    torch.manual_seed(seed)
    model = HeMix(layout, config).eval()
    with torch.no_grad():  # unit-scale embeddings, so that the equality check sees inputs that matter
        for table in model.embedder.tables.values():
            table.weight[1:].normal_()
    request = synthetic_request(layout, candidates, torch.Generator().manual_seed(seed))
    user_row = {k: v[:1] for k, v in request.items()}

    def uncached() -> torch.Tensor:
        return model(request)

    def cached() -> torch.Tensor:
        return model.score(model.encode_user(user_row), request)

    with torch.no_grad():
        difference = (cached() - uncached()).abs().max().item()
        spread = (uncached().max(0).values - uncached().min(0).values).min().item()
        times = interleaved_medians({"uncached": uncached, "cached": cached,
                                     "encode_user": lambda: model.encode_user(user_row)}, repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "candidates": candidates, "repeats": repeats, "threads": torch.get_num_threads(),
        "sequence_lengths": {s.role: s.max_len for s in layout.sequences},
        "params": model.count_params(),
        "seconds_per_request_median": median, "seconds_all": times,
        "candidates_per_s": {"uncached": candidates / median["uncached"], "cached": candidates / median["cached"]},
        "speedup": median["uncached"] / median["cached"],
        "max_abs_difference": difference,
        "min_score_spread": spread,
        "cached_equals_uncached": difference < 1e-5,
    }


# -- the whole benchmark ------------------------------------------------------------------------------------------


def run_labels(runs: list[str], names: list[str] | None) -> list[str]:
    """A label per run folder: `names` (one per run) or the folders' names; exits with a message on a mismatch."""
    labels = names or [Path(run).name for run in runs]
    if len(labels) != len(runs):
        raise SystemExit(f"--names gives {len(labels)} names for {len(runs)} runs")
    return labels


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: machine, cores, Python, torch, the git commit of the working tree, the date."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
            "python": platform.python_version(), "torch": torch.__version__, "git": commit,
            "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}


#: HeMix switches that `bench_ranking` can serve with: on/off, or a count (`query_cross=2`).
SERVE_SWITCHES = {"target_match": bool, "query_match": bool, "recency": bool, "query_cross": int}


def switch_values(switches: Sequence[str]) -> dict[str, bool | int]:
    """HeMixConfig keyword arguments from `--serve-with` items: `name` turns a switch on, `name=N` sets a count."""
    values: dict[str, bool | int] = {}
    for text in switches:
        name, _, value = text.partition("=")
        kind = SERVE_SWITCHES.get(name)
        if kind is None or (kind is int) != bool(value) or value and not value.isdigit():
            raise ConfigError(
                f"--serve-with takes {', '.join(n for n, k in SERVE_SWITCHES.items() if k is bool)} or "
                f"{', '.join(f'{n}=N' for n, k in SERVE_SWITCHES.items() if k is int)}; got `{text}`")
        values[name] = int(value) if value else True
    return values


def bench_ranking(tokens: int = 12, dim: int = 256, batch: int = 1024, repeats: int = 7, candidates: int = 500,
                  longterm_lens: tuple[int, ...] = (100,), threads: int = 1,
                  options: tuple[str, ...] = ()) -> dict[str, Any]:
    """`mixing_vs_attention` and `serving_throughput` (one per long-term stream length) on `threads` threads; with
    `options` (HeMixConfig switches such as `target_match`), each length is served a second time with them on."""
    variants = [((), {})] + ([(options, switch_values(options))] if options else [])  # bad switches fail before timing
    torch.set_num_threads(threads)
    serving = []
    for n in longterm_lens:
        layout = synthetic_layout(streams=(("longterm_seq", n), ("realtime_seq", 20)))
        for switches, values in variants:
            config = HeMixConfig(realtime_len=20, **values)
            serving.append({"options": list(switches), **serving_throughput(
                layout, config, candidates=candidates, repeats=max(3, repeats // 2))})
    return {"mixing_vs_attention": mixing_vs_attention(tokens, dim, batch, repeats=repeats), "serving": serving,
            **machine_info()}


def format_bench_ranking(result: dict[str, Any]) -> str:
    """The two tables of `bench_ranking`, as printed by `rankstack bench ranking`."""
    mix = result["mixing_vs_attention"]
    sec, cost = mix["seconds_median"], mix["cost_model"]
    lines = [f"HeteroMixer vs self-attention, N={mix['tokens']} d={mix['dim']} batch {mix['batch']}, forward+backward,"
             f" fp32, {mix['threads']} thread(s), median of {mix['repeats']}",
             f"{'':34} {'HeteroMixer':>12} {'attention':>12} {'measured ×':>11} {'§4 model ×':>11}",
             f"{'mixing sub-layer (ms)':34} {1e3 * sec['heteromixing']:12.1f} {1e3 * sec['self_attention']:12.1f} "
             f"{mix['measured_sublayer_ratio']:11.2f} {cost['sublayer_ratio']:11.2f}",
             f"{'block with per-token FFN (ms)':34} {1e3 * sec['heteromixer_block']:12.1f} "
             f"{1e3 * sec['attention_block']:12.1f} {mix['measured_block_ratio']:11.2f} {cost['block_ratio']:11.2f}",
             "(sub-layer: attention time / HeteroMixing time; block: HeteroMixer block time / attention block time)",
             ""]
    for serve in result["serving"]:
        rate = serve["candidates_per_s"]
        switches = f", with {' + '.join(serve['options'])}" if serve.get("options") else ""
        lines += [f"HeMix serving{switches}, {serve['candidates']} candidates per request, streams "
                  f"{serve['sequence_lengths']}, {serve['threads']} thread(s), median of {serve['repeats']}",
                  f"  without user cache: {rate['uncached']:10,.0f} candidates/s "
                  f"({1e3 * serve['seconds_per_request_median']['uncached']:.0f} ms per request)",
                  f"  with user cache:    {rate['cached']:10,.0f} candidates/s "
                  f"({1e3 * serve['seconds_per_request_median']['cached']:.0f} ms per request, of which encode_user "
                  f"{1e3 * serve['seconds_per_request_median']['encode_user']:.1f} ms)",
                  f"  speed-up {serve['speedup']:.2f}×; cached = uncached: {serve['cached_equals_uncached']} "
                  f"(max |Δp| = {serve['max_abs_difference']:.1e})", ""]
    return "\n".join(lines).rstrip()
