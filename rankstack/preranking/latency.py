"""The pre-ranking latency model (autofas.md §3.5, §7): fetch costs from the schema plus a measured network-cost
table, a differentiable expected latency of the supernet, and the measured latency of a request.

Latency of one request with `N_c` candidates = retrieval + inference:
- *retrieval* (simulated from `schema.yaml`): `Σ_{f∈req} π_f c_f + N_c Σ_{f∈cand} π_f c_f`, times `cost_scale`
  (the costs are additive, an upper bound under parallel fetching);
- *inference* (measured on this machine): a `LatencyTable` from a micro-benchmark, one JSON per device type
  (`configs/preranking/latency/<device>-n<N_c>.json`): the time of `ReLU(Linear(d_in, d_out))` over `n ∈ {1, N_c}` rows
  on a grid of input widths and the candidate output widths, the time of one field's embedding lookup for `n`
  rows, and the fixed per-forward overhead. `fc_ms(n, d_in, d_out)` interpolates linearly in `d_in`, so the
  expected width of a layer fed by gated fields or a mixed operator is a differentiable input.
- The supernet's expected latency (`expected_latency`) is §3.5's `LAT_feat + LAT_arch` with expected widths
  `E[w_l] = a_{l,id} E[w_{l-1}] + Σ_{k≠id} a_{l,k} w_k`, layer 1 split into the request part (1 row) and the
  candidate part (`N_c` rows); `predict_mlp` is the same formula for a discrete student.

`LatencyTable.fit()` also fits §3.5's linear form `t = t₀ + t₁·n·d_in·d_out` and reports its R² (a check that
the measured costs behave; the table, not the fit, is what the search uses).
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rankstack.errors import DataError
from rankstack.preranking.data import PrerankField

TABLE_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "preranking" / "latency"


def device_name(threads: int = 1) -> str:
    """A file-name slug of this CPU model and the thread count (`cpu-amd-epyc-7763-64-core-processor-1t`)."""
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"cpu-{slug}-{threads}t"


def table_name(n_cand: int, threads: int = 1) -> str:
    """The table's file name: one per device type, thread count and candidates per request."""
    return f"{device_name(threads)}-n{n_cand}.json"


@dataclass
class LatencyTable:
    """Measured network costs (ms) on one device; see the module docstring."""

    device: str
    threads: int
    n_cand: int
    d_in: list[int]
    d_out: list[int]
    fc_ms: dict[str, list[list[float]]]  # str(n) → [d_out index][d_in index]
    embed_ms: dict[str, float]  # str(n) → one field's embedding lookup for n rows
    overhead_ms: float
    fit: dict[str, float] = field(default_factory=dict)

    def fc(self, n: int, d_in: torch.Tensor | float, d_out: int) -> torch.Tensor:
        """Time of ReLU(Linear(d_in, d_out)) over n rows, linear in `d_in` between (and beyond) grid points."""
        row = torch.tensor(self.fc_ms[str(n)][self.d_out.index(d_out)], dtype=torch.float64)
        grid = torch.tensor(self.d_in, dtype=torch.float64)
        x = torch.as_tensor(d_in, dtype=torch.float64)
        i = torch.clamp(torch.searchsorted(grid, x.detach().reshape(1)) - 1, 0, len(grid) - 2)[0]
        w = (x - grid[i]) / (grid[i + 1] - grid[i])
        return row[i] + w * (row[i + 1] - row[i])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path} does not exist; measure this device with `rankstack bench preranking "
                            "--latency-table`.")
        return cls(**json.loads(path.read_text()))

    @classmethod
    def for_device(cls, n_cand: int, widths: list[int], max_d_in: int, threads: int = 1,
                   directory: Path = TABLE_DIR) -> LatencyTable:
        """This device's table from `directory`; measured and saved there if missing or not covering the space."""
        path = directory / table_name(n_cand, threads)
        if path.is_file():
            table = cls.load(path)
            if (table.n_cand == n_cand and set(widths) <= set(table.d_out) and table.d_in[-1] >= max_d_in):
                return table
        table = benchmark(n_cand, widths, max_d_in, threads)
        table.save(path)
        return table


def _time_ms(fn, repeats: int, inner: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) * 1000.0 / inner)
    return statistics.median(samples)


@torch.no_grad()
def benchmark(n_cand: int, widths: list[int], max_d_in: int, threads: int = 1, repeats: int = 15,
              inner: int = 10, seed: int = 0) -> LatencyTable:
    """Measure the table on this machine (fp32, eager, `threads` threads; a few seconds)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        d_out = sorted(set(widths) | {1})
        grid = sorted({16, 32, 64, 128, 256, 512, *widths} | {int(2 ** np.ceil(np.log2(max(max_d_in, 2))))})
        grid = [g for g in grid if g <= max(grid)]
        fc_ms: dict[str, list[list[float]]] = {}
        for n in (1, n_cand):
            fc_ms[str(n)] = []
            for o in d_out:
                row = []
                for i in grid:
                    layer = nn.Linear(i, o)
                    x = torch.randn(n, i, generator=gen)
                    layer(x)
                    row.append(_time_ms(lambda layer=layer, x=x: torch.relu(layer(x)), repeats, inner))
                fc_ms[str(n)].append(row)
        # One field's share of embedding a batch the way `FieldInputs` does: 16 lookups stacked into one tensor
        # and flattened (the copies cost as much as the lookups).
        table = nn.Embedding(1000, 16)
        embed_ms = {}
        for n in (1, n_cand):
            ids = torch.randint(0, 1000, (1, n), generator=gen)
            embed_ms[str(n)] = _time_ms(lambda ids=ids: torch.stack([table(ids) for _ in range(16)], 2).flatten(2),
                                        repeats, inner) / 16
        # Fixed cost of a forward: concatenation, the head's squeeze, Python dispatch (a 1-field, 1-unit net).
        tiny = nn.Linear(16, 1)
        x = torch.randn(n_cand, 16, generator=gen)
        overhead = _time_ms(lambda: tiny(torch.cat([x, x[:, :0]], -1)).squeeze(-1), repeats, inner)
    finally:
        torch.set_num_threads(previous)
    out = LatencyTable(device_name(threads), threads, n_cand, grid, d_out, fc_ms, embed_ms, overhead)
    out.fit = fit_linear(out)
    return out


def fit_linear(table: LatencyTable) -> dict[str, float]:
    """Least-squares `t = t₀ + t₁·n·d_in·d_out` over the table's FC cells, with its R²."""
    xs, ys = [], []
    for n, rows in table.fc_ms.items():
        for o, row in zip(table.d_out, rows):
            for i, t in zip(table.d_in, row):
                xs.append(int(n) * i * o)
                ys.append(t)
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys)
    a = np.stack([np.ones_like(x), x], 1)
    (t0, t1), *_ = np.linalg.lstsq(a, y, rcond=None)
    r2 = 1.0 - float(((a @ [t0, t1] - y) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30))
    return {"t0_ms": float(t0), "t1_ms": float(t1), "r2": r2}


# ---- latency of models -------------------------------------------------------------------------------------


def retrieval_ms(fields: list[PrerankField], keep: torch.Tensor, n_cand: int, cost_scale: float) -> torch.Tensor:
    """Simulated fetch time of one request: Σ keep_f·ĉ_f (request fields once, candidate fields N_c times)."""
    cost = torch.tensor([f.request_cost_ms(n_cand) for f in fields], dtype=torch.float64)
    return cost_scale * (keep.to(torch.float64) * cost).sum()


def expected_latency(fields: list[PrerankField], keep_prob: torch.Tensor, op_weights: list[torch.Tensor],
                     widths: list[int], table: LatencyTable, n_cand: int, dim: int, cost_scale: float,
                     request_split: bool = True) -> dict[str, torch.Tensor]:
    """§3.5's expected latency (ms) of the supernet, differentiable in `keep_prob` `[F]` and `op_weights`.

    op_weights: per layer, weights over `widths` (layer 1) or `widths + [identity]` (later layers).
    """
    keep = keep_prob.to(torch.float64)
    is_req = torch.tensor([f.level == "request" for f in fields])
    d_req = dim * keep[is_req].sum()
    d_cand = dim * keep[~is_req].sum()
    rows = torch.where(is_req, 1, n_cand)
    embed = sum((keep[j] * table.embed_ms[str(int(rows[j]))] for j in range(len(fields))),
                torch.zeros((), dtype=torch.float64))
    first = op_weights[0].to(torch.float64)
    arch = torch.zeros((), dtype=torch.float64)
    for k, w in enumerate(widths):
        if request_split:
            arch = arch + first[k] * (table.fc(n_cand, d_cand, w) + table.fc(1, d_req, w))
        else:
            arch = arch + first[k] * table.fc(n_cand, d_req + d_cand, w)
    width = sum(first[k] * w for k, w in enumerate(widths))
    for a in op_weights[1:]:
        a = a.to(torch.float64)
        for k, w in enumerate(widths):
            arch = arch + a[k] * table.fc(n_cand, width, w)
        width = a[-1] * width + sum(a[k] * w for k, w in enumerate(widths))
    arch = arch + table.fc(n_cand, width, 1) + embed + table.overhead_ms
    feat = retrieval_ms(fields, keep, n_cand, cost_scale)
    return {"feat": feat, "arch": arch, "total": feat + arch}


def predict_mlp(fields: list[PrerankField], kept: list[str], widths: list[int], table: LatencyTable, n_cand: int,
                dim: int, cost_scale: float) -> dict[str, float]:
    """Predicted latency (ms) of a discrete MLP student on the fields `kept` with hidden `widths`."""
    keep = torch.tensor([float(f.name in kept) for f in fields])
    # The student's own widths as the candidate list: layer l picks candidate l (one-hot), never identity.
    ops = [torch.eye(len(widths))[0]]
    ops += [torch.eye(len(widths) + 1)[k] for k in range(1, len(widths))]
    out = expected_latency(fields, keep, ops, widths, table, n_cand, dim, cost_scale)
    return {k: float(v) for k, v in out.items()}


def request_batch(split_tensors: dict[str, torch.Tensor], request: int = 0) -> dict[str, torch.Tensor]:
    """One request's `[1, N_c]` batch (the unit of serving)."""
    return {k: v[request:request + 1] for k, v in split_tensors.items()}


@torch.no_grad()
def measure_request_latency(model: nn.Module, batches: list[dict[str, torch.Tensor]], repeats: int = 200,
                            warmup: int = 20, threads: int = 1) -> dict[str, float]:
    """p50 / p99 wall time (ms) of `model.logits` on one request at a time (fp32, eager, `threads` threads),
    cycling through `batches` (each one request × N_c candidates)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        for i in range(warmup):
            model.logits(batches[i % len(batches)])
        samples = []
        for i in range(repeats):
            start = time.perf_counter()
            model.logits(batches[i % len(batches)])
            samples.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99))}
