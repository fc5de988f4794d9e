"""Train the toy click model with `rankstack.train.Trainer`; launched by the resume and DDP tests.

Runs single-process (``python tests/train_toy_script.py ...``) or under ``torchrun``. With ``--record-dir`` every
rank writes its pid (``pid_rank<r>``) at start and, at the end, its final parameters (``params_rank<r>.pt``) and
the sample ids it trained on per epoch (``ids_rank<r>.json``). With ``--pause-after-step K`` the run blocks
before fetching batch K+1, i.e. once step K and its checkpoint are done, after rank 0 has written
``<record-dir>/paused``; the tests then kill it with SIGKILL at a known point.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _toy_training import ToyLoader, ToyModel, make_dataset, make_evaluate

from rankstack.train import Trainer, TrainerConfig, cleanup, init_distributed, seed_everything


class RecordingLoader:
    """Wraps a ToyLoader to record the sample ids it yields and to block at a chosen step."""

    def __init__(self, inner: ToyLoader, pause_after_step: int | None, marker: Path | None) -> None:
        self.inner = inner
        self.pause_after_step = pause_after_step
        self.marker = marker
        self.fetched = 0
        self.ids: dict[int, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = iter(self.inner)
        while True:
            # Checked before advancing the inner loader, so the checkpoint of step K is already on disk.
            if self.pause_after_step is not None and self.fetched == self.pause_after_step:
                if self.marker is not None:
                    self.marker.write_text("paused\n")
                time.sleep(3600)
            batch = next(batches, None)
            if batch is None:
                return
            self.fetched += 1
            self.ids[self.inner.epoch].extend(batch["sample_id"].tolist())
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--record-dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-after-step", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--eval-every", type=int, default=7)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=3)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warmup-steps", type=int, default=0)
    args = parser.parse_args()

    rank, world_size, _ = init_distributed()
    if args.record_dir is not None:
        args.record_dir.mkdir(parents=True, exist_ok=True)
        (args.record_dir / f"pid_rank{rank}").write_text(str(os.getpid()))
    config = TrainerConfig(
        epochs=args.epochs,
        lr_dense=3e-3,
        warmup_steps=args.warmup_steps,
        lr_embedding=3e-2,
        weight_decay=1e-4,
        grad_clip_norm=5.0,
        eval_every_steps=args.eval_every,
        early_stopping_metric="logloss",
        early_stopping_mode="min",
        early_stopping_patience=args.patience,
        checkpoint_every_steps=args.checkpoint_every,
        log_every_steps=args.log_every,
        seed=args.seed,
        device="cpu",
        progress_bar=False,
    )
    seed_everything(config.seed)
    model = ToyModel(dropout=args.dropout)
    inner = ToyLoader(make_dataset(args.n_train, seed=1), args.batch_size, args.seed, rank, world_size)
    marker = args.record_dir / "paused" if args.record_dir is not None and rank == 0 else None
    loader = RecordingLoader(inner, args.pause_after_step, marker)
    trainer = Trainer(model, loader, config, args.run_dir, evaluate=make_evaluate(make_dataset(256, seed=2)))
    trainer.fit(resume=args.resume)
    if args.record_dir is not None:
        torch.save(model.state_dict(), args.record_dir / f"params_rank{rank}.pt")
        (args.record_dir / f"ids_rank{rank}.json").write_text(json.dumps(loader.ids))
    cleanup()


if __name__ == "__main__":
    main()
