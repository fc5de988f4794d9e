"""Why AutoFAS keeps or drops the world's noise fields (docs/preranking.md, "Noise fields under a loose budget").

1. How much the pre-ranking teacher uses each field: mean |Δ logit| on the validation view when the field's values
   are permuted across all candidate rows, by the field's kind in the world's truth.
2. With `--search`: the loose-budget search (2 × the all-fields latency, no `derive_fill`, `derive_test_z` 2) for
   each seed, held-out share and teacher (the config's, and with `--no-noise-teacher` one trained without the noise
   fields): which noise fields and which `--costly` fields the derived student keeps.

    # the tiny-world test's setting (tests/test_preranking_world.py)
    python benchmarks/preranking_noise.py --config configs/preranking/autofas_world_tiny.yaml --out /tmp/nz/out \
        --set world=/tmp/nz/world-tiny --set n_cand=30 --set 'requests={train: 160, valid: 40, test: 40}' \
        --set teacher_epochs=2 --set 'autofas.widths=[32, 16]' --set autofas.search_steps=160 \
        --search --no-noise-teacher --costly distance_km user_cat_ctr
    # the medium world's teacher (the view and teacher of the issue-4 benchmark)
    python benchmarks/preranking_noise.py --config configs/preranking/autofas_world_medium.yaml --out /tmp/nz/medium \
        --set world=/tmp/world-medium-v2 --set view=/tmp/pm/view-medium --set teacher_run=/tmp/pm/teacher-medium-v2 \
        --set latency.table_dir=configs/preranking/latency

(`rankstack world generate --size tiny --seed 0 --out /tmp/nz/world-tiny` first.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="folder for the view, teachers and latency table when not set")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (YAML value)")
    parser.add_argument("--search", action="store_true", help="also run the loose-budget searches")
    parser.add_argument("--no-noise-teacher", action="store_true", help="also with a teacher without noise fields")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--costly", nargs="+", default=[], help="costly fields to report (default: the truth's)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import yaml

    from rankstack.preranking.autofas import AutoFASSearch
    from rankstack.preranking.data import PrerankSplit
    from rankstack.preranking.distill import load_teacher, teacher_logits
    from rankstack.preranking.latency import predict_mlp
    from rankstack.preranking.run import load_config, prepare
    from rankstack.ranking.run import load_run_config, train_ranking

    out = Path(args.out)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides.setdefault("latency.table_dir", str(out / "latency"))
    config = load_config(args.config, overrides)
    print("command: python " + " ".join(sys.argv))
    torch.manual_seed(0)
    prep = prepare(config, out, log=lambda *_: None)
    truth = json.loads((prep.view / "truth" / "fields.json").read_text())
    kind = {n: k for k in ("informative", "weak", "noise") for n in truth[k]}
    noise, costly = truth["noise"], args.costly or truth["costly_informative"]

    def importance(teacher) -> dict[str, float]:
        valid = prep.splits["valid"]
        base = teacher_logits(teacher, valid)
        generator = torch.Generator().manual_seed(0)
        moved = {}
        for f in prep.fields:
            values = valid.tensors[f.key]
            flat = values.flatten(0, 1)
            permuted = flat[torch.randperm(flat.shape[0], generator=generator)].view_as(values)
            split = dataclasses.replace(valid, tensors={**valid.tensors, f.key: permuted})
            moved[f.name] = float((teacher_logits(teacher, split) - base).abs().mean())
        return moved

    teacher_dir = Path(config.teacher_run) if config.teacher_run else out / "teacher"
    moved = importance(load_teacher(teacher_dir))
    print(f"teacher {teacher_dir}: mean |Δ logit| on the validation view when a field is permuted")
    for group in ("noise", "costly", "informative"):
        names = noise if group == "noise" else costly if group == "costly" else \
            [n for n, k in kind.items() if k == "informative" and n not in costly and n in moved]
        values = sorted(moved[n] for n in names)
        print(f"  {group}: {values[0]:.3f}–{values[-1]:.3f}  " + ", ".join(f"{n} {moved[n]:.3f}" for n in names))
    if not args.search:
        return

    teachers = {"all fields": teacher_dir}
    if args.no_noise_teacher:
        run = load_run_config(ROOT / config.teacher_config, {
            "data": str(Path(config.world) / "ranking"), "tasks": ["click"],
            "trainer.epochs": config.teacher_epochs or 2,
            "features": [f.name for f in prep.fields if f.name not in noise]})
        train_ranking(run, out / "teacher-no-noise")
        teachers["no noise fields"] = out / "teacher-no-noise"
    c = config.autofas
    budget = 2.0 * predict_mlp(prep.fields, [f.name for f in prep.fields], c.widths[:1], prep.table, prep.n_cand,
                               c.embedding_dim, config.latency.cost_scale)["total"]
    print(f"\nloose budget {budget:.2f} ms (2 × all fields, narrowest net), derive_test_z 2, no derive_fill")
    print("| teacher | held-out share | seed | noise kept | costly kept | fields kept |\n|---|---|---|---|---|---|")
    for label, path in teachers.items():
        train = prep.splits["train"]
        train = PrerankSplit({**train.tensors, "teacher": teacher_logits(load_teacher(path), train)},
                             train.request_ids, train.fields)
        for heldout in args.heldout:
            for seed in args.seeds:
                search_config = dataclasses.replace(c, derive_fill=False, heldout_frac=heldout, derive_test_z=2.0)
                spec = AutoFASSearch(prep.layout, prep.fields, search_config, prep.table, budget,
                                     config.latency.cost_scale, prep.n_cand, seed).run(train)
                print(f"| {label} | {heldout} | {seed} | {', '.join(n for n in noise if n in spec.fields) or '–'} | "
                      f"{', '.join(n for n in costly if n in spec.fields) or '–'} | {len(spec.fields)} |")


if __name__ == "__main__":
    main()
