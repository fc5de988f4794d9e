"""A training run killed with SIGKILL and resumed from its checkpoint ends bit-identical to an uninterrupted run
(parameters, metrics.json and train_log.csv), with dropout in the model so the RNG restore is exercised."""

from __future__ import annotations

from _train_launch import (
    assert_same_params,
    csv_rows,
    finish,
    kill,
    metrics_without_timing,
    params,
    python_command,
    run,
    start,
    wait_for,
)

from rankstack.train import load_checkpoint

# 64 steps per epoch, 3 epochs; checkpoints every 10 steps, evals every 7, log rows every 3. The killed run stops
# after step 105: its last checkpoint is step 100 (mid-epoch, with a partial log window of one step), and rows and
# an evaluation past it are already on disk, so resuming must also drop those. The learning rate warms up over
# 150 steps, so the resumed run must also pick the schedule up where the checkpoint left it.
KILL_AFTER_STEP = 105
WARMUP = ("--warmup-steps", 150)


def test_killed_run_resumes_bit_identical(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = start(
        python_command("--run-dir", full / "run", "--record-dir", full / "rec", *WARMUP), full / "log"
    )
    interrupted = start(
        python_command(
            "--run-dir", cut / "run", "--record-dir", cut / "rec", "--pause-after-step", KILL_AFTER_STEP, *WARMUP
        ),
        cut / "log",
    )
    try:
        try:
            wait_for(cut / "rec" / "paused", interrupted, cut / "log")
        finally:
            kill(interrupted, cut / "rec")
        checkpoint = load_checkpoint(cut / "run" / "checkpoint.pt")
        state, rank0 = checkpoint["state"], checkpoint["ranks"][0]
        assert (state["step"], state["epoch"], rank0["loader"]) == (100, 1, {"epoch": 1, "yielded": 36})
        assert rank0["window"]["steps"] == 1
        assert len(csv_rows(cut / "run")) > state["log_rows"]
        assert not (cut / "run" / "metrics.json").exists()

        run(python_command("--run-dir", cut / "run", "--record-dir", cut / "rec", "--resume", *WARMUP))
        finish(uninterrupted, full / "log")
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()

    assert_same_params(params(cut / "rec"), params(full / "rec"))
    assert metrics_without_timing(cut / "run") == metrics_without_timing(full / "run")
    assert metrics_without_timing(full / "run")["steps"] == 192
    assert csv_rows(cut / "run") == csv_rows(full / "run")
    assert len(list((cut / "run" / "tb").glob("events.out.tfevents.*"))) == 2
