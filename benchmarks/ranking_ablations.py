"""HeMix ablations against the world's mechanisms (ranking issue, "Ablations"; hemix.md §7, §8, §12.4).

Each §8 ablation should lower click AUC on the world, and turning the world mechanism that the ablated part is
meant to capture off (e.g. `realtime_intent: 0`) should remove that loss. This driver:
1. generates the base world and one world per mechanism with that knob at 0 (same size and seed), under
   `<out>/worlds/` (kept and reused);
2. trains full HeMix and every ablation on the base world, and full HeMix and the matching ablations on each
   mechanism-off world, for each seed, under `<out>/runs/<world>/<ablation>-seed<s>/` (resumable: finished runs
   are read back, runs stopped half-way continue from their checkpoints);
3. writes `<out>/ranking_ablations.json` and `.md`: per ablation, click AUC mean ± std and ΔAUC against full HeMix
   (mean of the per-seed differences ± their std) with the mechanism on and off, and whether the drop is
   "significant" (Δ < 0 and |Δ| > 2 std) and, for a significant drop, whether it "vanishes" with the mechanism
   off (|Δ| < 2 std, §12.4).

    python benchmarks/ranking_ablations.py --size medium --out runs/ablations [--seeds 0 1 2] [--world-seed 0]
        [--ablations no_fixed_queries drop_realtime_events ...] [--recipe medium] [--base-world DIR]

`--base-world` reuses an existing world folder (e.g. /tmp/world-medium) instead of generating the base world.
`--max-steps` / `--eval-max-rows` cap every run for smoke checks; such tables are not results. `--jobs N` generates
the worlds and trains the runs N at a time (each in its own process: on a GPU, several runs share the card);
`--collect-only` trains nothing and tabulates the runs that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rankstack.config import parse_override  # noqa: E402
from rankstack.ranking.bench import machine_info  # noqa: E402
from rankstack.ranking.sweep import map_in_processes, mean_std, run_all  # noqa: E402

# hemix.md §8 switch per ablation, and the world mechanism (§7) whose signal it should lose (None: no mechanism,
# reported on the base world only).
ABLATIONS: dict[str, tuple[dict, str | None]] = {
    "no_fixed_queries": ({"use_fixed_queries": False}, "longterm_interest"),
    "no_global": ({"use_global": False}, "longterm_interest"),
    "no_dynamic_queries": ({"use_dynamic_queries": False}, "realtime_intent"),
    "no_realtime_split": ({"use_realtime": False}, "realtime_intent"),
    "drop_realtime_events": ({"drop_realtime_events": True}, "realtime_intent"),
    "mixer_none": ({"mixer": "none"}, "interaction_order"),
    "mixer_mlp": ({"mixer": "mlp"}, "interaction_order"),
    "mixer_rankmixer": ({"mixer": "rankmixer"}, "interaction_order"),
    "shared_lowrank": ({"shared_lowrank": True}, None),
    "mixer_attention": ({"mixer": "attention"}, None),
}


def world_dir(out: Path, size: str, world_seed: int, knob: str | None, base: str | None,
              create: bool = True) -> Path:
    """The ranking dataset of the base world (`knob` None) or of the world with `knob` = 0, generated if absent
    (unless `create` is false)."""
    if knob is None and base:
        return Path(base) / "ranking"
    from rankstack.world import WorldConfig, generate

    folder = out / "worlds" / (f"{size}-seed{world_seed}" + (f"-{knob}-off" if knob else ""))
    if create and not (folder / "world.yaml").is_file():
        overrides = {knob: 0.0} if knob else {}
        generate(WorldConfig.preset(size, **overrides), seed=world_seed, out=folder)
        print(f"generated {folder}", flush=True)
    return folder / "ranking"


def deltas(rows: list[dict], world: str, ablation: str) -> list[float]:
    """Per seed, click AUC of `ablation` minus full HeMix's, on `world`."""
    full = {r["seed"]: r["click_auc"] for r in rows if r["world"] == world and r["ablation"] == "full"}
    return [r["click_auc"] - full[r["seed"]] for r in rows
            if r["world"] == world and r["ablation"] == ablation and r["seed"] in full]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--base-world", help="an existing world folder to use as the base world")
    parser.add_argument("--recipe", default="medium", choices=["small", "medium"],
                        help="configs/ranking/hemix_world_<recipe>.yaml")
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--eval-max-rows", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worlds generated and runs trained at once, each in its own process")
    parser.add_argument("--collect-only", action="store_true", help="train nothing; tabulate the finished runs")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out)
    config = ROOT / "configs" / "ranking" / f"hemix_world_{args.recipe}.yaml"
    knobs = sorted({ABLATIONS[a][1] for a in args.ablations if ABLATIONS[a][1]})
    plan = [("base", None, ["full", *args.ablations])]
    plan += [(f"{knob}-off", knob, ["full", *[a for a in args.ablations if ABLATIONS[a][1] == knob]])
             for knob in knobs]
    worlds = [(out, args.size, args.world_seed, knob, args.base_world, not args.collect_only) for _, knob, _ in plan]
    datas = map_in_processes(world_dir, worlds, 1 if args.collect_only else args.jobs)
    cells, runs = [], []
    for (world, knob, names), data in zip(plan, datas):
        for name in names:
            switch = ABLATIONS[name][0] if name != "full" else {}
            for seed in args.seeds:
                overrides = {"data": str(data), "trainer.seed": seed,
                             **{f"model.args.{k}": v for k, v in switch.items()},
                             **({"trainer.max_steps": args.max_steps} if args.max_steps else {}),
                             **({"eval_max_rows": args.eval_max_rows} if args.eval_max_rows else {}),
                             **dict(parse_override(p) for p in args.set)}
                cells.append((world, knob, name, seed))
                runs.append((config, overrides, out / "runs" / world / f"{name}-seed{seed}"))
    rows = []
    for (world, knob, name, seed), results in zip(cells, run_all(runs, args.jobs, args.collect_only)):
        if results is None:
            print(f"{world} {name} seed {seed}: no result", flush=True)
            continue
        test = results["test"]
        rows.append({"world": world, "knob": knob, "ablation": name, "seed": seed,
                     "click_auc": test["click_auc"], "order_auc": test.get("order_auc"),
                     "bayes_click_auc": test.get("bayes", {}).get("click_auc")})
        print(f"{world} {name} seed {seed}: click AUC {test['click_auc']:.4f}", flush=True)

    lines = ["| ablation | mechanism | click AUC (base) | ΔAUC base | significant drop | ΔAUC mechanism off | "
             "drop vanishes |", "|---|---|---|---|---|---|---|"]
    summary = {}
    for name in ["full", *args.ablations]:
        knob = ABLATIONS[name][1] if name != "full" else None
        auc = mean_std([r["click_auc"] for r in rows if r["world"] == "base" and r["ablation"] == name])
        entry = {"mechanism": knob, "click_auc_base": auc}
        cells = [name, knob or "", f"{auc[0]:.4f} ± {auc[1]:.4f}"]
        if name != "full":
            on = mean_std(deltas(rows, "base", name))
            entry["delta_base"] = on
            entry["significant_drop"] = on[0] < 0 and abs(on[0]) > 2 * on[1]
            cells += [f"{on[0]:+.4f} ± {on[1]:.4f}", str(entry["significant_drop"])]
            if knob:
                # A sweep stopped before the mechanism-off runs has no control: nothing to report there.
                off_deltas = deltas(rows, f"{knob}-off", name)
                off = mean_std(off_deltas) if off_deltas else None
                entry["delta_mechanism_off"] = off
                # Only a drop that is there with the mechanism on can vanish when it is off.
                entry["drop_vanishes"] = None
                if not entry["significant_drop"]:
                    verdict = "n/a (no significant drop)"
                elif off is None:
                    verdict = "not measured"
                else:
                    entry["drop_vanishes"] = abs(off[0]) < 2 * off[1]
                    verdict = str(entry["drop_vanishes"])
                cells += [f"{off[0]:+.4f} ± {off[1]:.4f}" if off else "not trained", verdict]
            else:
                cells += ["", ""]
        else:
            cells += ["", "", "", ""]
        summary[name] = entry
        lines.append("| " + " | ".join(cells) + " |")
    bayes = [r["bayes_click_auc"] for r in rows if r["world"] == "base" and r["bayes_click_auc"] is not None]
    if bayes:
        lines.append(f"\nBayes-optimal click AUC of the base world: {statistics.fmean(bayes):.4f}")
    table = "\n".join(lines)
    command = " ".join(["python", *sys.argv])
    (out / "ranking_ablations.json").write_text(json.dumps(
        {"command": command, **machine_info(), "size": args.size, "world_seed": args.world_seed,
         "seeds": args.seeds, "max_steps": args.max_steps, "rows": rows, "summary": summary}, indent=2))
    (out / "ranking_ablations.md").write_text(f"```\n{command}\n```\n\n{table}\n")
    print(f"\n{table}\n\ncommand: {command}\nwritten {out / 'ranking_ablations.json'} and .md")


if __name__ == "__main__":
    main()
