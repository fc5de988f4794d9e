"""Which of the world's planted click mechanisms trained ranking models have learned (ranking issue, "World").

For each finished run folder (from `rankstack train ranking` or the drivers) on a synthetic world, predicts the
split with the run's best weights and fits the model's click logit on the truth's named click terms
(`rankstack.ranking.evaluate.mechanism_report`): per mechanism a coefficient (1 = followed at its true scale,
0 = ignored), and the share of the model's logit the terms explain (R²). Beside them, what each mechanism is worth:
the Bayes click AUC minus the AUC of the truth without that term.

    python benchmarks/ranking_mechanisms.py --runs runs/abl/runs/base/full-seed0 runs/abl/runs/base/drop_realtime_events-seed0 \\
        [--names full drop_realtime] [--split test] [--device auto] [--out benchmarks/results/ranking_mechanisms.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.ranking.bench import machine_info, run_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="finished ranking run folders on a world")
    parser.add_argument("--names", nargs="+", help="a column name per run (default: the folder names)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="write the reports as JSON here")
    parser.add_argument("--device", default="auto", help="where the runs predict: auto (a GPU when there is one), cpu, "
                        "cuda or cuda:N")
    args = parser.parse_args()
    names = run_labels(args.runs, args.names)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from rankstack import metrics
    from rankstack.ranking.evaluate import mechanism_report, predict_split
    from rankstack.ranking.run import load_run
    from rankstack.train.distributed import resolve_device

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    device = resolve_device(args.device)
    reports = {}
    for name, run in zip(names, args.runs):
        config, dataset, model = load_run(run)
        pred = predict_split(model.to(device), dataset, args.split, config.eval_batch_size, device)
        report = mechanism_report(dataset, args.split, pred["click"], pred["pred_click"])
        if not report:
            sys.exit(f"{run}: its dataset {dataset.path} has no truth with click terms (a synthetic world's)")
        reports[name] = {"run": str(run), "click_auc": metrics.auc(pred["click"], pred["pred_click"]), **report}
    first = next(iter(reports.values()))
    worth = {term: first["bayes_auc"] - entry["auc_without"] for term, entry in first["terms"].items()}
    lines = ["| mechanism | worth (Bayes AUC − without it) | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for term in sorted(worth, key=worth.get, reverse=True):
        cells = [f"{reports[n]['terms'][term]['coefficient']:.2f}" if term in reports[n]["terms"] else "—"
                 for n in names]
        lines.append(f"| {term} | {worth[term]:.4f} | " + " | ".join(cells) + " |")
    lines.append("| R² of the model logit on the terms | | " + " | ".join(f"{reports[n]['r2']:.2f}" for n in names) + " |")
    lines.append("| click AUC | " + f"{first['bayes_auc']:.4f} (Bayes) | "
                 + " | ".join(f"{reports[n]['click_auc']:.4f}" for n in names) + " |")
    table = "\n".join(lines)
    command = " ".join(["python", *sys.argv])
    print(f"{table}\n\ncommand: {command}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, **machine_info(), "split": args.split,
                                              "reports": reports}, indent=2))
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
