"""Training logs in a run folder: ``train_log.csv``, TensorBoard events under ``tb/`` and a tqdm progress bar.

`RunLogger` writes one CSV row per training log step (columns ``step, epoch, loss, lr, lr_embedding, grad_norm,
samples_per_s``) and one row per evaluation (the same ``step, epoch`` plus an ``eval_<metric>`` column per
metric; the header grows when a new metric first appears). Rows are flushed as they are written, so after a crash
the CSV is complete up to the last checkpoint; on resume the logger keeps exactly the rows the checkpoint counted
and TensorBoard hides events past the checkpoint step (its ``purge_step``), so nothing is logged twice.

Only rank 0 logs: a logger built with ``enabled=False`` accepts every call and writes nothing.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rankstack.train.checkpoint import atomic_write

CSV_NAME = "train_log.csv"
TRAIN_COLUMNS = ("step", "epoch", "loss", "lr", "lr_embedding", "grad_norm", "samples_per_s")


class RunLogger:
    """CSV + TensorBoard logger for one run folder.

    Args:
        run_dir: The run folder; ``train_log.csv`` and ``tb/`` are created in it.
        enabled: False on ranks other than 0: every method is then a no-op.
        tensorboard: Whether to write TensorBoard event files under ``run_dir/tb``.
        keep_rows: How many data rows of an existing ``train_log.csv`` to keep (the count stored in the checkpoint
            being resumed; 0 for a fresh run, which starts the CSV afresh).
        purge_step: TensorBoard hides earlier events of this folder whose step is >= this (checkpoint step + 1 on
            resume, 0 for a fresh run).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        enabled: bool,
        tensorboard: bool,
        keep_rows: int,
        purge_step: int,
    ) -> None:
        self.enabled = enabled
        self.rows = keep_rows
        self._writer: Any = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._csv_path = run_dir / CSV_NAME
        self._columns = list(TRAIN_COLUMNS)
        kept: list[dict[str, str]] = []
        if keep_rows > 0 and self._csv_path.exists():
            with open(self._csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self._columns += [c for c in reader.fieldnames or [] if c not in self._columns]
                for row in reader:
                    if len(kept) == keep_rows:
                        break
                    kept.append(row)
        self.rows = len(kept)
        self._rewrite(kept)
        self._csv = open(self._csv_path, "a", newline="")  # noqa: SIM115 (closed in close())
        if tensorboard:
            # Imported lazily: TensorBoard pulls in protobuf and friends, which runs without it never need.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        def write(f: Any) -> None:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self._columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            f.write(text.getvalue().encode())

        atomic_write(self._csv_path, write)

    def _append(self, row: dict[str, Any]) -> None:
        new_columns = [c for c in row if c not in self._columns]
        if new_columns:
            # A metric seen for the first time widens the header; rewrite the (small) file once with it.
            self._csv.close()
            with open(self._csv_path, newline="") as f:
                old_rows = list(csv.DictReader(f))
            self._columns += new_columns
            self._rewrite(old_rows)
            self._csv = open(self._csv_path, "a", newline="")  # noqa: SIM115 (closed in close())
        csv.DictWriter(self._csv, fieldnames=self._columns, restval="").writerow(row)
        self._csv.flush()
        self.rows += 1

    def log_train(self, step: int, epoch: int, values: Mapping[str, float | None]) -> None:
        """Write a training row (keys from TRAIN_COLUMNS; None values stay empty) and `train/<key>` scalars."""
        if not self.enabled:
            return
        self._append({"step": step, "epoch": epoch, **{k: v for k, v in values.items() if v is not None}})
        if self._writer is not None:
            for key, value in values.items():
                if value is not None:
                    self._writer.add_scalar(f"train/{key}", value, step)

    def log_eval(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """Write an evaluation row (``eval_<name>`` columns) and `eval/<name>` scalars."""
        if not self.enabled:
            return
        self._append({"step": step, "epoch": epoch, **{f"eval_{k}": v for k, v in metrics.items()}})
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(f"eval/{key}", value, step)

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (the CSV is flushed on every row)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the CSV and TensorBoard files."""
        if not self.enabled:
            return
        self._csv.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def progress_bar(total: int | None, initial: int, enabled: bool) -> tqdm:
    """A tqdm bar over training steps, shown only when `enabled` (rank 0 and the config allows it) and stderr is a
    terminal; otherwise a silent stand-in with the same methods."""
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )
