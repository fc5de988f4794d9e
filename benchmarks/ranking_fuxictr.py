"""Peer check: FuxiCTR's DIN against rankstack's DIN on the same Amazon Beauty CTR split (ranking issue).

FuxiCTR (PyPI `fuxictr`, Apache-2.0) ships its DIN as `model_zoo.LongCTR.DIN` in the wheel. It is installed only in
the benchmark environment (`make bench-env`: a venv that sees rankstack's packages, so our torch is used by both):

    make bench-env                                   # or the three commands of that target
    /tmp/fuxi-venv/bin/python benchmarks/ranking_fuxictr.py --data /tmp/beauty --out runs/fuxictr-peer \\
        [--max-batches 200] [--epochs 1] [--fuxi-lr 1e-3] [--rankstack-set trainer.lr_dense=0.001] [--seed 1]
    python benchmarks/ranking_fuxictr.py --summary runs/fuxictr-peer*/ranking_fuxictr.json   # runs side by side
    # rankstack's side only, beside the FuxiCTR side of an earlier run of the same seed, data, epochs and batch:
    python benchmarks/ranking_fuxictr.py --data /tmp/beauty --out runs/fuxictr-peer-b --epochs 4 \
        --fuxictr-from runs/fuxictr-peer/ranking_fuxictr.json --rankstack-set model.args.dice_momentum=0.01

The data bridge (`FuxiBridge`): FuxiCTR's LongCTR models read batches `(batch_dict, item_dict, mask)`: non-item
columns and labels, every item feature of the L history events followed by the target as one flat `[B·(L+1)]`
tensor, and the history mask `[B, L]`; features are described by a `FeatureMap` (written here as FuxiCTR's
`feature_map.json` and loaded with `FeatureMap.load`). Our Parquet dataset already holds vocabulary ids with 0 as
padding, the convention FuxiCTR's embeddings expect (`padding_idx: 0`), so the bridge only reshapes: the long-term
(40) and real-time (10) streams are concatenated into one 50-event history, and the target item's fields are
appended. Both models read the very same batches from rankstack's `BatchLoader` (same shuffle seed), so the
samples/s compare the models and their training steps, not two data pipelines.

Each side trains with its own library's loop and recipe: FuxiCTR's `BaseModel.fit` (its Adam, its gradient
clipping at 10, its early stopping and LR decay on plateau) with `--fuxi-lr`; rankstack's `Trainer` with
`configs/ranking/din_beauty.yaml` (AdamW 1e-4 + Adagrad 0.05). Sizes match: embeddings 16, attention MLP [64, 32]
with Dice, no softmax, DNN [512, 256, 128]. Both are scored on the test split with `rankstack.metrics`.
samples/s = training samples / training time, evaluation excluded on both sides, in the same process, one thread.
Writes `<out>/ranking_fuxictr.json`. DIN's `pool_actions: false` pools the items only, as FuxiCTR does, and
`dice_padding: true` takes Dice's moments over padded events too; `--rankstack-set model.args.pool_actions=false`
gives both sides the same parameter count. `--fuxictr-from` trains rankstack's side only and reuses FuxiCTR's side
of an earlier run (FuxiCTR gave the same AUC to four decimals in both of its runs of one seed); that run's
speed ratio is then not measured (null).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack import metrics  # noqa: E402
from rankstack.config import parse_override  # noqa: E402
from rankstack.data.dataset import Dataset  # noqa: E402
from rankstack.data.loader import BatchLoader  # noqa: E402
from rankstack.nn.features import FieldLayout  # noqa: E402
from rankstack.ranking.bench import machine_info  # noqa: E402
from rankstack.ranking.run import load_run_config, train_ranking  # noqa: E402
from rankstack.ranking.sweep import mean_std  # noqa: E402


class FuxiBridge:
    """rankstack batches → FuxiCTR LongCTR batches, and the matching FuxiCTR `FeatureMap`.

    >>> # bridge = FuxiBridge(Dataset.open("/tmp/beauty"), Path("/tmp/fuxi-data"))
    >>> # batch_dict, item_dict, mask = bridge.convert(next(iter(BatchLoader(dataset, "train", 8))))
    """

    def __init__(self, dataset: Dataset, data_dir: Path, embedding_dim: int = 16) -> None:
        from fuxictr.features import FeatureMap

        self.layout = FieldLayout.from_dataset(dataset)
        layout = self.layout
        if layout.multi_valued or layout.dense:
            raise ValueError("the FuxiCTR bridge handles categorical NS fields, item fields and item sequences only")
        self.label = layout.labels[0]
        self.group = dataset.schema.group_key
        self.item_fields = [key for key, _ in layout.target]
        features = [{key: {"type": "categorical", "source": "context", "vocab_size": layout.tables[group],
                           "padding_idx": 0}} for key, group in layout.ns]
        features += [{key: {"type": "categorical", "source": "item", "vocab_size": layout.tables[group],
                            "padding_idx": 0}} for key, group in layout.target]
        if self.group:
            features.append({self.group: {"type": "meta"}})
        data_dir.mkdir(parents=True, exist_ok=True)
        spec = {"dataset_id": "rankstack_bridge", "num_fields": len(features), "total_features": 0,
                "input_length": 0, "labels": [self.label], "features": features}
        (data_dir / "feature_map.json").write_text(json.dumps(spec, indent=2))
        self.feature_map = FeatureMap("rankstack_bridge", str(data_dir))
        self.feature_map.load(str(data_dir / "feature_map.json"),
                              {"embedding_dim": embedding_dim, "group_id": self.group})

    def convert(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict, torch.Tensor]:
        layout = self.layout
        batch_dict = {key: batch[key] for key, _ in layout.ns}
        batch_dict[self.label] = batch[self.label]
        if self.group:
            batch_dict[self.group] = batch[self.group]
        item_dict = {}
        for i, key in enumerate(self.item_fields):
            history = torch.cat([batch[seq.item_columns[i]] for seq in layout.sequences], dim=1)
            item_dict[key] = torch.cat([history, batch[key].unsqueeze(1)], dim=1).flatten()
        first = torch.cat([batch[seq.item_columns[0]] for seq in layout.sequences], dim=1)
        return batch_dict, item_dict, (first > 0).float()


class BridgedLoader:
    """A FuxiCTR data generator over a rankstack `BatchLoader` (at most `max_batches` batches per pass)."""

    def __init__(self, bridge: FuxiBridge, loader: BatchLoader, max_batches: int | None = None) -> None:
        self.bridge, self.loader, self.max_batches = bridge, loader, max_batches
        self.samples = 0

    def __len__(self) -> int:
        return min(len(self.loader), self.max_batches or len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= len(self):
                return
            self.samples += len(batch[self.bridge.label])
            yield self.bridge.convert(batch)


def train_fuxictr(dataset: Dataset, args: argparse.Namespace, out: Path) -> dict:
    from model_zoo.LongCTR.DIN import DIN

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    bridge = FuxiBridge(dataset, out / "fuxi-data")
    train = BridgedLoader(bridge, BatchLoader(dataset, "train", args.batch_size, shuffle=True, seed=args.seed),
                          args.max_batches)
    valid = BridgedLoader(bridge, BatchLoader(dataset, "valid", 8192), args.eval_max_batches)
    model = DIN(bridge.feature_map, model_id="DIN_beauty", gpu=-1, dnn_hidden_units=[512, 256, 128],
                attention_hidden_units=[64, 32], attention_hidden_activations="Dice", din_use_softmax=False,
                embedding_dim=16, learning_rate=args.fuxi_lr, optimizer="adam", loss="binary_crossentropy",
                metrics=["AUC", "logloss"], monitor="AUC", model_root=str(out / "fuxi-checkpoints"),
                early_stop_patience=2, verbose=0)
    Path(model.model_dir).mkdir(parents=True, exist_ok=True)  # FuxiCTR's run_expid.py creates it
    # FuxiCTR's fit evaluates once per epoch; time it separately so samples/s counts training only.
    evaluate, eval_time = model.evaluate, [0.0]

    def timed_evaluate(*a, **k):
        start = time.perf_counter()
        try:
            return evaluate(*a, **k)
        finally:
            eval_time[0] += time.perf_counter() - start

    model.evaluate = timed_evaluate
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, validation_data=valid, max_gradient_norm=10.0)
    train_time = time.perf_counter() - start - eval_time[0]
    test = BridgedLoader(bridge, BatchLoader(dataset, "test", 8192))
    pred = model.predict(test)
    labels, groups = [], []
    for batch in BatchLoader(dataset, "test", 8192):
        labels.append(batch[bridge.label].numpy())
        groups.append(batch[bridge.group].numpy())
    report = metrics.binary_report(np.concatenate(labels), pred, np.concatenate(groups), prefix="click_")
    return {"samples": train.samples, "train_time_s": train_time, "samples_per_s": train.samples / train_time,
            "params": sum(p.numel() for p in model.parameters()), "test": report}


def train_rankstack(args: argparse.Namespace, out: Path) -> dict:
    overrides = {"data": args.data, "trainer.seed": args.seed, "trainer.epochs": args.epochs,
                 "trainer.progress_bar": False, "trainer.tensorboard": False, "batch_size": args.batch_size}
    if args.max_batches:
        overrides["trainer.max_steps"] = args.max_batches * args.epochs
    if args.eval_max_batches:
        overrides["eval_max_rows"] = args.eval_max_batches * 8192
    overrides.update(parse_override(p) for p in args.rankstack_set)
    config = load_run_config(ROOT / "configs" / "ranking" / "din_beauty.yaml", overrides)
    results = train_ranking(config, out / "rankstack-din", where="din_beauty.yaml")
    return {"samples": results["train"]["samples"], "samples_per_s": results["train"]["samples_per_s"],
            "params": results["params"], "wall_time_s": results["train"]["wall_time_s"],
            "test": {k: v for k, v in results["test"].items() if isinstance(v, float)}}


def reuse_fuxictr(path: str, args: argparse.Namespace) -> tuple[dict, str]:
    """The FuxiCTR side and FuxiCTR version of an earlier run, checked to match this run's seed, data and recipe."""
    earlier = json.loads(Path(path).read_text())
    seed = run_seed(earlier)
    mine = {"data": str(Path(args.data).resolve()), "epochs": args.epochs, "batch_size": args.batch_size,
            "max_batches": args.max_batches, "fuxi_lr": args.fuxi_lr, "seed": args.seed}
    theirs = {"data": str(Path(earlier["data"]).resolve()), "epochs": earlier["epochs"],
              "batch_size": earlier["batch_size"], "max_batches": earlier["max_batches"],
              "fuxi_lr": earlier["fuxi_lr"], "seed": seed}
    differ = [f"{key} {theirs[key]} (this run: {mine[key]})" for key in mine if mine[key] != theirs[key]]
    if differ:
        sys.exit(f"--fuxictr-from {path}: that run differs in {', '.join(differ)}; its FuxiCTR side is only "
                 "reusable for the same seed, data and recipe")
    return earlier["fuxictr_din"], earlier["fuxictr_version"]


def run_seed(run: dict) -> int:
    """The `--seed` of a run, read from its recorded command (0 when absent, the default)."""
    words = run["command"].split()
    return next((int(a) for flag, a in zip(words, words[1:]) if flag == "--seed"), 0)


def summarise(paths: list[str]) -> None:
    """One line per run (seed, both AUCs, the difference and the speed ratio), then mean ± std over the runs (the
    speed over the runs that measured it: a run with `--fuxictr-from` did not)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    print(f"{'run':52} {'seed':>4} {'FuxiCTR AUC':>11} {'rankstack AUC':>13} {'difference':>10} {'speed':>6}")
    columns = {"fuxi": [], "ours": [], "difference": [], "speed": []}
    for path, run in zip(paths, runs):
        row = {"fuxi": run["fuxictr_din"]["test"]["click_auc"], "ours": run["rankstack_din"]["test"]["click_auc"],
               "difference": run["auc_difference"], "speed": run["speed_ratio"]}
        for key, value in row.items():
            if value is not None:
                columns[key].append(value)
        speed = "—" if row["speed"] is None else f"{row['speed']:.2f}×"
        print(f"{Path(path).parent.name + '/' + Path(path).name:52} {run_seed(run):>4} {row['fuxi']:11.4f} "
              f"{row['ours']:13.4f} {row['difference']:+10.4f} {speed:>6}")
    stats = {key: mean_std(values) for key, values in columns.items() if values}
    speed = (f"{stats['speed'][0]:.2f}× (min {min(columns['speed']):.2f}×)" if columns["speed"]
             else "speed not measured")
    print(f"{'mean ± std':57} {stats['fuxi'][0]:.4f} ± {stats['fuxi'][1]:.4f} {stats['ours'][0]:.4f} ± "
          f"{stats['ours'][1]:.4f} {stats['difference'][0]:+.4f} ± {stats['difference'][1]:.4f} {speed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="tabulate earlier runs' JSONs and exit")
    parser.add_argument("--data", help="the Beauty CTR dataset (rankstack data convert ...)")
    parser.add_argument("--out")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-batches", type=int, help="training batches per epoch (a subset, for checks)")
    parser.add_argument("--eval-max-batches", type=int, help="validation batches of 8192 per evaluation")
    parser.add_argument("--fuxi-lr", type=float, default=1e-3)
    parser.add_argument("--rankstack-set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="an override of rankstack's din_beauty.yaml, e.g. trainer.lr_dense=0.001")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuxictr-from", metavar="JSON",
                        help="train rankstack's side only; take FuxiCTR's from this earlier run of the same seed, "
                             "data and recipe (no speed ratio then)")
    args = parser.parse_args()
    if args.summary:
        summarise(args.summary)
        return
    if not (args.data and args.out):
        parser.error("--data and --out are required to train (or pass --summary JSON ...)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; pick a new --out folder (both runs start from scratch).")
    out.mkdir(parents=True, exist_ok=True)
    if args.fuxictr_from:
        fuxi, version = reuse_fuxictr(args.fuxictr_from, args)
    else:
        import fuxictr

        fuxi, version = train_fuxictr(Dataset.open(args.data), args, out), fuxictr.__version__
    ours = train_rankstack(args, out)
    result = {"command": " ".join(["python", *sys.argv]), **machine_info(), "fuxictr_version": version,
              "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
              "max_batches": args.max_batches, "fuxi_lr": args.fuxi_lr, "rankstack_set": args.rankstack_set,
              "fuxictr_from": args.fuxictr_from, "fuxictr_din": fuxi, "rankstack_din": ours,
              "auc_difference": ours["test"]["click_auc"] - fuxi["test"]["click_auc"],
              "speed_ratio": None if args.fuxictr_from else ours["samples_per_s"] / fuxi["samples_per_s"]}
    (out / "ranking_fuxictr.json").write_text(json.dumps(result, indent=2))
    print(f"{'':16} {'click AUC':>10} {'GAUC':>8} {'log-loss':>9} {'samples/s':>10} {'params':>10}")
    for name, side in (("FuxiCTR DIN", fuxi), ("rankstack DIN", ours)):
        t = side["test"]
        print(f"{name:16} {t['click_auc']:10.4f} {t['click_gauc']:8.4f} {t['click_logloss']:9.4f} "
              f"{side['samples_per_s']:10,.0f} {side['params']:10,}")
    speed = ("not measured (--fuxictr-from)" if result["speed_ratio"] is None
             else f"{result['speed_ratio']:.2f}×")
    print(f"AUC difference (rankstack − FuxiCTR): {result['auc_difference']:+.4f}; speed ratio {speed}\n"
          f"command: {result['command']}\nwritten {out / 'ranking_fuxictr.json'}")


if __name__ == "__main__":
    main()
