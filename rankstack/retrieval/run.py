"""Retrieval runs from a YAML config (`configs/retrieval/*.yaml`): the whole GeoGR pipeline, and the baselines.

The functions a CLI calls:

    config = load_run_config("configs/retrieval/city_tiny.yaml", {"data": "runs/world/next_poi"})
    report = train_retrieval(config, "runs/geogr_city_tiny")      # tokenizer -> base LM -> CPT -> SFT -> eval
    report = build_tokenizer(config, "runs/sids_city_tiny")      # the SID tokenizer alone
    report = bench_baselines(config, "runs/baselines_city_tiny")  # results.json, results.jsonl (one row per method)
    print(format_baselines(report))

`train_retrieval` writes one folder per stage into the run folder (geogr.md §9):

    config.yaml     the resolved config
    sids/           the SID tokenizer (sids.json, sids.safetensors, tokenizer.json report)
    base/           the LM with SID tokens added (BPE trained on the CPT corpus, or a local pretrained model)
    cpt/            after continued pre-training on T1-T4 (absent when `lm.cpt.enabled` is false)
    sft/            after SFT on context + history -> next SID: the model the retriever serves
    eval/           metrics.json (GeoGR and the baselines, valid and test), results.jsonl rows
    retriever.json  what `GeoGRRetriever.from_run` needs

Each stage is built in `<stage>.partial/` and renamed into place when it is complete (its `stage.json` written
last), so a killed run resumes at the first stage that is not there; `overwrite=True` starts from scratch.
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
from typing import Any

import numpy as np

from rankstack.config import dump_yaml, load_yaml, to_dict
from rankstack.errors import RankstackError
from rankstack.retrieval.baselines import BaselineConfig, run_baselines
from rankstack.retrieval.data import RetrievalData, load_retrieval_data
from rankstack.retrieval.evaluate import evaluate_topk
from rankstack.retrieval.lm import (
    LMConfig,
    PromptWriter,
    area_grid,
    build_lm,
    code_scores,
    cpt_records,
    deferred_acceptance,
    e_step_records,
    generate_candidates,
    grid_candidates,
    latency_report,
    load_lm,
    poi_descriptions,
    reassigned_sids,
    save_lm,
    sft_examples,
    sid_validity,
    train_causal_lm,
    with_current_codes,
)
from rankstack.retrieval.retriever import save_serving_files
from rankstack.retrieval.sasrec import SASRecConfig, run_sasrec
from rankstack.retrieval.semantic_ids import (
    SemanticIdConfig,
    SemanticIds,
    build_semantic_ids,
    complementary_pairs,
    make_text_encoder,
    poi_categories,
    poi_texts,
    sid_diagnostics,
)
from rankstack.retrieval.trie import sid_level_offsets
from rankstack.train.checkpoint import save_json
from rankstack.train.distributed import resolve_device


@dataclass
class RetrievalRunConfig:
    """A retrieval run.

    data: a next-POI dataset folder (`<world>/next_poi`, or a `foursquare-nyc` / `amazon-s3rec` conversion).
    semantic_ids: the tokenizer (`SemanticIdConfig`). lm: the LM stage (`LMConfig`). baselines: the baseline
    benchmark (`BaselineConfig`), also scored beside GeoGR by `train_retrieval`. sasrec: the SASRec-style baseline
    (`SASRecConfig`), trained beside the others when enabled.
    """

    data: str
    semantic_ids: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RetrievalRunConfig:
    """Read a YAML run config; `overrides` maps dotted keys to values (`trainer.seed: 1`)."""
    return load_yaml(RetrievalRunConfig, path, overrides)


def build_tokenizer(config: RetrievalRunConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Fit the SID tokenizer of `config` on its dataset's train split into `out`; returns the tokenizer's
    report (pair statistics, adapter training, reconstruction error, diagnostics), also in `tokenizer.json`."""
    out = Path(out)
    start = time.perf_counter()
    sids = build_semantic_ids(load_retrieval_data(config.data), config.semantic_ids, out, overwrite=overwrite)
    dump_yaml(config, out / "config.yaml")
    report = {"data": config.data, "level_sizes": list(sids.level_sizes), "length": sids.length,
              "wall_time_s": time.perf_counter() - start} | sids.meta
    save_json(report, out / "tokenizer.json")
    return report


def bench_baselines(config: RetrievalRunConfig, out: str | Path) -> dict[str, Any]:
    """Score every baseline on `config.data` into `out/results.json`, and append one machine-readable row per
    method and split to `out/results.jsonl`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    start = time.perf_counter()
    data = load_retrieval_data(config.data)
    report = run_baselines(data, config.baselines)
    if config.sasrec.enabled:
        report["sasrec"] = run_sasrec(data, config.sasrec, out / "sasrec")
    report["wall_time_s"] = time.perf_counter() - start
    save_json(report, out / "results.json")
    _append_rows(out / "results.jsonl", config.data, report)
    return report


def format_baselines(report: dict[str, Any]) -> str:
    """Test metrics of each method as a small table (W is the list width every metric is capped at)."""
    keys = ("acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr")
    lines = [f"{'method':22}" + "".join(f"{k:>9}" for k in keys) + f"{'W':>5}"]
    for method, entry in report.items():
        row = entry.get("test", entry) if isinstance(entry, dict) else None
        if not isinstance(row, dict) or "acc@1" not in row:
            continue
        lines.append(f"{method:22}" + "".join(f"{row[k]:9.4f}" for k in keys) + f"{int(row['width']):5d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The GeoGR pipeline


def run_stage(out: Path, name: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build stage `name` into `out/name` once: reuse it when its `stage.json` exists, else build it in
    `out/name.partial` and rename it into place (a killed stage leaves only the partial folder, rebuilt next time)."""
    final = out / name
    if (final / "stage.json").is_file():
        return json.loads((final / "stage.json").read_text())
    if final.exists():
        raise RankstackError(f"{final} exists but has no stage.json (it was not written by train_retrieval); "
                             "remove it or pass overwrite=True.")
    partial = out / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    report = build(partial)
    report["stage_wall_time_s"] = time.perf_counter() - start
    shutil.rmtree(partial / "trainer", ignore_errors=True)
    save_json(report, partial / "stage.json")
    os.replace(partial, final)
    return report


def prompt_writer(data: RetrievalData, sids: SemanticIds, lm: LMConfig) -> PromptWriter:
    """The prompt writer of a run: its SIDs, the area grid and the catalogue coordinates."""
    return PromptWriter(sids, area_grid(data, lm.prompt), lm.prompt, data.catalogue.lat, data.catalogue.lon)


def _lm_corpus(data: RetrievalData, sids: SemanticIds, lm: LMConfig, writer: PromptWriter) -> list[str]:
    """Texts the BPE is trained on: the CPT corpus and (a sample of) the SFT prompts."""
    texts = [r["text"] for r in cpt_records(data, sids, lm.cpt, writer.grid, lm.seed)]
    prompts = [e["prompt"] for e in sft_examples(writer, data.splits["train"], 2000)]
    return texts + prompts


def evaluate_generative(model: Any, tokenizer: Any, sids: SemanticIds, data: RetrievalData, writer: PromptWriter,
                        lm: LMConfig, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Decode each split's requests with the trie-constrained beam search and score the top-W lists."""
    trie = sids.trie(sid_level_offsets(tokenizer, sids.level_sizes))
    report: dict[str, Any] = {}
    for split in splits:
        samples = data.splits[split]
        n = len(samples) if lm.decode.max_eval_samples is None else min(len(samples), lm.decode.max_eval_samples)
        prompts = writer.prompts(samples)[:n]
        candidates = generate_candidates(model, tokenizer, prompts, trie, lm.decode.num_beams, lm.decode.batch_size,
                                         histories=[row[row >= 0] for row in samples.history[:n]])
        report[split] = (evaluate_topk(candidates.items, samples.target[:n], len(data.catalogue))
                         | sid_validity(candidates.codes, sids) | latency_report(candidates))
    return report


def _append_rows(path: Path, data: str, report: dict[str, Any]) -> None:
    with open(path, "a") as rows:
        for method, entry in report.items():
            if not isinstance(entry, dict):
                continue
            for split in ("valid", "test"):
                if split in entry:
                    rows.write(json.dumps({"data": data, "method": method, "split": split,
                                           "host": platform.node()} | entry[split]) + "\n")
            if method == "oracle":
                rows.write(json.dumps({"data": data, "method": method, "split": "test",
                                       "host": platform.node()} | entry) + "\n")


def train_retrieval(config: RetrievalRunConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """The GeoGR pipeline into the run folder `out` (see the module docstring): tokenizer -> base LM -> CPT ->
    SFT -> evaluation beside the baselines. Returns `eval/metrics.json`'s content."""
    out = Path(out)
    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    lm = config.lm
    device = resolve_device(lm.decode.device)
    data = load_retrieval_data(config.data)

    def tokenizer_stage(tmp: Path) -> dict[str, Any]:
        tmp.rmdir()  # build_semantic_ids creates its folder
        start = time.perf_counter()
        sids = build_semantic_ids(data, config.semantic_ids, tmp)
        report = {"level_sizes": list(sids.level_sizes), "length": sids.length,
                  "wall_time_s": time.perf_counter() - start} | sids.meta
        save_json(report, tmp / "tokenizer.json")
        return {"stage": "sids", "level_sizes": list(sids.level_sizes), "diagnostics": sids.meta["diagnostics"]}

    stages: dict[str, Any] = {"sids": run_stage(out, "sids", tokenizer_stage)}
    sids = SemanticIds.load(out / "sids")
    writer = prompt_writer(data, sids, lm)

    def base_stage(tmp: Path) -> dict[str, Any]:
        model, tokenizer, offsets = build_lm(lm, sids, _lm_corpus(data, sids, lm, writer))
        save_lm(model, tokenizer, tmp)
        return {"stage": "base", "vocab": len(tokenizer), "level_offsets": list(offsets),
                "parameters": sum(p.numel() for p in model.parameters())}

    stages["base"] = run_stage(out, "base", base_stage)

    def lm_stages(prefix: str, sids_dir: str) -> str:
        """CPT (if enabled) then SFT from the base model under the SIDs in `sids_dir`; returns the SFT folder."""
        stage_sids = SemanticIds.load(out / sids_dir)
        stage_writer = prompt_writer(data, stage_sids, lm)
        previous = out / "base"
        if lm.cpt.enabled:
            def cpt_stage(tmp: Path) -> dict[str, Any]:
                model, tokenizer = load_lm(previous, str(device))
                records = cpt_records(data, stage_sids, lm.cpt, stage_writer.grid, lm.seed)
                report = train_causal_lm_report(model, tokenizer, records, lm.cpt.training, tmp)
                save_lm(model, tokenizer, tmp)
                counts = {t: sum(r["template"] == t for r in records) for t in lm.cpt.templates}
                return {"stage": "cpt", "sids": sids_dir, "records_per_template": counts} | report

            stages[f"{prefix}cpt"] = run_stage(out, f"{prefix}cpt", cpt_stage)
            previous = out / f"{prefix}cpt"

        def sft_stage(tmp: Path) -> dict[str, Any]:
            model, tokenizer = load_lm(previous, str(device))
            examples = sft_examples(stage_writer, data.splits["train"], lm.sft.max_examples)
            report = train_causal_lm_report(model, tokenizer, examples, lm.sft.training, tmp)
            save_lm(model, tokenizer, tmp)
            return {"stage": "sft", "sids": sids_dir, "from": previous.name} | report

        stages[f"{prefix}sft"] = run_stage(out, f"{prefix}sft", sft_stage)
        return f"{prefix}sft"

    model_dir = lm_stages("", "sids")
    sids_dir = "sids"
    if lm.em.rounds > 0:
        sids_dir = refine(config, data, out, device, stages)
        if sids_dir != "sids":
            model_dir = lm_stages("final_", sids_dir)
    sids = SemanticIds.load(out / sids_dir)
    writer = prompt_writer(data, sids, lm)

    def eval_stage(tmp: Path) -> dict[str, Any]:
        model, tokenizer = load_lm(out / model_dir, str(device))
        report: dict[str, Any] = {"geogr": evaluate_generative(model, tokenizer, sids, data, writer, lm)}
        report |= run_baselines(data, config.baselines)
        if config.sasrec.enabled:
            report["sasrec"] = run_sasrec(data, config.sasrec, tmp / "sasrec")
        report["data"] = config.data
        report["served"] = {"model": model_dir, "sids": sids_dir}
        save_json(report, tmp / "metrics.json")
        _append_rows(tmp / "results.jsonl", config.data, report)
        return {"stage": "eval"} | report

    metrics = run_stage(out, "eval", eval_stage)
    geo = metrics.get("geo_nearest_popular", {})
    save_serving_files(out, data.catalogue, sids.popularity,
                       {"sids": sids_dir, "model": model_dir, "prompt": to_dict(lm.prompt), "num_beams": lm.decode.num_beams,
                        "geo_bandwidth_km": geo.get("bandwidth_km"), "data": config.data})
    return metrics


def refine(config: RetrievalRunConfig, data: RetrievalData, out: Path, device: Any,
           stages: dict[str, Any]) -> str:
    """The EM rounds (geogr.md §3.6) as stages `em_1`, `em_2`, …; returns the folder (relative to `out`) of the
    SIDs to train the final model on: those whose E-step model scored the best valid Acc@5, or with
    `em.select: last` the last round's.

    Round r: E = one epoch of T2 + T3 + next-POI records under the current SIDs, continuing from the previous
    round's model (round 1: the SFT model); the E-step model is scored on valid under those SIDs (its Acc@5 is
    the score of the SIDs it trained on); M = beam search over the full code grid from each POI's T3 prompt, then
    deferred acceptance with capacity C, and the dedup token re-ranked. Stops when fewer than `stop_changed` of
    the POIs change code.
    """
    lm = config.lm
    em = lm.em
    text_embeddings = make_text_encoder(config.semantic_ids.text).encode(poi_texts(data.catalogue,
                                                                                   data.train_checkins))
    current_sids, current_model = "sids", "sft"
    scored: list[tuple[float, str]] = []
    for round_index in range(1, em.rounds + 1):
        name = f"em_{round_index}"

        def em_stage(tmp: Path, sids_dir: str = current_sids, model_dir: str = current_model,
                     round_index: int = round_index) -> dict[str, Any]:
            sids = SemanticIds.load(out / sids_dir)
            writer = prompt_writer(data, sids, lm)
            model, tokenizer = load_lm(out / model_dir, str(device))
            records = e_step_records(data, sids, writer, writer.grid, em.max_sft_examples, lm.seed + round_index)
            report = train_causal_lm_report(model, tokenizer, records, em.training, tmp)
            valid = evaluate_generative(model, tokenizer, sids, data, writer, lm, splits=("valid",))["valid"]
            levels = sids.centroids.shape[0]
            offsets = sid_level_offsets(tokenizer, sids.level_sizes)[:levels]
            descriptions = poi_descriptions(data, writer.grid)
            codes, scores = grid_candidates(model, tokenizer, descriptions, sids.level_sizes[:levels], offsets,
                                            em.num_beams, lm.decode.batch_size)
            if em.keep_current:
                current = sids.codes[:, :levels]
                codes, scores = with_current_codes(codes, scores, current, code_scores(
                    model, tokenizer, descriptions, current, offsets, lm.decode.batch_size))
            dedup = sids.level_sizes[levels] if sids.length > levels else 1
            capacity = max(1, min(em.capacity, dedup))
            new_codes = deferred_acceptance(codes, scores, capacity, sids.level_sizes[:levels], sids.embeddings,
                                            sids.centroids)
            changed = float((new_codes != sids.codes[:, :levels]).any(axis=1).mean())
            stats = {"changed": changed, "capacity": capacity,
                     "uniqueness": float(len(np.unique(new_codes, axis=0)) / len(new_codes))}
            diagnostics = sid_diagnostics(new_codes, sids.level_sizes[0], text_embeddings, data.catalogue.lat,
                                          data.catalogue.lon, poi_categories(data.catalogue),
                                          complementary_pairs(data.catalogue))
            reassigned_sids(sids, new_codes, round_index, stats, diagnostics).save(tmp / "sids")
            save_lm(model, tokenizer, tmp / "model")
            return {"stage": f"em_{round_index}", "from_sids": sids_dir, "valid_acc@5_of_from_sids": valid["acc@5"],
                    "valid": valid} | stats | report

        report = run_stage(out, name, em_stage)
        stages[name] = report
        scored.append((report["valid_acc@5_of_from_sids"], current_sids))
        current_sids, current_model = f"{name}/sids", f"{name}/model"
        if report["changed"] < em.stop_changed:
            break
    if em.select == "last":
        return current_sids
    best = max(scored, key=lambda item: item[0])  # ties keep the earliest SIDs
    return best[1]


def train_causal_lm_report(model: Any, tokenizer: Any, records: list[dict[str, str]], training: Any,
                           out: Path) -> dict[str, Any]:
    """`lm.train_causal_lm` with its log also written to `out/train_log.jsonl`."""
    report = train_causal_lm(model, tokenizer, records, training, out)
    with open(out / "train_log.jsonl", "w") as log:
        for row in report.pop("log"):
            log.write(json.dumps(row) + "\n")
    return report
