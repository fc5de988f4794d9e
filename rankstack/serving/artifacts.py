"""Serving artifacts: what `rankstack export` writes into `<run>/serving/` and what a server loads at start-up.

    <run>/serving/manifest.json        format version, the world folder, and the SHA-256 of every file below
    <run>/serving/ranking.json         ranking model name, hyper-parameters, tasks and feature columns
    <run>/serving/ranking.safetensors  the run's best ranking weights
    <run>/serving/schema.yaml          the ranking dataset's schema (column kinds, levels, sequence lengths)
    <run>/serving/vocab/               the ranking dataset's vocabulary (index.json + one Parquet file per group)
    <run>/serving/retrieval.safetensors  `popularity` [P]: physical visits (order/navigate) per POI in the log
    <run>/serving/geogr/               optional (`export --retrieval GEOGR_RUN`): the GeoGR run's served LM
                                       (model/: HF config + model.safetensors + tokenizer JSON), its semantic IDs
                                       (sids/: sids.json + sids.safetensors), catalogue.safetensors, retriever.json
    <run>/serving/autofas/             optional (`export --preranking AUTOFAS_RUN`): the derived student's weights
                                       (student.safetensors), student.json (kept fields, widths, d), and the
                                       pre-ranking view's schema.yaml + vocab/ its fields are encoded with
    <run>/serving/relevance/           optional (`export --relevance RELEVANCE_RUN`): a label-first (or label-only)
                                       TaoSR1 model (HF config + model.safetensors + tokenizer JSON + chat template),
                                       its relevance.json (stage, variant, prompt settings) and the rule table
                                       rules.json its prompts quote; the manifest's `relevance` entry holds the
                                       CumPT β it is served with (the run's tuned β, or tuned on the dev split at
                                       export) and where that β came from

Everything is safetensors, JSON, YAML or Parquet: nothing is unpickled at serve time. `load_artifacts` checks each
file against the manifest's hash before reading it, so a missing, truncated or edited file stops the server at
start-up with a message naming the file, never at the first request.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankstack.data.dataset import Dataset
from rankstack.data.schema import Schema
from rankstack.data.vocab import Vocabulary
from rankstack.errors import ConfigError
from rankstack.nn.features import FieldLayout
from rankstack.ranking import build_model
from rankstack.ranking.base import RankingModel
from rankstack.train.checkpoint import atomic_write, best_weights_path, load_weights, save_json, save_weights
from rankstack.world import city

FORMAT_VERSION = 1
SERVING_DIR = "serving"
MANIFEST = "manifest.json"
PHYSICAL_ACTIONS = (city.ORDER, city.NAVIGATE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_data_path(data: str, run_dir: Path) -> Path:
    """A run config's `data` folder: as written (relative to the current directory), else relative to the folders
    above the run (a run trained from the repository root and served from elsewhere)."""
    path = Path(data)
    if path.is_absolute() or path.is_dir():
        return path.resolve()
    for base in [run_dir.resolve(), *run_dir.resolve().parents]:
        if (base / path).is_dir():
            return (base / path).resolve()
    raise ConfigError(f"{run_dir / 'config.yaml'} trains on `{data}`, which is not a folder from here or above the "
                      "run; run the command from the folder the run was trained in, or pass --world.")


GEOGR_DIR = "geogr"
# What `GeoGRRetriever.from_run` reads, as files that load without unpickling (HF `from_pretrained` reads
# model.safetensors; the tokenizer is JSON). Anything else in the run's folders (trainer state, logs) stays behind.
GEOGR_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
GEOGR_SIDS_FILES = ("sids.json", "sids.safetensors")


def export_geogr(geogr_run: str | Path, out: Path, n_pois: int) -> None:
    """Copy what a finished GeoGR run serves with into `out` (safetensors + JSON only; see `GEOGR_MODEL_FILES`)."""
    from rankstack.retrieval.retriever import CATALOGUE_FILE, RETRIEVER_FILE

    run = Path(geogr_run)
    if not (run / RETRIEVER_FILE).is_file() or not (run / CATALOGUE_FILE).is_file():
        raise ConfigError(f"{run} is not a finished GeoGR run ({RETRIEVER_FILE} or {CATALOGUE_FILE} is missing); "
                          "pass --retrieval a folder written by `rankstack train retrieval`.")
    meta = json.loads((run / RETRIEVER_FILE).read_text())
    from safetensors.numpy import load_file

    ids = load_file(str(run / CATALOGUE_FILE))["poi_ids"]
    if len(ids) != n_pois or not (np.sort(ids) == np.arange(1, n_pois + 1)).all():
        raise ConfigError(f"{run / CATALOGUE_FILE} holds {len(ids)} POIs that are not this world's ids 1..{n_pois}; "
                          "train the GeoGR run on this world's next_poi dataset.")
    out.mkdir(parents=True)
    for sub, names, required in (("model", GEOGR_MODEL_FILES, ("config.json", "model.safetensors", "tokenizer.json")),
                                 ("sids", GEOGR_SIDS_FILES, GEOGR_SIDS_FILES)):
        src = run / meta[sub]
        for name in required:
            if not (src / name).is_file():
                raise ConfigError(f"{src / name} is missing; the GeoGR run {run} is incomplete (its model must be "
                                  "saved as safetensors).")
        (out / sub).mkdir()
        for name in names:
            if (src / name).is_file():
                shutil.copy2(src / name, out / sub / name)
    shutil.copy2(run / CATALOGUE_FILE, out / CATALOGUE_FILE)
    served = {key: value for key, value in meta.items() if key != "data"} | {"model": "model", "sids": "sids",
                                                                              "run": str(run.resolve())}
    save_json(served, out / RETRIEVER_FILE)


AUTOFAS_DIR = "autofas"


def _autofas_student(spec: dict[str, Any], schema: Schema, vocab: Vocabulary, where: Path) -> Any:
    """The `MLPStudent` of a `student.json` spec over the view's schema and vocabulary (untrained)."""
    from rankstack.preranking.data import prerank_fields
    from rankstack.preranking.student import MLPStudent

    by_name = {f.name: f for f in prerank_fields(schema)}
    missing = [name for name in spec["fields"] if name not in by_name]
    if missing:
        raise ConfigError(f"{where} keeps field `{missing[0]}`, which the pre-ranking view's schema does not hold.")
    fields = [by_name[name] for name in spec["fields"]]
    layout = FieldLayout.from_dataset(Dataset(where.parent, schema.select(spec["fields"]), vocab), ["click"])
    return MLPStudent(layout, fields, list(spec["widths"]), int(spec["dim"]))


def export_autofas(autofas_run: str | Path, out: Path) -> None:
    """Copy the derived student of a `rankstack train preranking` run (its last calibration round) into `out`."""
    from rankstack.config import read_yaml

    run = Path(autofas_run)
    derived, results, config_path = run / "autofas" / "derived.json", run / "autofas" / "results.json", \
        run / "config.yaml"
    for path in (derived, results, config_path):
        if not path.is_file():
            raise ConfigError(f"{path} is missing; pass --preranking a finished `rankstack train preranking --out` "
                              "folder.")
    spec = json.loads(derived.read_text())
    row = json.loads(results.read_text())
    student_dir = run / "autofas" / f"student{len(row.get('calibration', [None])) - 1}"
    weights = best_weights_path(student_dir)
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise ConfigError(f"{weights} is missing (the student must be saved as safetensors); retrain the run.")
    config = read_yaml(config_path)
    view = Path(config.get("view") or run / "view")
    if not (view / "schema.yaml").is_file():
        view = run / "view"
    if not (view / "schema.yaml").is_file() or not (view / "vocab").is_dir():
        raise ConfigError(f"{view} holds no pre-ranking view (schema.yaml + vocab/); the AutoFAS run {run} needs it.")
    out.mkdir(parents=True)
    shutil.copy2(view / "schema.yaml", out / "schema.yaml")
    shutil.copytree(view / "vocab", out / "vocab")
    student_spec = {"fields": spec["fields"], "widths": spec["widths"],
                    "dim": int(config.get("autofas", {}).get("embedding_dim", 16)),
                    "budget_ms": row.get("budget_ms"), "latency_p50_ms": row.get("latency_p50_ms"),
                    "run": str(run.resolve())}
    model = _autofas_student(student_spec, Schema.load(out / "schema.yaml"), Vocabulary.load(out / "vocab"),
                             out / "student.json")
    model.load_state_dict(load_weights(weights))  # proves the weights fit the spec before they are exported
    save_weights(model.state_dict(), out / "student.safetensors")
    save_json(student_spec, out / "student.json")


RELEVANCE_DIR = "relevance"
# What a relevance checkpoint serves with, none of it pickled (`model/` also holds TRL's training_args.bin: left
# behind). The model, its config and the tokenizer are required; the rest is copied when the run has it.
RELEVANCE_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "relevance.json",
                         "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                         "chat_template.jinja")
RELEVANCE_REQUIRED = RELEVANCE_MODEL_FILES[:4]
#: The dev split β is tuned on at export when the run was never calibrated (relevance.md §3.4).
DEV_SPLIT = "valid"


def export_relevance(relevance_run: str | Path, out: Path) -> dict[str, Any]:
    """Copy the model of a `rankstack train relevance` run (any stage) into `out`; returns the manifest's `relevance`
    entry: the CumPT β it is served with (the run's `cumpt.json`, else tuned on the dev split of the run's dataset
    now) and the run's settings. A think-first run is refused: its first token is no label."""
    from rankstack.relevance.cumpt import CALIBRATION_FILE, RelevanceScorer
    from rankstack.relevance.data import load_split
    from rankstack.relevance.stage import checkpoint_dir

    try:
        checkpoint = checkpoint_dir(relevance_run)
    except ConfigError:
        raise ConfigError(f"--relevance {relevance_run} holds no relevance checkpoint (no relevance.json in it or in "
                          "its model/ folder); pass the --out folder of `rankstack train relevance`.") from None
    meta = json.loads((checkpoint / "relevance.json").read_text())
    if meta.get("variant") == "think_first":
        raise ConfigError(f"--relevance {relevance_run} is a think-first run: its answer starts with the rationale, "
                          "not the label, so it cannot be served from one forward pass; export a label-first (or "
                          "label-only) run.")
    for name in RELEVANCE_REQUIRED:
        if not (checkpoint / name).is_file():
            raise ConfigError(f"{checkpoint / name} is missing; the relevance run is incomplete (its model must be "
                              "saved as safetensors with its tokenizer's tokenizer.json).")
    dataset = Path(meta.get("dataset", ""))
    rules = dataset / "rules.json"
    if meta.get("rule_text") and not rules.is_file():
        raise ConfigError(f"{rules} is missing: the relevance run quotes rule texts in its prompts, and they come "
                          "from the dataset it was trained on; export from a machine that has that dataset.")
    calibration = checkpoint.parent / CALIBRATION_FILE
    if calibration.is_file():
        beta, source = float(json.loads(calibration.read_text())["beta"]), str(calibration.resolve())
    elif (dataset / "schema.yaml").is_file():
        scorer = RelevanceScorer.from_run(checkpoint)
        dev = load_split(dataset, DEV_SPLIT)
        beta = scorer.calibrate(dev)
        source = f"tuned at export on {len(dev)} pairs of {dataset.resolve() / DEV_SPLIT}"
    else:
        raise ConfigError(f"{relevance_run} has no tuned CumPT β ({calibration} is missing) and its dataset {dataset} "
                          "is not here to tune one on; calibrate the run (RelevanceScorer.calibrate + "
                          "save_calibration) or export where its dataset is.")
    out.mkdir(parents=True)
    for name in RELEVANCE_MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    if rules.is_file():
        shutil.copy2(rules, out / "rules.json")
    return {"beta": beta, "beta_source": source, "stage": meta.get("stage"), "variant": meta["variant"],
            "rule_text": bool(meta.get("rule_text")), "run": str(checkpoint.parent.resolve())}


def export_run(run_dir: str | Path, world_dir: str | Path | None = None,
               geogr_run: str | Path | None = None, autofas_run: str | Path | None = None,
               relevance_run: str | Path | None = None) -> Path:
    """Write `<run_dir>/serving/` from a finished ranking run (its config.yaml and best weights) and its world;
    with `geogr_run`, the GeoGR retriever of that `rankstack train retrieval` run goes into `serving/geogr/`, with
    `autofas_run` the AutoFAS student into `serving/autofas/`, with `relevance_run` the TaoSR1 model into
    `serving/relevance/`."""
    from rankstack.ranking.run import load_run_config
    from rankstack.serving.features import WorldTables

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass `--run` a folder written by `rankstack train ranking` "
                          "or `rankstack demo` (e.g. runs/demo/dlrm).")
    config = load_run_config(config_path)
    weights = best_weights_path(run_dir)
    if not weights.is_file():
        raise ConfigError(f"{run_dir} has no {weights.name}; the run has not finished an evaluation yet.")
    if world_dir is not None and not Path(config.data).is_dir():
        data_dir = Path(world_dir).resolve() / "ranking"  # the run was trained elsewhere; its world is given
    else:
        data_dir = resolve_data_path(config.data, run_dir)
    world = Path(world_dir).resolve() if world_dir else data_dir.parent
    tables = WorldTables.load(world)  # fails now, naming the file, if the world is incomplete
    dataset = Dataset.open(data_dir)
    # Written beside the old export and swapped in at the end: a refused input (a think-first relevance run, an
    # incomplete GeoGR run) leaves the previous export as it was.
    served, out = run_dir / SERVING_DIR, run_dir / f"{SERVING_DIR}.partial"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    layout = FieldLayout.from_dataset(Dataset.open(data_dir, columns=config.features or None), config.tasks or None)
    state = load_weights(weights)
    model = build_model(config.model.name, config.model.args, layout, str(config_path))
    model.load_state_dict(state)  # proves the weights fit the model before they are exported
    save_weights(model.state_dict(), out / "ranking.safetensors")
    save_json({"model": config.model.name, "args": config.model.args, "tasks": list(layout.labels),
               "features": list(config.features)}, out / "ranking.json")
    dataset.schema.save(out / "schema.yaml")
    dataset.vocab.save(out / "vocab")
    physical = np.isin(tables.events.action, PHYSICAL_ACTIONS)
    popularity = np.bincount(tables.events.poi[physical], minlength=tables.n_pois).astype(np.float32)
    save_weights({"popularity": torch.from_numpy(popularity)}, out / "retrieval.safetensors")
    if geogr_run is not None:
        export_geogr(geogr_run, out / GEOGR_DIR, tables.n_pois)
    if autofas_run is not None:
        export_autofas(autofas_run, out / AUTOFAS_DIR)
    relevance = export_relevance(relevance_run, out / RELEVANCE_DIR) if relevance_run is not None else None
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    manifest = {"format": FORMAT_VERSION, "world": str(world), "run": str(run_dir.resolve()),
                "files": {name: _sha256(out / name) for name in files}}
    if relevance is not None:
        manifest[RELEVANCE_DIR] = relevance
    atomic_write(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    if served.exists():
        shutil.rmtree(served)
    out.rename(served)
    return served


@dataclass
class Artifacts:
    """Everything a `Cascade` loads from a run's serving folder."""

    root: Path
    world_dir: Path
    ranking_name: str
    ranking: RankingModel
    schema: Schema
    vocab: Vocabulary
    popularity: np.ndarray
    geogr_dir: Path | None = None  # serving/geogr/ when the export holds a GeoGR retriever
    autofas_dir: Path | None = None  # serving/autofas/ when the export holds an AutoFAS student
    relevance_dir: Path | None = None  # serving/relevance/ when the export holds a TaoSR1 relevance model
    relevance_beta: float = 0.5  # the CumPT β the manifest stores for it


def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"serving artifact {path} {problem}; re-export it with `rankstack export --run "
                       f"{path.parent.parent}`.")


def load_artifacts(run_dir: str | Path, world_dir: str | Path | None = None) -> Artifacts:
    """Load and check `<run_dir>/serving/`; every problem raises a `ConfigError` naming the file."""
    root = Path(run_dir) / SERVING_DIR
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise _fail(manifest_path, "is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, str] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise _fail(manifest_path, f"is not a valid manifest ({err})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise _fail(manifest_path, f"has format {manifest.get('format')}, this server reads {FORMAT_VERSION}")
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise _fail(path, "is missing")
        if _sha256(path) != digest:
            raise _fail(path, "does not match the hash in manifest.json (truncated, corrupt or edited)")
    for name in ("ranking.json", "ranking.safetensors", "schema.yaml", "vocab/index.json", "retrieval.safetensors"):
        if name not in files:
            raise _fail(root / name, "is not listed in manifest.json")
    spec: dict[str, Any] = json.loads((root / "ranking.json").read_text())
    schema = Schema.load(root / "schema.yaml")
    vocab = Vocabulary.load(root / "vocab")
    dataset = Dataset(root, schema.select(spec["features"]) if spec["features"] else schema, vocab)
    layout = FieldLayout.from_dataset(dataset, spec["tasks"])
    model = build_model(spec["model"], spec["args"], layout, str(root / "ranking.json"))
    try:
        model.load_state_dict(load_weights(root / "ranking.safetensors"))
    except (RuntimeError, ValueError, OSError) as err:
        raise _fail(root / "ranking.safetensors", f"does not fit the model in ranking.json ({err})") from None
    model.eval()
    popularity = load_weights(root / "retrieval.safetensors")["popularity"].numpy().astype(np.float64)
    world = Path(world_dir) if world_dir else Path(manifest["world"])
    geogr = root / GEOGR_DIR if f"{GEOGR_DIR}/retriever.json" in files else None
    autofas = root / AUTOFAS_DIR if f"{AUTOFAS_DIR}/student.json" in files else None
    relevance, beta = None, 0.5
    if f"{RELEVANCE_DIR}/relevance.json" in files:
        relevance = root / RELEVANCE_DIR
        for name in RELEVANCE_REQUIRED:
            if f"{RELEVANCE_DIR}/{name}" not in files:
                raise _fail(relevance / name, "is not listed in manifest.json")
        entry = manifest.get(RELEVANCE_DIR)
        beta = entry.get("beta") if isinstance(entry, dict) else None
        if not isinstance(beta, (int, float)) or not 0.0 < beta <= 1.0:
            raise _fail(manifest_path, f"has no CumPT β in (0, 1] for {relevance} (relevance.beta = {beta!r})")
    return Artifacts(root, world, spec["model"], model, dataset.schema, vocab, popularity, geogr, autofas, relevance,
                     float(beta))


@dataclass
class AutoFASArtifacts:
    """The exported AutoFAS student (eval mode) with the view schema (restricted to its fields) and vocabulary."""

    model: Any
    schema: Schema
    vocab: Vocabulary
    spec: dict[str, Any]


def load_autofas(artifacts: Artifacts) -> AutoFASArtifacts:
    """The exported AutoFAS student (`serving/autofas/`, hashes already checked); a file that does not load raises a
    `ConfigError` naming it."""
    root = artifacts.autofas_dir
    if root is None:
        raise ConfigError(f"the serving config asks for AutoFAS pre-ranking but {artifacts.root / AUTOFAS_DIR} "
                          "/student.json is missing; export with `rankstack export --run RUN --preranking "
                          "AUTOFAS_RUN`, or set `preranker: auto` to serve the retrieval-score baseline.")
    try:
        spec = json.loads((root / "student.json").read_text())
        schema, vocab = Schema.load(root / "schema.yaml"), Vocabulary.load(root / "vocab")
        model = _autofas_student(spec, schema, vocab, root / "student.json")
    except (ConfigError, OSError, KeyError, ValueError, TypeError) as err:
        raise _fail(root / "student.json", f"does not describe a loadable AutoFAS student ({err})") from None
    try:
        model.load_state_dict(load_weights(root / "student.safetensors"))
    except (RuntimeError, ValueError, OSError) as err:
        raise _fail(root / "student.safetensors", f"does not fit the student in student.json ({err})") from None
    model.eval()
    return AutoFASArtifacts(model, schema.select(spec["fields"]), vocab, spec)


def load_geogr(artifacts: Artifacts, num_beams: int | None = None) -> Any:
    """The exported GeoGR retriever (`serving/geogr/`, hashes already checked); a file that does not load raises a
    `ConfigError` naming the folder."""
    from rankstack.retrieval.retriever import GeoGRRetriever

    if artifacts.geogr_dir is None:
        raise ConfigError(f"the serving config asks for GeoGR retrieval but {artifacts.root / GEOGR_DIR / 'retriever.json'} "
                          "is missing; export with `rankstack export --run RUN --retrieval GEOGR_RUN`, or set "
                          "`feed_retrieval: auto` to serve the geo-nearest popular baseline.")
    try:
        return GeoGRRetriever.from_run(artifacts.geogr_dir, num_beams=num_beams)
    except Exception as err:  # any load failure is a start-up failure naming the artifact
        raise ConfigError(f"serving artifact {artifacts.geogr_dir} does not load as a GeoGR retriever "
                          f"({type(err).__name__}: {err}); re-export it with `rankstack export --retrieval`.") from None


def load_relevance(artifacts: Artifacts, batch_size: int = 32) -> Any:
    """The exported TaoSR1 model as a `rankstack.relevance.cumpt.RelevanceScorer` (eval mode, the manifest's β, the
    exported rule table); a file that does not load raises a `ConfigError` naming it."""
    from rankstack.relevance.cumpt import RelevanceScorer
    from rankstack.relevance.data import load_rule_table
    from rankstack.relevance.sft import load_checkpoint

    root = artifacts.relevance_dir
    if root is None:
        raise ConfigError(f"the serving config asks for `relevance: cumpt` but {artifacts.root / RELEVANCE_DIR} "
                          "/relevance.json is missing; export with `rankstack export --run RUN --relevance "
                          "RELEVANCE_RUN`, or set `relevance: auto` to serve the lexical baseline.")
    try:
        model, tokenizer, meta = load_checkpoint(root)
        scorer = RelevanceScorer(model.eval(), tokenizer, batch_size, beta=artifacts.relevance_beta,
                                 variant=meta["variant"], rule_text=bool(meta["rule_text"]),
                                 rule_table=load_rule_table(root))
    except Exception as err:  # any load failure is a start-up failure naming the artifact
        raise ConfigError(f"serving artifact {root} does not load as a relevance model ({type(err).__name__}: "
                          f"{err}); re-export it with `rankstack export --relevance`.") from None
    if scorer.variant == "think_first":
        raise _fail(root / "relevance.json", "describes a think-first model, which cannot be served in one pass")
    if scorer.rule_text and not scorer.rule_table:
        raise _fail(root / "rules.json", "is missing, and the model's prompts quote the rule texts")
    scorer.meta = meta
    return scorer
