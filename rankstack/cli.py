"""The `rankstack` command line.

    rankstack world generate --size small --seed 0 --out DIR [--set knob=value ...]
    rankstack data convert --format NAME --input PATH --out DIR [--option key=value ...]
    rankstack data formats [NAME]                                            (the formats, or one format's options)
    rankstack data inspect DIR [--json]
    rankstack train ranking --config FILE [--out DIR] [--set key.path=value ...] [--resume]
    rankstack train retrieval --config FILE --out DIR [--set ...]           (GeoGR: SIDs -> CPT -> SFT -> eval)
    rankstack train relevance --stage sft|dpo|grpo|srpo|agrl --config FILE --out DIR [--init RUN] [--set ...]
    rankstack train preranking --config FILE --budget-ms X --out DIR [--set ...]   (AutoFAS under a budget)
    rankstack eval --run DIR [--split test]
    rankstack bench loader --data DIR [--batch-size N] [--repeats N]
    rankstack bench retrieval --config FILE --out DIR                       (popularity / geo / SASRec baselines)
    rankstack bench ranking [--repeats N] [--candidates C] [--longterm-len L ...] [--serve-with SWITCH ...] [--json FILE]
    rankstack bench preranking --config FILE --out DIR [--latency-table]    (AutoFAS budget sweep + baselines)
    rankstack bench relevance --run RUN [--run RUN ...] [--split test]      (CumPT vs argmax vs decode, speed)
    rankstack bench relevance --cross-encoder FILE --out DIR                (the MiniLM baseline)
    rankstack demo [--out DIR] [--config FILE] [--set ...] [--fresh] [--no-serve]   (every stage, report, serve)
    rankstack export --run DIR [--world DIR] [--retrieval GEOGR_RUN] [--preranking AUTOFAS_RUN]  (→ DIR/serving/)
    rankstack serve --run DIR [--world DIR] [--config FILE] [--host 127.0.0.1] [--port 8000]

User mistakes (a bad file, column or config key) print one sentence naming what was wrong and how to fix it, and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankstack.config import parse_override
from rankstack.errors import RankstackError
from rankstack.relevance import STAGES as RELEVANCE_STAGES


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    return dict(parse_override(p) for p in pairs or [])


def _tasks(report: dict[str, Any]) -> list[str]:
    return [key.removesuffix("_auc") for key in report if key.endswith("_auc")]


def cmd_world_generate(args: argparse.Namespace) -> None:
    from rankstack.world import WorldConfig, generate

    config = WorldConfig.preset(args.size, **_overrides(args.set))
    start = time.perf_counter()
    out = generate(config, seed=args.seed, out=Path(args.out))
    print(f"world ({args.size}, seed {args.seed}) written to {out} in {time.perf_counter() - start:.1f} s")


def cmd_data_convert(args: argparse.Namespace) -> None:
    from rankstack.data.converters import convert

    start = time.perf_counter()
    out = convert(args.format, Path(args.input), Path(args.out), _overrides(args.option))
    print(f"{args.format} → {out} in {time.perf_counter() - start:.1f} s")


def cmd_data_formats(args: argparse.Namespace) -> None:
    from rankstack.data.converters import CONVERTERS, get_converter

    if args.name is None:
        width = max(map(len, CONVERTERS))
        for name, converter in sorted(CONVERTERS.items()):
            print(f"{name:{width}}  {converter.description}")
        print("\n`rankstack data formats NAME` lists a format's options.")
        return
    converter = get_converter(args.name)
    print(f"{converter.name}: {converter.description}\n")
    print("options (--option name=value):")
    for option in converter.options:
        about = [option.type_name] + ([] if option.default in ("", None, [], {}) else [f"default {option.default}"])
        about += [f"one of {', '.join(option.choices)}"] if option.choices else []
        print(f"  {option.name} ({'; '.join(about)}): {option.help}")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from rankstack.data.dataset import Dataset
    from rankstack.data.inspect import format_report, inspect

    summary = inspect(Dataset.open(args.dir))
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))


def cmd_train_ranking(args: argparse.Namespace) -> None:
    from rankstack.ranking.run import dumps, format_results, load_run_config, train_ranking

    config = load_run_config(args.config, _overrides(args.set))
    if args.resume:
        config.trainer.resume = True
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = train_ranking(config, out, where=args.config)
    if results:
        print(format_results(results["test"], _tasks(results["test"])))
        print(f"run folder: {out}")
        if args.json:
            print(dumps(results))


def cmd_train_retrieval(args: argparse.Namespace) -> None:
    from rankstack.retrieval.run import format_baselines, load_run_config, train_retrieval

    report = train_retrieval(load_run_config(args.config, _overrides(args.set)), args.out, overwrite=args.overwrite)
    print(format_baselines(report))
    print(f"run folder: {args.out} (GeoGRRetriever.from_run loads it)")


def cmd_bench_retrieval(args: argparse.Namespace) -> None:
    from rankstack.retrieval.run import bench_baselines, format_baselines, load_run_config

    print(format_baselines(bench_baselines(load_run_config(args.config, _overrides(args.set)), args.out)))


def cmd_train_relevance(args: argparse.Namespace) -> None:
    from rankstack.relevance import train_relevance

    metrics = train_relevance(args.stage, args.config, _overrides(args.set), args.out, args.init)
    print(json.dumps(metrics, indent=2, default=str))


def cmd_train_preranking(args: argparse.Namespace) -> None:
    from rankstack.preranking.run import load_config, train_preranking

    config = load_config(args.config, _overrides(args.set))
    if args.budget_ms is not None:
        config.budget_ms = args.budget_ms
    result = train_preranking(config, args.out)
    row = result["autofas"]
    print(json.dumps({k: row[k] for k in ("latency_p50_ms", "predicted_ms", "budget_ms", "auc", "overlap@10",
                                          "n_fields", "widths")}, indent=2))
    print(f"kept: {', '.join(row['fields'])}\nrun folder: {args.out} (results.json, autofas/derived.json, "
          "autofas/selection.json, autofas/search_trace.jsonl)")


def cmd_bench_preranking(args: argparse.Namespace) -> None:
    from rankstack.preranking.latency import TABLE_DIR, benchmark, table_name
    from rankstack.preranking.run import bench_preranking, load_config

    config = load_config(args.config, _overrides(args.set))
    if args.latency_table:
        table = benchmark(config.n_cand, [1024, 512, 256, 128, 64, 32, 16], 1024, config.latency.threads)
        path = table.save(TABLE_DIR / table_name(config.n_cand, config.latency.threads))
        print(f"latency table → {path} (linear fit R² {table.fit['r2']:.3f})")
        return
    result = bench_preranking(config, args.out)
    print(f"T_ref {result['t_ref_ms']:.2f} ms; pareto.csv, results.json and plots in {args.out}")


def cmd_bench_relevance(args: argparse.Namespace) -> None:
    from rankstack.errors import ConfigError

    if bool(args.run) == bool(args.cross_encoder):
        raise ConfigError("bench relevance: pass --run RUN (one or more) or --cross-encoder CONFIG --out DIR.")
    if args.cross_encoder:
        from rankstack.config import load_yaml
        from rankstack.relevance.cross_encoder import CrossEncoderConfig, train_cross_encoder

        if not args.out:
            raise ConfigError("bench relevance --cross-encoder needs --out DIR for the run folder.")
        config = load_yaml(CrossEncoderConfig, args.cross_encoder, _overrides(args.set))
        print(json.dumps(train_cross_encoder(config, args.out), indent=2))
        return
    from rankstack.relevance.bench import bench_run

    reports = [bench_run(run, args.split, max_examples=args.max_examples, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, decode=not args.no_decode, dtype=args.dtype)
               for run in args.run]
    text = json.dumps(reports, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def cmd_eval(args: argparse.Namespace) -> None:
    from rankstack.ranking.run import dumps, evaluate_run, format_results

    report = evaluate_run(args.run, args.split)
    print(format_results(report, _tasks(report)))
    if args.json:
        print(dumps(report))


def cmd_bench_loader(args: argparse.Namespace) -> None:
    from rankstack.data.bench import bench_loader

    result = bench_loader(args.data, args.split, args.batch_size, args.repeats, args.max_batches)
    print(json.dumps(result, indent=2))


def cmd_bench_ranking(args: argparse.Namespace) -> None:
    from rankstack.ranking.bench import bench_ranking, format_bench_ranking

    result = bench_ranking(args.tokens, args.dim, args.batch_size, args.repeats, args.candidates,
                           tuple(args.longterm_len), args.threads, tuple(args.serve_with))
    print(format_bench_ranking(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"written to {args.json}")


def cmd_demo(args: argparse.Namespace) -> None:
    from rankstack.demo import load_demo_config, run_demo, serve

    config = load_demo_config(args.config, _overrides(args.set))
    run_demo(config, args.out, fresh=args.fresh)
    if not args.no_serve:
        serve(config, args.out)


def cmd_export(args: argparse.Namespace) -> None:
    from rankstack.serving.artifacts import export_run

    out = export_run(args.run, args.world, args.retrieval, args.preranking, args.relevance)
    print(f"serving artifacts written to {out}")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from rankstack.serving.app import create_app
    from rankstack.serving.artifacts import SERVING_DIR, export_run
    from rankstack.serving.cascade import Cascade, configure_threads, load_cascade_config

    if not (Path(args.run) / SERVING_DIR).exists():
        print(f"{Path(args.run) / SERVING_DIR} does not exist yet: exporting the run's artifacts first")
        export_run(args.run, args.world)
    config = load_cascade_config(args.config)
    configure_threads(config)
    cascade = Cascade.load(args.run, args.world, config)
    print(f"rankstack serving {args.run} on http://{args.host}:{args.port}/ (demo page), API docs at /docs")
    uvicorn.run(create_app(cascade), host=args.host, port=args.port, log_level=args.log_level)


def _add_run_args(parser: argparse.ArgumentParser, out_help: str | None = None) -> None:
    """--config, --out and --set, shared by every command that runs from a YAML config."""
    parser.add_argument("--config", required=True)
    if out_help is None:
        parser.add_argument("--out", required=True)
    else:
        parser.add_argument("--out", help=out_help)
    parser.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankstack", description="An industrial search & recommendation cascade.")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the synthetic city").add_subparsers(dest="action", required=True)
    gen = world.add_parser("generate", help="generate a world")
    gen.add_argument("--size", choices=["tiny", "small", "medium", "large"], default="small")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True)
    gen.add_argument("--set", action="append", metavar="KNOB=VALUE", help="override a world knob")
    gen.set_defaults(func=cmd_world_generate)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    conv = data.add_parser("convert", help="convert a public dataset or your own log into the rankstack contract",
                           epilog="`rankstack data formats` lists the formats, `rankstack data formats NAME` the "
                                  "options of one.")
    conv.add_argument("--format", required=True, help="the input's format (see `rankstack data formats`)")
    conv.add_argument("--input", required=True)
    conv.add_argument("--out", required=True)
    conv.add_argument("--option", action="append", metavar="KEY=VALUE", help="a converter option")
    conv.set_defaults(func=cmd_data_convert)
    formats = data.add_parser("formats", help="the formats `data convert` reads, or one format's options")
    formats.add_argument("name", nargs="?", help="a format: list its options")
    formats.set_defaults(func=cmd_data_formats)
    insp = data.add_parser("inspect", help="schema, rows, vocab sizes and sequence lengths of a dataset")
    insp.add_argument("dir")
    insp.add_argument("--json", action="store_true")
    insp.set_defaults(func=cmd_data_inspect)

    train = sub.add_parser("train", help="train a stage").add_subparsers(dest="stage", required=True)
    rank = train.add_parser("ranking", help="train a ranking model")
    _add_run_args(rank, out_help="run folder (default runs/<config>-<time>)")
    rank.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    rank.add_argument("--json", action="store_true", help="also print results.json")
    rank.set_defaults(func=cmd_train_ranking)

    retr = train.add_parser("retrieval", help="GeoGR: SID tokenizer, CPT, SFT and evaluation (resumes finished stages)")
    _add_run_args(retr)
    retr.add_argument("--overwrite", action="store_true", help="start from scratch instead of resuming the run folder")
    retr.set_defaults(func=cmd_train_retrieval)
    rel = train.add_parser("relevance", help="train a relevance stage (sft, dpo, grpo, srpo, agrl)")
    rel.add_argument("--stage", required=True, choices=RELEVANCE_STAGES)
    rel.add_argument("--init", help="the run folder a stage after SFT starts from (the SFT run for dpo, …)")
    _add_run_args(rel)
    rel.set_defaults(func=cmd_train_relevance)

    pre = train.add_parser("preranking", help="AutoFAS feature and architecture search under a latency budget")
    _add_run_args(pre)
    pre.add_argument("--budget-ms", type=float, help="latency budget per request (ms); overrides budget_ms")
    pre.set_defaults(func=cmd_train_preranking)

    ev = sub.add_parser("eval", help="evaluate a finished run")
    ev.add_argument("--run", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="target", required=True)
    bl = bench.add_parser("loader", help="loader throughput on one core")
    bl.add_argument("--data", required=True)
    bl.add_argument("--split", default="train")
    bl.add_argument("--batch-size", type=int, default=4096)
    bl.add_argument("--repeats", type=int, default=5)
    bl.add_argument("--max-batches", type=int, default=0, help="stop each repeat early (0: a whole epoch)")
    bl.set_defaults(func=cmd_bench_loader)

    br = bench.add_parser("retrieval", help="next-POI baselines (popularity, geo-nearest popular, SASRec) and the oracle")
    _add_run_args(br)
    br.set_defaults(func=cmd_bench_retrieval)
    brel = bench.add_parser("relevance", help="relevance runs: CumPT vs argmax vs full decode, and their throughput; "
                                              "or train the MiniLM cross-encoder baseline")
    brel.add_argument("--run", action="append", default=[], help="a relevance run folder (repeat for several)")
    brel.add_argument("--cross-encoder", metavar="CONFIG", help="train and report the MiniLM cross-encoder baseline")
    brel.add_argument("--out", help="write the report (JSON) here; the cross-encoder's run folder")
    brel.add_argument("--split", default="test")
    brel.add_argument("--max-examples", type=int, default=256, help="pairs per split (dev and test)")
    brel.add_argument("--batch-size", type=int, default=16)
    brel.add_argument("--max-new-tokens", type=int, default=160)
    brel.add_argument("--no-decode", action="store_true", help="skip the full-decode comparison")
    brel.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                      help="the model's dtype for both timings (auto: bf16 on a GPU that has it, else fp32)")
    brel.add_argument("--set", action="append", metavar="KEY=VALUE", help="cross-encoder config overrides")
    brel.set_defaults(func=cmd_bench_relevance)

    bk = bench.add_parser("ranking", help="HeteroMixer vs self-attention timing; HeMix serving with/without the "
                                          "user cache (hemix.md §12.5, §12.7)")
    bk.add_argument("--tokens", type=int, default=12)
    bk.add_argument("--dim", type=int, default=256)
    bk.add_argument("--batch-size", type=int, default=1024)
    bk.add_argument("--repeats", type=int, default=7)
    bk.add_argument("--candidates", type=int, default=500, help="candidates per request")
    bk.add_argument("--longterm-len", type=int, nargs="+", default=[100], help="long-term stream length(s)")
    bk.add_argument("--threads", type=int, default=1)
    bk.add_argument("--serve-with", nargs="+", default=[], metavar="SWITCH",
                    help="also serve each stream length with these HeMix switches on (their serving cost): "
                    "target_match, query_match, recency, query_cross=N")
    bk.add_argument("--json", help="also write the result to this JSON file")
    bk.set_defaults(func=cmd_bench_ranking)

    bp = bench.add_parser("preranking", help="AutoFAS at several budgets beside COLD, two-tower and MLP baselines")
    _add_run_args(bp)
    bp.add_argument("--latency-table", action="store_true", help="only (re)measure this device's latency table")
    bp.set_defaults(func=cmd_bench_preranking)

    demo = sub.add_parser("demo", help="every stage on the small world at small budgets, a report, then the server "
                                        "(configs/demo.yaml; docs/demo.md)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--config", help="the demo config (default configs/demo.yaml)")
    demo.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a demo config key")
    demo.add_argument("--fresh", action="store_true", help="start over instead of skipping the finished stages")
    demo.add_argument("--no-serve", action="store_true", help="stop after the report (CI, tests)")
    demo.set_defaults(func=cmd_demo)

    export = sub.add_parser("export", help="write a ranking run's serving artifacts (safetensors + JSON)")
    export.add_argument("--run", required=True, help="a run folder (e.g. runs/demo/dlrm)")
    export.add_argument("--world", help="the world folder (default: the parent of the run's dataset)")
    export.add_argument("--retrieval", help="a GeoGR run folder (`rankstack train retrieval --out`) to serve the feed's "
                        "retrieval with (default: the geo-nearest popular baseline)")
    export.add_argument("--preranking", help="an AutoFAS run folder (`rankstack train preranking --out`) whose derived "
                        "student pre-ranks the candidates (default: truncation by retrieval score)")
    export.add_argument("--relevance", help="a label-first relevance run folder (`rankstack train relevance --out`) "
                        "whose model tiers search results by CumPT (default: the lexical baseline)")
    export.set_defaults(func=cmd_export)
    serve = sub.add_parser("serve", help="serve the cascade over HTTP (feed, search, metrics, demo page)")
    serve.add_argument("--run", required=True, help="a run folder (e.g. runs/demo/dlrm); exported if needed")
    serve.add_argument("--world", help="the world folder (default: the one the run was exported with)")
    serve.add_argument("--config", help="serving config YAML (stage budgets, max_k, ...; see docs/serving.md)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away is noticed here, not at interpreter exit
    except RankstackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`rankstack ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
