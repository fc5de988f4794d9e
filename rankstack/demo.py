"""`make demo` (`rankstack demo`): the whole cascade on the small world in one command (issue 8, item 5).

Every stage runs through the library function behind its own CLI command, at the budget `configs/demo.yaml` gives
it (`DemoConfig`), into one folder under `--out` (default `runs/demo`):

    world/        the synthetic city                                  rankstack world generate
    <model>/      the ranking run (runs/demo/dlrm), beside item       rankstack train ranking
                  popularity and the Bayes-optimal figures of the
                  world's truth
    preranking/   AutoFAS under one latency budget, the ranker's      rankstack train preranking --budget-ms
                  recipe as its teacher, beside the teacher, random
                  scores and the true probabilities
    retrieval/    GeoGR beside popularity, geo-nearest popular,       rankstack train retrieval
                  SASRec and the oracle
    relevance/    a label-first SFT of a small LM, scored by CumPT    rankstack train relevance --stage sft,
                  beside the majority class                           rankstack bench relevance
    <model>/serving/   the serving artifacts of every stage           rankstack export --retrieval --preranking
    report.md, *.png   one table and one bar plot per stage, the timings
    stages/<stage>.json   what each finished stage measured (its wall time and metrics)

then `serve` starts `rankstack serve` on the ranking run and prints the demo page's URL.

Resuming: a stage writes `stages/<stage>.json` only once it has finished, and a re-run skips every stage that has
one, so a killed demo continues at the stage it was in (inside a stage, the ranking trainer resumes from its
checkpoint and GeoGR from its last finished sub-stage; the other stages start over). `fresh=True` (`--fresh`)
removes the output folder first.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rankstack.config import load_yaml
from rankstack.errors import ConfigError
from rankstack.train.checkpoint import save_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"
STAGES = ("world", "ranking", "preranking", "retrieval", "relevance", "export")
REPORT = "report.md"


@dataclass
class WorldSpec:
    """The synthetic city every stage trains on: a `WorldConfig` preset and its seed."""

    size: Literal["tiny", "small", "medium", "large"] = "small"
    seed: int = 0


@dataclass
class StageSpec:
    """A stage's own config file (a relative path is read from the current directory, else from the repository) and
    the dotted keys the demo overrides in it (`{"trainer.epochs": 1}`, as `--set` does). The demo itself fills in
    the paths of its world."""

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrerankingSpec(StageSpec):
    """AutoFAS: `budget_ms` is the latency budget per request (`rankstack train preranking --budget-ms`)."""

    budget_ms: float = 2.5


@dataclass
class RelevanceSpec(StageSpec):
    """The relevance SFT; `eval_examples` test (and dev, for CumPT's β) pairs are scored by `bench_run`."""

    eval_examples: int = 256
    batch_size: int = 16


@dataclass
class ServeSpec:
    """Where `rankstack serve` listens, and its serving config (stage budgets, `max_k`; None: the defaults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    config: str | None = None


@dataclass
class DemoConfig:
    """`configs/demo.yaml`: the world, one `StageSpec` per trained stage, and the server."""

    ranking: StageSpec
    preranking: PrerankingSpec
    retrieval: StageSpec
    relevance: RelevanceSpec
    world: WorldSpec = field(default_factory=WorldSpec)
    serve: ServeSpec = field(default_factory=ServeSpec)


def load_demo_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DemoConfig:
    """Read the demo config (default `configs/demo.yaml`); `overrides` maps dotted keys to values."""
    return load_yaml(DemoConfig, path or DEFAULT_CONFIG, overrides)


def config_path(path: str) -> Path:
    """A stage config: as written if that file exists, else relative to the repository."""
    for candidate in (Path(path), REPO / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"stage config {path} exists neither from the current directory nor in the repository "
                      f"{REPO}; fix the `config:` path in the demo config.")


def _floats(report: dict[str, Any], keys: list[str]) -> dict[str, float]:
    return {k: float(report[k]) for k in keys if isinstance(report.get(k), (int, float))}


def _table(model: str, series: dict[str, dict[str, Any]], metrics: list[str], plot: list[str],
           notes: list[str], run: Path) -> dict[str, Any]:
    """What a trained stage records: its metrics per method (the model first), which of them to plot, notes."""
    return {"model": model, "metrics": metrics, "plot": plot, "notes": notes, "run": str(run),
            "columns": list(series),  # the order of the table's columns (the JSON record sorts its keys)
            "series": {name: _floats(values, metrics) for name, values in series.items()}}


# ---- the stages ---------------------------------------------------------------------------------------------


def run_world(spec: WorldSpec, world: Path) -> dict[str, Any]:
    from rankstack.world import WorldConfig, generate

    generate(WorldConfig.preset(spec.size), seed=spec.seed, out=world, overwrite=True)
    return {"notes": [f"the `{spec.size}` world, seed {spec.seed}: {world}"]}


def run_ranking(spec: StageSpec, world: Path, run: Path) -> dict[str, Any]:
    """`rankstack train ranking`: the test metrics come from `evaluate_ranking`, with its popularity baseline and the
    Bayes-optimal figures of the world's true probabilities."""
    from rankstack.ranking.run import load_run_config, train_ranking

    path = config_path(spec.config)
    config = load_run_config(path, {**spec.overrides, "data": str(world / "ranking")})
    config.trainer.resume = True  # a demo killed mid-training continues from the run's checkpoint
    test = train_ranking(config, run, where=str(path))["test"]
    tasks = [key.removesuffix("_auc") for key in test if key.endswith("_auc")]
    metrics = [f"{task}_{m}" for task in tasks for m in ("auc", "gauc", "logloss")]
    name = config.model.name
    notes = [f"model `{name}` from {spec.config}; test split of the world; log-loss: lower is better"]
    return _table(name, {name: test, "popularity (item rate)": test.get("popularity", {}),
                         "Bayes-optimal": test.get("bayes", {})},
                  metrics, [m for m in metrics if not m.endswith("logloss")], notes, run)


def run_preranking(spec: PrerankingSpec, world: Path, run: Path, ranking_run: Path) -> dict[str, Any]:
    """`rankstack train preranking --budget-ms`; the teacher is the ranking run's own config, retrained by
    `prepare` on the pre-ranking view's fields (the ranker reads behaviour sequences the view does not hold)."""
    from rankstack.preranking.run import load_config, train_preranking

    shutil.rmtree(run, ignore_errors=True)  # an unfinished run starts over: its view or teacher may be half-written
    overrides = {"teacher_config": str(ranking_run / "config.yaml"), **spec.overrides, "world": str(world),
                 "budget_ms": spec.budget_ms}
    prerank_config = load_config(config_path(spec.config), overrides)
    result = train_preranking(prerank_config, run)
    row, refs = result["autofas"], result["references"]
    metrics = ["auc", "gauc", "overlap@10", "true_overlap@10", "click_recall@10"]
    dropped = [f["field"] for f in row["selection"]["fields"] if not f["kept"]]
    notes = [f"AutoFAS kept {row['n_fields']} of {row['n_fields'] + len(dropped)} fields (dropped: "
             f"{', '.join(dropped) or 'none'}), MLP widths {row['widths']}; "
             f"measured latency p50 {row['latency_p50_ms']:.2f} ms per request of {prerank_config.n_cand} "
             f"candidates (budget {row['budget_ms']:.2f} ms, predicted {row['predicted_ms']:.2f} ms)",
             "teacher: the ranking stage's recipe retrained for the view's fields; overlap@10: share of the "
             "teacher's top 10 kept; true_overlap@10: of the true click probabilities' top 10",
             "COLD, two-tower and hand-sized MLP baselines: `rankstack bench preranking` (not run by the demo)"]
    return _table("AutoFAS", {"AutoFAS": row, "teacher": refs.get("teacher", {}), "random": refs.get("random", {}),
                              "Bayes-optimal": refs.get("bayes", {})}, metrics, metrics, notes, run)


def run_retrieval(spec: StageSpec, world: Path, run: Path, world_spec: WorldSpec) -> dict[str, Any]:
    """`rankstack train retrieval`: GeoGR and its baselines, scored by `evaluate_topk` (resumes its sub-stages)."""
    from rankstack.retrieval.run import load_run_config, train_retrieval

    config = load_run_config(config_path(spec.config), {**spec.overrides, "data": str(world / "next_poi")})
    report = train_retrieval(config, run)
    series = {"GeoGR": report["geogr"]["test"]}
    for key, name in (("popularity", "popularity"), ("geo_nearest_popular", "geo-nearest popular"),
                      ("sasrec", "SASRec")):
        if key in report:
            series[name] = report[key]["test"]
    if "oracle" in report:
        series["oracle (true next-visit distribution)"] = report["oracle"]
    metrics = ["acc@1", "acc@5", "acc@10", "ndcg@10", "mrr"]
    counts = ", ".join(f"{name} {int(values['count'])}" for name, values in series.items() if "count" in values)
    notes = [f"trained on the `{world_spec.size}` world (the one every stage uses: the export needs its POIs) with "
             f"{spec.config}; lists of {int(series['GeoGR'].get('width', 0))} POIs",
             f"test requests scored: {counts}"]
    if "sasrec" not in report:
        notes.append("SASRec is off in this config (`rankstack bench retrieval` trains it)")
    return _table("GeoGR", series, metrics, metrics, notes, run)


def run_relevance(spec: RelevanceSpec, world: Path, run: Path) -> dict[str, Any]:
    """`rankstack train relevance --stage sft` on the world's relevance pairs, then `bench_run` (CumPT with β tuned
    on dev, the first-token argmax, and the majority-class baseline) on the test split."""
    from rankstack.relevance import train_relevance
    from rankstack.relevance.bench import bench_run

    shutil.rmtree(run, ignore_errors=True)  # an unfinished SFT run starts over
    trained = train_relevance("sft", config_path(spec.config), {
        **spec.overrides, "data.dataset": str(world / "relevance"), "data.world_preset": None}, run)
    report = bench_run(run, "test", max_examples=spec.eval_examples, batch_size=spec.batch_size, decode=False)
    metrics = ["macro_f1", "accuracy", "page_macro_f1", "f1_1", "f1_2", "f1_3", "f1_4"]
    cumpt, majority = report["cumpt"]["macro_f1"], report["majority_baseline"]["macro_f1"]
    gap = cumpt - majority
    verdict = ("stays near the class prior" if abs(gap) < 0.05 else
               f"is {gap:+.3f} macro-F1 from the majority class")
    split = next(key for key in trained["after"] if key != "train")  # the config's eval split
    loss = (trained["before"][split]["completion_loss"], trained["after"][split]["completion_loss"])
    notes = [f"a label-first SFT of a small from-scratch LM ({spec.config}), {trained['steps']} steps on "
             f"{trained['train_pairs']} pairs: on 2 CPU cores this budget {verdict} (CumPT macro-F1 {cumpt:.3f}, "
             f"majority class {majority:.3f}); completion loss on {split} {loss[0]:.3f} → {loss[1]:.3f}",
             f"{report['pairs']} test pairs; CumPT β = {report['beta']:.2f} tuned on dev; f1_k: F1 of tier k "
             "(1 Bad, 2 Mid, 3-4 Good); page_macro_f1: over the page tiers Good / Mid / Bad",
             "Bayes-optimal: macro-F1 = accuracy = 1 (the tier is a deterministic function of the pair, the world's "
             "rule engine)"]
    return _table("SFT", {"SFT, CumPT": report["cumpt"], "SFT, first-token argmax": report["argmax"],
                          "majority class": report["majority_baseline"]},
                  metrics, ["macro_f1", "accuracy", "page_macro_f1"], notes, run)


#: The served relevance model must beat always-the-majority-tier by this much test macro-F1; otherwise search keeps
#: the lexical baseline (a model at the class prior would tier every result the same).
RELEVANCE_SERVE_MARGIN = 0.05


def run_export(ranking_run: Path, world: Path, retrieval_run: Path, preranking_run: Path, relevance_run: Path,
               relevance: dict[str, Any]) -> dict[str, Any]:
    """`rankstack export`: the ranking run's serving artifacts with GeoGR, the AutoFAS student and, when it beats the
    majority class, the relevance model beside them (`relevance`: the relevance stage's record)."""
    from rankstack.serving.artifacts import export_run

    runs: dict[str, Path] = {"geogr_run": retrieval_run, "autofas_run": preranking_run}
    model, majority = (relevance["series"][name]["macro_f1"] for name in ("SFT, CumPT", "majority class"))
    if model >= majority + RELEVANCE_SERVE_MARGIN:
        runs["relevance_run"] = relevance_run
        note = f"the relevance model is served (test macro-F1 {model:.3f} vs the majority class {majority:.3f})"
    else:
        note = (f"the relevance model is not served: its test macro-F1 {model:.3f} does not beat the majority class "
                f"{majority:.3f} by {RELEVANCE_SERVE_MARGIN}, so search keeps the lexical-rules baseline")
    served = export_run(ranking_run, world, **runs)
    files = [p for p in served.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    return {"notes": [f"{served}: {len(files)} files, {size / 2**20:.1f} MiB (safetensors, JSON, YAML, Parquet), with "
                      f"{', '.join(sorted(runs))}", note]}


# ---- the pipeline -------------------------------------------------------------------------------------------


def ranking_dir(config: DemoConfig, out: str | Path) -> Path:
    """The ranking run folder, named after its model (`runs/demo/dlrm`): the run the server serves."""
    from rankstack.ranking.run import load_run_config

    spec = config.ranking
    return Path(out) / load_run_config(config_path(spec.config), {**spec.overrides, "data": "."}).model.name


def run_demo(config: DemoConfig, out: str | Path, fresh: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run every stage not finished yet into `out`, then write `out/report.md` and its plots; returns the report."""
    out = Path(out)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    world = out / "world"
    runs = {name: out / name for name in ("preranking", "retrieval", "relevance")} | {
        "ranking": ranking_dir(config, out)}
    records: dict[str, dict[str, Any]] = {}  # each stage's record, in STAGES order (loaded or just measured)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "world": lambda: run_world(config.world, world),
        "ranking": lambda: run_ranking(config.ranking, world, runs["ranking"]),
        "preranking": lambda: run_preranking(config.preranking, world, runs["preranking"], runs["ranking"]),
        "retrieval": lambda: run_retrieval(config.retrieval, world, runs["retrieval"], config.world),
        "relevance": lambda: run_relevance(config.relevance, world, runs["relevance"]),
        "export": lambda: run_export(runs["ranking"], world, runs["retrieval"], runs["preranking"],
                                     runs["relevance"], records["relevance"]),
    }
    start = time.perf_counter()
    for name in STAGES:
        path = out / "stages" / f"{name}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            log(f"[demo] {name}: finished in an earlier run ({record['wall_s']:.0f} s), skipped")
            record["resumed"] = True
        else:
            log(f"[demo] {name} ...")
            stage_start = time.perf_counter()
            record = {"stage": name, **steps[name]()}
            record["wall_s"] = time.perf_counter() - stage_start
            save_json(record, path)  # written last: its presence means the stage finished
            log(f"[demo] {name}: done in {record['wall_s']:.0f} s")
            record["resumed"] = False
        records[name] = record
    report = write_report(list(records.values()), config, out, time.perf_counter() - start)
    log(f"[demo] report: {report}")
    return report


TITLES = {"ranking": "Ranking", "preranking": "Pre-ranking (AutoFAS)", "retrieval": "Retrieval (GeoGR)",
          "relevance": "Relevance (label-first SFT)"}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def write_report(records: list[dict[str, Any]], config: DemoConfig, out: Path, invocation_s: float) -> Path:
    """`report.md` (one table per stage: the model beside its baselines, then the timings) and one PNG per stage."""
    total = sum(r["wall_s"] for r in records)
    resumed = [r["stage"] for r in records if r["resumed"]]
    lines = ["# rankstack demo report", "",
             f"The `{config.world.size}` synthetic world (seed {config.world.seed}), every stage at the budget of the "
             f"demo config; {platform.machine()} CPU, {os.cpu_count()} cores visible, torch threads as set by the "
             f"environment (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).", "",
             "## Timings", "", "| stage | wall time (s) | |", "|---|---:|---|"]
    for r in records:
        lines.append(f"| {r['stage']} | {r['wall_s']:.1f} | {'finished in an earlier run' if r['resumed'] else ''} |")
    lines += [f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | |", ""]
    if resumed:
        lines += [f"This invocation took {invocation_s:.1f} s; it skipped the stages finished before "
                  f"({', '.join(resumed)}), whose times are those of the run that built them.", ""]
    plot_timings(records, out / "timings.png")
    lines += ["![timings](timings.png)", ""]
    for r in records:
        if "series" not in r:
            continue
        stage = r["stage"]
        names = r["columns"]
        lines += [f"## {TITLES.get(stage, stage)}", "", f"Run folder: `{r['run']}`.", "",
                  "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for metric in r["metrics"]:
            lines.append(f"| {metric} | " + " | ".join(_fmt(r["series"][n].get(metric)) for n in names) + " |")
        plot_stage(r, out / f"{stage}.png")
        lines += ["", *(f"- {note}" for note in r["notes"]), "", f"![{stage}]({stage}.png)", ""]
    for r in records:
        if "series" not in r and r["stage"] != "world":
            lines += [f"## {r['stage'].capitalize()}", "", *(f"- {note}" for note in r["notes"]), ""]
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stage(record: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per metric of `record["plot"]`, one bar per method."""
    import numpy as np

    plt = _pyplot()
    metrics, names = record["plot"], record["columns"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(metrics) + 2), 4.0))
    x = np.arange(len(metrics))
    for i, name in enumerate(names):
        values = [record["series"][name].get(m, np.nan) for m in metrics]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, metrics)
    ax.set_title(f"{TITLES.get(record['stage'], record['stage'])}: {record['model']} vs baselines (test)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timings(records: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.barh([r["stage"] for r in records][::-1], [r["wall_s"] for r in records][::-1])
    ax.set_xlabel("wall time (s)")
    ax.set_title(f"demo stages: {sum(r['wall_s'] for r in records):.0f} s in all")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def serve(config: DemoConfig, out: str | Path) -> None:
    """`rankstack serve` on the demo's ranking run (exported with every stage); prints the demo page's URL."""
    from rankstack.cli import build_parser

    argv = ["serve", "--run", str(ranking_dir(config, out)), "--host", config.serve.host, "--port",
            str(config.serve.port)]
    if config.serve.config:
        argv += ["--config", config.serve.config]
    args = build_parser().parse_args(argv)
    print(f"\nreport: {Path(out) / REPORT}; starting the server (Ctrl-C stops it), it prints the demo page's URL")
    args.func(args)


__all__ = ["DemoConfig", "load_demo_config", "run_demo", "serve", "write_report"]
