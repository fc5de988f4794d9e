"""Load test of the cascade service on loopback: a bounded asyncio + httpx load generator.

    python benchmarks/load.py --run runs/demo/dlrm --duration 20 --soak 300

Starts `rankstack serve --run DIR` in its own process on a free loopback port (or uses `--url` of a running
server), then for each request kind (feed, search) and each concurrency level (1, 8, 32) keeps exactly that many
requests in flight for `--duration` seconds. Reports QPS, p50/p95/p99 latency end to end (client side) and per
stage (from each answer's funnel), and errors (any non-200 or transport failure). With `--soak S` it then runs a
mixed feed/search load at concurrency 8 for S seconds and samples the server's resident memory from /metrics
every 5 s, to show whether memory stays flat. Users are drawn uniformly (5% cold-start ids with a position in
town), hours uniformly, search queries from the world's query bank.

Writes one JSON row to `--out` (default benchmarks/results/serving_load.json) and prints the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serving_load.json"
STAGES = ("queue", "retrieval", "preranking", "ranking", "relevance")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, world: str | None, config: str | None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "rankstack", "serve", "--run", run, "--port", str(port)]
    cmd += ["--world", world] if world else []
    cmd += ["--config", config] if config else []
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode} before it answered /healthz")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not answer /healthz within 120 s")


class Workload:
    """Random feed and search requests over the served world."""

    def __init__(self, health: dict[str, Any], world: dict[str, Any], queries: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = health["users"]
        self.bounds = world["bounds"]
        self.queries = queries

    def body(self, kind: str) -> dict[str, Any]:
        rng, b = self.rng, self.bounds
        context: dict[str, Any] = {"hour": rng.randrange(24)}
        if rng.random() < 0.05:
            user = self.users + 1 + rng.randrange(10**6)  # a cold-start user, with a position in town
            context["lat"] = b["lat_min"] + (b["lat_max"] - b["lat_min"]) * rng.uniform(0.1, 0.9)
            context["lon"] = b["lon_min"] + (b["lon_max"] - b["lon_min"]) * rng.uniform(0.1, 0.9)
        else:
            user = 1 + rng.randrange(self.users)
        body: dict[str, Any] = {"user_id": user, "context": context, "k": 10}
        if kind == "search":
            body["query"] = rng.choice(self.queries)
        return body


async def run_level(url: str, workload: Workload, kinds: list[str], concurrency: int, duration: float
                    ) -> dict[str, Any]:
    """Keep `concurrency` requests in flight for `duration` seconds; per-request latencies and stage latencies."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors: list[str] = []
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                kind = kinds[(i + n) % len(kinds)]
                n += 1
                start = time.perf_counter()
                try:
                    r = await client.post(f"/v1/{kind}", json=workload.body(kind))
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}")
                    continue
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                answer = r.json()
                stages["queue"].append(answer["queue_ms"] / 1000)
                for stage in answer["funnel"]:
                    stages[stage["stage"]].append(stage["latency_ms"] / 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "kinds": kinds, "seconds": round(elapsed, 2), "requests": len(latencies),
            "qps": round(len(latencies) / elapsed, 2), "errors": len(errors), "error_samples": errors[:3],
            "end_to_end_ms": percentiles(latencies),
            "stages_ms": {s: percentiles(v) for s, v in stages.items() if v}}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = 1000 * np.asarray(values)
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


async def resident_mb(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) / 2**20 if match else float("nan")


async def soak(url: str, workload: Workload, seconds: float, concurrency: int = 8) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    load = asyncio.create_task(run_level(url, workload, ["feed", "search"], concurrency, seconds))
    while not load.done():
        samples.append((round(time.perf_counter() - start, 1), round(await resident_mb(url), 1)))
        await asyncio.wait([load], timeout=5)
    result = load.result()
    result["rss_mb"] = samples
    half = len(samples) // 2
    if half:
        result["rss_mb_first_half_max"] = max(m for _, m in samples[:half])
        result["rss_mb_second_half_max"] = max(m for _, m in samples[half:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder to serve (e.g. runs/demo/dlrm)")
    parser.add_argument("--world", help="world folder (default: the run's)")
    parser.add_argument("--config", help="serving config YAML")
    parser.add_argument("--url", help="a server already running (then --run is not used)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--kinds", nargs="+", default=["feed", "search"], choices=["feed", "search"])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per (kind, concurrency)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of mixed load at concurrency 8 (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored with the result row")
    parser.add_argument("--out", default=str(RESULTS), help=f"result row (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args()
    if not args.url and not args.run:
        parser.error("give --run (a server is started) or --url (a running server)")
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.run, args.world, args.config)
    try:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        world = httpx.get(f"{url}/v1/world", timeout=30).json()
        import pyarrow.parquet as pq

        queries = pq.read_table(Path(health["world"]) / "tables" / "queries.parquet").column("text").to_pylist()
        workload = Workload(health, world, queries, args.seed)
        asyncio.run(run_level(url, workload, args.kinds, 2, args.warmup))
        levels = [asyncio.run(run_level(url, workload, [kind], c, args.duration))
                  for kind in args.kinds for c in args.concurrency]
        soaked = asyncio.run(soak(url, workload, args.soak)) if args.soak else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    command = " ".join(["python", *sys.argv])
    row = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "note": args.note,
           "server": {"stages": {k: v["method"] for k, v in health["stages"].items()}, "pois": health["pois"],
                      "users": health["users"]},
           "levels": levels, "soak": soaked}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(f"{'kind':7} {'conc':>4} {'qps':>7} {'errors':>6} {'p50':>8} {'p95':>8} {'p99':>8}   per stage p50/p99 (ms)")
    for level in levels:
        e = level["end_to_end_ms"]
        per_stage = "  ".join(f"{s} {v['p50']}/{v['p99']}" for s, v in level["stages_ms"].items())
        print(f"{level['kinds'][0]:7} {level['concurrency']:4d} {level['qps']:7.1f} {level['errors']:6d} "
              f"{e.get('p50', 0):8.1f} {e.get('p95', 0):8.1f} {e.get('p99', 0):8.1f}   {per_stage}")
    if soaked:
        print(f"soak {soaked['seconds']} s at concurrency 8: {soaked['requests']} requests, {soaked['errors']} errors, "
              f"RSS MB (t, MB): {soaked['rss_mb']}")
    print(f"\nwritten to {out}\ncommand: {command}")


if __name__ == "__main__":
    main()
