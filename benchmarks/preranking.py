"""Pre-ranking benchmark (autofas.md §13): AutoFAS at several latency budgets beside COLD, the two-tower model, the
hand-designed distilled MLPs and the all-features MLP, on a synthetic world's pre-ranking view or on a converted
real one (`--data` + `--teacher-data`, Foursquare NYC: configs/preranking/autofas_nyc.yaml).

Runs `rankstack.preranking.run.bench_preranking` (the same code as `rankstack bench preranking`), then copies
`results.json`, `pareto.csv` and the two Pareto plots to `benchmarks/results/preranking_<name>.*` with the
command, date, machine and git commit, and prints the Pareto table and the budget checks (measured p50 ≤ 1.1 ×
budget). Generates the world first if `--world` does not hold one.

    python benchmarks/preranking.py --config configs/preranking/autofas_world_small.yaml \
        --world runs/world_small --out runs/preranking_small --name small
    python benchmarks/preranking.py --config configs/preranking/autofas_nyc.yaml --data runs/nyc_view \
        --teacher-data runs/nyc_ctr --out runs/preranking_nyc --name nyc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/preranking/autofas_world_small.yaml"))
    parser.add_argument("--world", default=str(ROOT / "runs/world_small"))
    parser.add_argument("--size", default="small", help="world size to generate when --world is empty")
    parser.add_argument("--view", default="", help="pre-ranking view folder (default: <out>/view)")
    parser.add_argument("--data", default="", help="a converted real pre-ranking view instead of a world")
    parser.add_argument("--teacher-data", default="", help="with --data: the dataset the teacher trains on")
    parser.add_argument("--out", default=str(ROOT / "runs/preranking_small"))
    parser.add_argument("--name", default="small")
    parser.add_argument("--summarize", action="store_true", help="only summarise an existing --out folder")
    parser.add_argument("--budgets-ms", type=float, nargs="+", default=None,
                        help="AutoFAS only, at these fixed budgets (no baselines, no T_ref)")
    parser.add_argument("--teacher-run", default="", help="reuse a finished teacher run folder")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rankstack.preranking.run import bench_preranking, load_config, prepare, train_autofas
    from rankstack.world import WorldConfig, generate

    out = Path(args.out)
    if not args.summarize:
        if args.data:
            overrides = {"world": "", "data": args.data, "teacher_data": args.teacher_data}
        else:
            world = Path(args.world)
            if not (world / "world.yaml").is_file():
                generate(WorldConfig.preset(args.size), seed=0, out=world)
            overrides = {"world": str(world)}
        overrides = {**overrides, **({"view": args.view} if args.view else {}),
                     **({"teacher_run": args.teacher_run} if args.teacher_run else {}),
                     **({"seed": args.seed} if args.seed is not None else {})}
        config = load_config(args.config, overrides)
        if args.budgets_ms:
            out.mkdir(parents=True, exist_ok=True)
            prep = prepare(config, out)
            rows = []
            for budget in args.budgets_ms:
                row = train_autofas(prep, budget, out / f"autofas_{budget:g}")
                row["config"] = f"budget {budget:g} ms"
                rows.append(row)
            (out / "results.json").write_text(json.dumps(
                {"device": prep.table.device, "seed": config.seed, "latency_fit": prep.table.fit,
                 "references": prep.teacher["test"], "rows": rows}, indent=1, default=float))
        else:
            bench_preranking(config, out)
    result = json.loads((out / "results.json").read_text())
    result["meta"] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {result['device']}",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip(),
    }
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(exist_ok=True)
    (dest / f"preranking_{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    for name in ("pareto.csv", "pareto_auc_latency.png", "pareto_overlap_latency.png"):
        if (out / name).is_file():
            shutil.copy(out / name, dest / f"preranking_{args.name}_{name}")
    print(result["meta"]["command"])
    print(table(result))


def table(result: dict) -> str:
    """The Pareto table; `true overlap@10` (world only: the true probabilities' top-10) is `–` on real data."""

    def cell(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "–"

    lines = ["| model | config | latency p50 (ms) | predicted (ms) | retrieval (ms) | AUC | GAUC | overlap@10 | "
             "true overlap@10 | click recall@10 | fields |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: r["latency_p50_ms"]):
        pred = f"{r['predicted_ms']:.2f}" if r.get("predicted_ms") else "–"
        lines.append(f"| {r['model']} | {r.get('config', '')} | {r['latency_p50_ms']:.2f} | {pred} | "
                     f"{r['retrieval_ms']:.2f} | {r['auc']:.4f} | {r['gauc']:.4f} | {r['overlap@10']:.3f} | "
                     f"{cell(r, 'true_overlap@10')} | {cell(r, 'click_recall@10')} | {r['n_fields']} |")
    for ref in ("teacher", "bayes", "random"):
        if ref not in result["references"]:
            continue
        m = result["references"][ref]
        lines.append(f"| {ref} (reference) | | | | | {m['auc']:.4f} | {m['gauc']:.4f} | {m['overlap@10']:.3f} | "
                     f"{cell(m, 'true_overlap@10')} | {cell(m, 'click_recall@10')} | |")
    lines.append("")
    for r in result["rows"]:
        if r["model"] == "autofas":
            ok = "ok" if r["latency_p50_ms"] <= 1.1 * r["budget_ms"] else "OVER"
            lines.append(f"budget {r['budget_ms']:.2f} ms: measured {r['latency_p50_ms']:.2f} ms "
                         f"({r['budget_ratio']:.2f} × budget, {ok}); predicted {r['predicted_ms']:.2f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
