"""Launching, pausing and killing `tests/train_toy_script.py` runs for the resume and DDP tests."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("train_toy_script.py")
TIMING_KEYS = ("wall_time_s", "samples_per_s")
TIMEOUT_S = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def python_command(*args: object) -> list[str]:
    return [sys.executable, str(SCRIPT), *map(str, args)]


def torchrun_command(nproc: int, *args: object) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), str(SCRIPT), *map(str, args)]


def run(command: list[str]) -> None:
    """Run to completion; fail with the output if it exits non-zero."""
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start in the background with its output going to `log` (a pipe nobody reads could block it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=_env(), stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> None:
    """Wait for a started run; fail with its output if it exits non-zero."""
    code = process.wait(timeout=TIMEOUT_S)
    assert code == 0, f"{process.args} exited {code}:\n{log.read_text()}"


def wait_for(path: Path, process: subprocess.Popen, log: Path) -> None:
    """Poll until `path` exists; fail with the run's output if it exits first or takes too long."""
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        assert process.poll() is None, f"{process.args} exited {process.returncode} early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{path} did not appear within {TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.05)


def _is_toy_run(pid: int) -> bool:
    # A rank that already exited may have had its pid reused; only kill processes still running the script.
    try:
        return SCRIPT.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill(process: subprocess.Popen, record_dir: Path) -> None:
    """SIGKILL a run: the launched process and every rank that recorded its pid (torchrun starts its workers in
    their own sessions, so killing the launcher alone would orphan them)."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    for pid_file in record_dir.glob("pid_rank*"):
        pid = int(pid_file.read_text())
        if _is_toy_run(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    process.wait(timeout=TIMEOUT_S)


def metrics_without_timing(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}


def csv_rows(run_dir: Path, drop: tuple[str, ...] = ("samples_per_s",)) -> list[dict[str, str]]:
    with open(run_dir / "train_log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def params(record_dir: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(record_dir / f"params_rank{rank}.pt", weights_only=True)


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"parameter {name} differs"
