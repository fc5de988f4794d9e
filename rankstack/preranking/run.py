"""`rankstack train preranking` and `rankstack bench preranking` (autofas.md §4, §6, §7, §13).

`prepare` builds (or opens) the pre-ranking view of a world, or opens a converted real one (`data:`, e.g.
Foursquare NYC, §8), trains (or loads) the ranking teacher on the world's displayed impressions (or on
`teacher_data:`) over the view's fields, precomputes the teacher's logits on every candidate, and loads this
device's latency table. `train_autofas` searches under one budget, derives the student, measures it untrained
and drops fields (lowest value per cost first, `autofas.next_to_drop`) until it fits the budget, retrains it with
distillation and measures it again; if it then exceeds 1.1 × the budget, it drops the next field and retrains (at
most `calibration_rounds` times; §4.6 re-searches with a doubled λ instead, which costs a search per round).
`bench_preranking` adds every baseline and the budget sweep and writes `pareto.csv`, `results.json` and the Pareto
plots.

Latency per request (`N_c` candidates) = simulated retrieval of the kept fields (schema costs × `cost_scale`)
+ measured inference p50 (1 thread, fp32, eager, one request at a time).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankstack.config import dump_yaml, load_yaml
from rankstack.data.dataset import Dataset
from rankstack.errors import ConfigError
from rankstack.nn.features import FieldLayout
from rankstack.preranking.autofas import AutoFASConfig, AutoFASSearch, StudentSpec, next_to_drop
from rankstack.preranking.cold import COLD, COLDConfig, field_importance, select_fields
from rankstack.preranking.data import PrerankField, PrerankSplit, RequestLoader, load_split, prerank_fields
from rankstack.preranking.distill import load_teacher, teacher_logits
from rankstack.preranking.distilled_mlp import SIZES, cheap_fields
from rankstack.preranking.evaluate import model_scores, references, score_report
from rankstack.preranking.latency import LatencyTable, measure_request_latency, predict_mlp, retrieval_ms
from rankstack.preranking.student import DISTILL, LossWeights, MLPStudent, PrerankModel
from rankstack.preranking.two_tower import TwoTower, TwoTowerConfig, TwoTowerServing
from rankstack.train.checkpoint import best_weights_path, load_weights, save_json
from rankstack.train.rng import seed_everything
from rankstack.train.trainer import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class RetrainConfig:
    """Training of every student and baseline: epochs over the training requests, requests per batch, learning
    rates, and the validation metric that picks the best epoch (`overlap@10`; COLD without a teacher uses `auc`)."""

    epochs: int = 3
    batch_requests: int = 8
    lr_dense: float = 1e-3
    lr_embedding: float = 1e-2
    eval_every_steps: int | None = None


@dataclass
class LatencyConfig:
    """Latency measurement (autofas.md §5): threads, warm-up and timed requests; `cost_scale` multiplies the
    schema's fetch costs (§8 rescales them so that retrieval ≈ inference for COLD with all fields)."""

    threads: int = 1
    warmup: int = 20
    repeats: int = 200
    cost_scale: float = 1.0
    table_dir: str = ""


@dataclass
class PrerankRunConfig:
    """A pre-ranking run on a synthetic world or on a converted real dataset (exactly one of `world`, `data`).

    world: world folder (`rankstack world generate`). view: the pre-ranking view folder, built there if missing
        (default `<out>/view`). n_cand, requests: candidates per request and requests per split of the view.
    data: instead of a world, a real pre-ranking view: a CTR conversion with `n_cand` candidates per request
        and fetch costs in its schema (Foursquare NYC: `--option negatives=199 sample_requests=...`, see
        configs/preranking/autofas_nyc.yaml). No true probabilities and no field kinds: no Bayes reference.
    teacher_data: with `data`, the dataset the teacher trains on (the ordinary CTR conversion of the same source);
        the view is read with its vocabularies, so ids and numeric buckets match the teacher's.
    teacher_config: ranking run config of the teacher (`data` and `features` are filled in); teacher_run: a
        finished teacher run folder to reuse instead (default `<out>/teacher`, trained if missing); teacher_epochs:
        overrides the teacher config's epochs when > 0.
    exclude_fields: fields the pre-ranker never sees (`position` is unknown before display).
    budget_ms: the latency budget of `train preranking` (the CLI's --budget-ms overrides it).
    budget_factors: the sweep of `bench preranking`, as multiples of T_ref = 0.5 × COLD-all latency (§4).
    """

    world: str = ""
    data: str = ""
    teacher_data: str = ""
    view: str = ""
    n_cand: int = 200
    requests: dict[str, int] = field(default_factory=lambda: {"train": 1000, "valid": 200, "test": 300})
    teacher_config: str = "configs/preranking/teacher_dcnv2.yaml"
    teacher_run: str = ""
    teacher_epochs: int = 0
    exclude_fields: list[str] = field(default_factory=lambda: ["position"])
    budget_ms: float = 0.0
    budget_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    autofas: AutoFASConfig = field(default_factory=AutoFASConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    cold: COLDConfig = field(default_factory=COLDConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    calibration_rounds: int = 3
    seed: int = 0


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PrerankRunConfig:
    return load_yaml(PrerankRunConfig, path, overrides)


@dataclass
class Prepared:
    """Everything the models share: the view, fields, splits with teacher logits, latency table."""

    config: PrerankRunConfig
    view: Path
    layout: FieldLayout
    fields: list[PrerankField]
    splits: dict[str, PrerankSplit]
    table: LatencyTable
    teacher: dict[str, Any]

    @property
    def n_cand(self) -> int:
        return self.splits["train"].n_cand

    def serving_batches(self, n: int = 32) -> list[dict[str, torch.Tensor]]:
        test = self.splits["test"]
        return [test.take([i]) for i in range(min(n, test.num_requests))]


def prepare(config: PrerankRunConfig, out: Path, log=print) -> Prepared:
    view, teacher_data = _view(config, out, log)
    # The view is read with the teacher dataset's vocabularies, so ids and numeric buckets are the teacher's.
    dataset = dataclasses.replace(Dataset.open(view), vocab=Dataset.open(teacher_data).vocab)
    fields = prerank_fields(dataset.schema, config.exclude_fields)
    if not any(f.cost_ms > 0 for f in fields):
        raise ConfigError(f"{view / 'schema.yaml'} gives no pre-ranking field a fetch `cost_ms`; the latency budget "
                          "needs them (autofas.md §8): set `cost_ms` per column (request-level per request, others "
                          "per candidate).")
    layout = FieldLayout.from_dataset(
        dataclasses.replace(dataset, schema=dataset.schema.select([f.name for f in fields])), ["click"])
    splits = {s: load_split(dataset, s, fields) for s in ("train", "valid", "test")}
    if config.data and splits["train"].n_cand != config.n_cand:
        raise ConfigError(f"{view} has {splits['train'].n_cand} candidates per request, the config asks for "
                          f"n_cand {config.n_cand}; convert with `--option negatives={config.n_cand - 1}` or set "
                          f"n_cand: {splits['train'].n_cand}.")

    teacher_dir = Path(config.teacher_run) if config.teacher_run else out / "teacher"
    if not best_weights_path(teacher_dir).exists():
        from rankstack.ranking.run import load_run_config, train_ranking

        path = REPO / config.teacher_config if not Path(config.teacher_config).is_file() else Path(
            config.teacher_config)
        overrides: dict[str, Any] = {"data": str(teacher_data), "features": [f.name for f in fields],
                                     "tasks": ["click"]}
        if config.teacher_epochs > 0:
            overrides["trainer.epochs"] = config.teacher_epochs
        run = load_run_config(path, overrides)
        start = time.perf_counter()
        train_ranking(run, teacher_dir, where=str(path))
        log(f"teacher trained → {teacher_dir} ({time.perf_counter() - start:.0f} s)")
    teacher = load_teacher(teacher_dir)
    for split in splits.values():
        split.tensors["teacher"] = teacher_logits(teacher, split)
    widths = sorted({*config.autofas.widths, *config.cold.widths, *config.two_tower.tower,
                     *config.two_tower.output_widths, *(w for s in SIZES.values() for w in s)})
    table_dir = Path(config.latency.table_dir) if config.latency.table_dir else REPO / "configs/preranking/latency"
    table = LatencyTable.for_device(splits["train"].n_cand, widths, len(fields) * config.autofas.embedding_dim,
                                    config.latency.threads, table_dir)
    info = {"run": str(teacher_dir), "model": type(teacher).__name__,
            "valid": references(splits["valid"]), "test": references(splits["test"])}
    return Prepared(config, view, layout, fields, splits, table, info)


def _view(config: PrerankRunConfig, out: Path, log=print) -> tuple[Path, Path]:
    """(the pre-ranking view, the dataset the teacher trains on): a world's view, built if missing, and its
    `ranking/` dataset; or `data` and `teacher_data` as given."""
    if bool(config.world) == bool(config.data):
        raise ConfigError("set exactly one of `world:` (a synthetic world folder, `rankstack world generate`) and "
                          "`data:` (a converted real pre-ranking view, e.g. Foursquare NYC with negatives=199; see "
                          f"configs/preranking/autofas_nyc.yaml); got world={config.world!r}, data={config.data!r}.")
    if config.world:
        if config.teacher_data:
            raise ConfigError("`teacher_data:` goes with `data:`; on a world the teacher trains on <world>/ranking.")
        from rankstack.world.preranking import build_preranking_view

        view = Path(config.view) if config.view else out / "view"
        if not (view / "schema.yaml").is_file():
            start = time.perf_counter()
            build_preranking_view(config.world, view, config.n_cand, config.requests, config.seed)
            log(f"pre-ranking view → {view} ({time.perf_counter() - start:.1f} s)")
        return view, Path(config.world) / "ranking"
    if config.view:
        raise ConfigError("`view:` is where a world's view is built; with `data:` the view is `data` itself.")
    if not config.teacher_data:
        raise ConfigError("`data:` needs `teacher_data:`, the dataset the teacher trains on and whose vocabularies "
                          "encode the view (the ordinary CTR conversion of the same source).")
    return Path(config.data), Path(config.teacher_data)


# ---- training and scoring any model ----------------------------------------------------------------------------


def fit(model: PrerankModel, prep: Prepared, run_dir: Path, metric: str = "overlap@10") -> dict[str, float]:
    """Train `model` with the rankstack `Trainer` on whole requests; keep the best validation epoch."""
    c = prep.config.retrain
    trainer_config = TrainerConfig(epochs=c.epochs, lr_dense=c.lr_dense, lr_embedding=c.lr_embedding,
                                   early_stopping_metric=metric, eval_every_steps=c.eval_every_steps,
                                   checkpoint_every_steps=None, log_every_steps=50, seed=prep.config.seed,
                                   device="cpu", progress_bar=False, tensorboard=False)
    loader = RequestLoader(prep.splits["train"], c.batch_requests, prep.config.seed)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return score_report(model_scores(m, prep.splits["valid"]), prep.splits["valid"])

    trainer = Trainer(model, loader, trainer_config, run_dir, evaluate=evaluate)
    metrics = trainer.fit()
    best = best_weights_path(run_dir)
    if best.exists():
        model.load_state_dict(load_weights(best))
    return metrics


def score(model: PrerankModel, prep: Prepared, name: str, fields: list[str], retrieval: float,
          predicted: float | None = None, serving: torch.nn.Module | None = None, **extra: Any) -> dict[str, Any]:
    """Test metrics and the measured latency per request of a trained model (one Pareto row)."""
    measured = _inference_latency(prep, serving or model)
    report = score_report(model_scores(model, prep.splits["test"]), prep.splits["test"])
    row = {"model": name, "n_fields": len(fields), "retrieval_ms": retrieval, "infer_p50_ms": measured["p50_ms"],
           "infer_p99_ms": measured["p99_ms"], "latency_p50_ms": retrieval + measured["p50_ms"],
           "latency_p99_ms": retrieval + measured["p99_ms"], "predicted_ms": predicted,
           "params": sum(p.numel() for p in model.parameters()), **report, **extra, "fields": fields}
    return row


def _inference_latency(prep: Prepared, model: torch.nn.Module) -> dict[str, float]:
    """p50 / p99 inference time (ms) of `model` on one test request at a time, as the config's latency section says."""
    lc = prep.config.latency
    return measure_request_latency(model, prep.serving_batches(), lc.repeats, lc.warmup, lc.threads)


def _retrieval(prep: Prepared, names: list[str]) -> float:
    keep = torch.tensor([float(f.name in names) for f in prep.fields])
    return float(retrieval_ms(prep.fields, keep, prep.n_cand, prep.config.latency.cost_scale))


def _predict(prep: Prepared, names: list[str], widths: list[int]) -> float:
    return predict_mlp(prep.fields, names, widths, prep.table, prep.n_cand, prep.config.autofas.embedding_dim,
                       prep.config.latency.cost_scale)["total"]


def _by_name(prep: Prepared, names: list[str]) -> list[PrerankField]:
    return [f for f in prep.fields if f.name in names]


def retrain_loss(config: PrerankRunConfig) -> LossWeights:
    """The one distillation recipe of every distilled model (AutoFAS's student, the hand-designed MLPs, the two
    towers): 0.5·BCE + 1.0·pointwise KD (§4.5) + the search's listwise weight, so comparisons are like for like."""
    return dataclasses.replace(DISTILL, listwise=config.autofas.listwise_weight)


def _student(prep: Prepared, names: list[str], widths: list[int], loss: LossWeights | None = None) -> MLPStudent:
    return MLPStudent(prep.layout, _by_name(prep, names), widths, prep.config.autofas.embedding_dim,
                      loss or retrain_loss(prep.config))


def train_student(prep: Prepared, names: list[str], widths: list[int], run_dir: Path,
                  loss: LossWeights | None = None, metric: str = "overlap@10") -> MLPStudent:
    seed_everything(prep.config.seed)
    model = _student(prep, names, widths, loss)
    fit(model, prep, run_dir, metric)
    return model


# ---- AutoFAS -----------------------------------------------------------------------------------------------


def train_autofas(prep: Prepared, budget_ms: float, out: Path, log=print) -> dict[str, Any]:
    """Search under `budget_ms`, derive, retrain with KD, calibrate against measured latency; one Pareto row."""
    config = prep.config
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    search = AutoFASSearch(prep.layout, prep.fields, config.autofas, prep.table, budget_ms,
                           config.latency.cost_scale, prep.n_cand, config.seed)
    spec = search.run(prep.splits["train"], out / "search_trace.jsonl")
    search_s = time.perf_counter() - start
    log(f"  search ({config.autofas.search_steps} steps) {search_s:.0f} s: {len(spec.fields)}/{len(prep.fields)} "
        f"fields, widths {spec.widths}, predicted {spec.predicted_ms['total']:.2f} ms (budget {budget_ms:.2f})")
    # A student's latency does not depend on its weights: measure the derived one untrained and trim it to the
    # budget before retraining, so that §4.6's calibration below is a fallback rather than a retraining loop.
    while (measured := _measured_ms(prep, spec.fields, spec.widths)) > budget_ms:
        drop = next_to_drop(spec, prep.fields, prep.n_cand)
        if drop is None:
            break
        log(f"  untrained student measured {measured:.2f} ms > budget: dropping `{drop}`")
        _drop(prep, spec, drop)
    rounds = []
    for round_ in range(config.calibration_rounds + 1):
        model = train_student(prep, spec.fields, spec.widths, out / f"student{round_}")
        row = score(model, prep, "autofas", spec.fields, _retrieval(prep, spec.fields),
                    spec.predicted_ms["total"], budget_ms=budget_ms, widths=spec.widths, search_s=search_s)
        rounds.append({"fields": len(spec.fields), "measured_ms": row["latency_p50_ms"]})
        drop = next_to_drop(spec, prep.fields, prep.n_cand)
        if row["latency_p50_ms"] <= 1.1 * budget_ms or drop is None or round_ == config.calibration_rounds:
            break
        log(f"  measured {row['latency_p50_ms']:.2f} ms > 1.1 × budget: dropping `{drop}` and retraining")
        _drop(prep, spec, drop)
    spec.save(out / "derived.json")
    row["calibration"] = rounds
    row["budget_ratio"] = row["latency_p50_ms"] / budget_ms
    if row["budget_ratio"] < 0.7:
        log(f"  warning: the student uses {row['budget_ratio']:.2f} of its budget; the search left budget unused "
            "(autofas.md §13.3)")
    row["selection"] = selection_report(prep, spec, out)
    save_json(row, out / "results.json")
    return row


def _measured_ms(prep: Prepared, names: list[str], widths: list[int]) -> float:
    """Measured p50 latency per request (retrieval + inference) of an untrained student on `names` and `widths`."""
    return _retrieval(prep, names) + _inference_latency(prep, _student(prep, names, widths))["p50_ms"]


def _drop(prep: Prepared, spec: StudentSpec, name: str) -> None:
    spec.fields.remove(name)
    spec.trimmed.append(name)
    spec.predicted_ms = predict_mlp(prep.fields, spec.fields, spec.widths, prep.table, prep.n_cand,
                                    prep.config.autofas.embedding_dim, prep.config.latency.cost_scale)


def selection_report(prep: Prepared, spec: StudentSpec, out: Path) -> dict[str, Any]:
    """Kept and dropped fields with their kind (world truth; `unknown` on real data), level, cost, π and held-out
    benefit z (when `derive_test_z` tested them); on a world, the noise kept and the informative fields recalled."""
    truth = _world_fields(prep)
    kinds = _field_kinds(truth)
    rows = []
    for f in prep.fields:
        rows.append({"field": f.name, "kept": f.name in spec.fields, "level": f.level, "role": f.role,
                     "cost_ms_per_request": round(f.request_cost_ms(prep.n_cand) * prep.config.latency.cost_scale, 5),
                     "pi": spec.keep_prob.get(f.name), "benefit_z": spec.benefit_z.get(f.name),
                     "kind": kinds.get(f.name, "unknown" if not kinds else "")})
    kept = [r for r in rows if r["kept"]]
    noise = [r for r in rows if r["kind"] == "noise"]
    informative = [r for r in rows if r["kind"] == "informative"]
    report = {
        "fields": rows, "widths": spec.widths, "predicted_ms": spec.predicted_ms, "trimmed": spec.trimmed,
        "added": spec.added, "failed_test": spec.failed_test,
    }
    if kinds:  # the world's truth; real data has none
        report.update({
            "noise_kept": [r["field"] for r in noise if r["kept"]],
            "informative_dropped": [r["field"] for r in informative if not r["kept"]],
            "noise_share_of_kept": len([r for r in kept if r["kind"] == "noise"]) / max(len(kept), 1),
            "informative_recall": len([r for r in informative if r["kept"]]) / max(len(informative), 1),
            "costly_informative_kept": [n for n in truth.get("costly_informative", []) if n in spec.fields],
        })
    save_json(report, out / "selection.json")
    return report


def _world_fields(prep: Prepared) -> dict[str, Any]:
    """The world's answer key for the view's fields (`truth/fields.json`), or {} on real data."""
    path = prep.view / "truth" / "fields.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _field_kinds(data: dict[str, Any]) -> dict[str, str]:
    kinds = {n: k for k in ("informative", "weak", "noise") for n in data.get(k, [])}
    kinds.update({n: f"duplicate:{of}" for n, of in data.get("duplicates", {}).items()})
    kinds.update({n: f"proxy:{p['of']}" for n, p in data.get("proxies", {}).items()})
    return kinds


# ---- baselines ---------------------------------------------------------------------------------------------


def run_cold(prep: Prepared, out: Path, log=print) -> list[dict[str, Any]]:
    """COLD on all fields → SE importances on validation → COLD retrained on the top n for each fraction."""
    c = prep.config.cold
    seed_everything(prep.config.seed)
    full = COLD(prep.layout, prep.fields, c)
    fit(full, prep, out / "cold_all", metric="auc")
    importance = field_importance(full, prep.splits["valid"])
    save_json(importance, out / "cold_importance.json")
    rows = []
    for fraction in c.field_fractions:
        n = max(1, int(round(fraction * len(prep.fields))))
        names = select_fields(importance, n)
        if n == len(prep.fields):
            model = full
        else:
            seed_everything(prep.config.seed)
            model = COLD(prep.layout, _by_name(prep, names), c)
            fit(model, prep, out / f"cold_{n}", metric="auc")
        rows.append(score(model, prep, f"cold_{n}", names, _retrieval(prep, names), _predict(prep, names, c.widths),
                          config=f"top {n} by SE gate"))
        log(f"  cold n={n}: {_row_text(rows[-1])}")
    return rows


def run_two_tower(prep: Prepared, out: Path, log=print) -> list[dict[str, Any]]:
    c = prep.config.two_tower
    rows = []
    for width in c.output_widths:
        seed_everything(prep.config.seed)
        model = TwoTower(prep.layout, prep.fields, c, width, retrain_loss(prep.config))
        fit(model, prep, out / f"two_tower_{width}")
        names = [f.name for f in model.fields]
        item_fields = [f for f in model.fields if f.level != "request"]
        # Serving fetches request fields once and one precomputed vector per candidate (mean item-field cost).
        retrieval = prep.config.latency.cost_scale * (
            sum(f.cost_ms for f in model.fields if f.level == "request")
            + prep.n_cand * float(np.mean([f.cost_ms for f in item_fields])))
        batch = prep.splits["test"].take([0])
        with torch.no_grad():
            cache = model.item_vectors(batch)[0]
        rows.append(score(model, prep, f"two_tower_{width}", names, retrieval,
                          serving=TwoTowerServing(model, cache), config=f"output {width}"))
        log(f"  two-tower {width}: {_row_text(rows[-1])}")
    return rows


def run_mlps(prep: Prepared, out: Path, t_ref: float, log=print) -> list[dict[str, Any]]:
    """Hand-designed distilled MLPs (3 sizes × all / cheap fields) and the all-features MLP without a teacher."""
    cost_scale = prep.config.latency.cost_scale
    sets = {"all": [f.name for f in prep.fields], "cheap": cheap_fields(prep.fields, prep.n_cand, 0.5 * t_ref,
                                                                        cost_scale)}
    rows = []
    for set_name, names in sets.items():
        for size, widths in SIZES.items():
            model = train_student(prep, names, widths, out / f"mlp_{size}_{set_name}")
            rows.append(score(model, prep, f"mlp_kd_{size}_{set_name}", names, _retrieval(prep, names),
                              _predict(prep, names, widths), config=f"{size} {widths}, {set_name} fields"))
            log(f"  distilled MLP {size}/{set_name}: {_row_text(rows[-1])}")
    names = sets["all"]
    model = train_student(prep, names, SIZES["M"], out / "mlp_all_nokd", LossWeights(bce=1.0, kd=0.0), "auc")
    rows.append(score(model, prep, "mlp_all_features", names, _retrieval(prep, names),
                      _predict(prep, names, SIZES["M"]), config="M, all fields, clicks only"))
    log(f"  all-features MLP (no KD): {_row_text(rows[-1])}")
    return rows


def _row_text(row: dict[str, Any]) -> str:
    pred = f" (predicted {row['predicted_ms']:.2f})" if row.get("predicted_ms") else ""
    return (f"latency {row['latency_p50_ms']:.2f} ms{pred}, AUC {row['auc']:.4f}, overlap@10 {row['overlap@10']:.3f}, "
            f"{row['n_fields']} fields")


# ---- entry points --------------------------------------------------------------------------------------------


def train_preranking(config: PrerankRunConfig, out: str | Path, log=print) -> dict[str, Any]:
    """`rankstack train preranking`: one AutoFAS student under `config.budget_ms`."""
    if config.budget_ms <= 0:
        raise ConfigError("set a positive latency budget: --budget-ms X (or `budget_ms` in the config)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    prep = prepare(config, out, log)
    prep.table.save(out / "latency_fit.json")
    row = train_autofas(prep, config.budget_ms, out / "autofas", log)
    result = {"autofas": row, "references": prep.teacher["test"], "device": prep.table.device,
              "latency_fit": prep.table.fit}
    save_json(result, out / "results.json")
    return result


def bench_preranking(config: PrerankRunConfig, out: str | Path, log=print,
                     only: tuple[str, ...] = ("cold", "two_tower", "mlp", "autofas")) -> dict[str, Any]:
    """`rankstack bench preranking`: baselines, T_ref, AutoFAS at each budget; pareto.csv + plots + JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "config.yaml")
    start = time.perf_counter()
    prep = prepare(config, out, log)
    prep.table.save(out / "latency_fit.json")
    rows: list[dict[str, Any]] = []
    cold = run_cold(prep, out / "cold", log)
    rows += cold
    cold_all = next(r for r in cold if r["n_fields"] == len(prep.fields))
    t_ref = 0.5 * cold_all["latency_p50_ms"]
    log(f"T_ref = 0.5 × COLD-all latency = {t_ref:.2f} ms")
    if "two_tower" in only:
        rows += run_two_tower(prep, out / "two_tower", log)
    if "mlp" in only:
        rows += run_mlps(prep, out / "mlp", t_ref, log)
    if "autofas" in only:
        for factor in config.budget_factors:
            budget = factor * t_ref
            log(f"AutoFAS at {factor} × T_ref = {budget:.2f} ms")
            row = train_autofas(prep, budget, out / f"autofas_{factor:g}", log)
            row["config"] = f"{factor:g} × T_ref"
            rows.append(row)
            log(f"  autofas {factor:g}: {_row_text(row)}; measured/budget {row['budget_ratio']:.2f}")
    result = {"t_ref_ms": t_ref, "device": prep.table.device, "threads": config.latency.threads,
              "n_cand": prep.n_cand, "requests": {s: v.num_requests for s, v in prep.splits.items()},
              "latency_fit": prep.table.fit, "references": prep.teacher["test"], "rows": rows,
              "wall_s": time.perf_counter() - start, "config": dataclasses.asdict(config)}
    save_json(result, out / "results.json")
    write_pareto(rows, prep.teacher["test"], out)
    return result


PARETO_COLUMNS = ("model", "config", "budget_ms", "latency_p50_ms", "latency_p99_ms", "retrieval_ms", "infer_p50_ms",
                  "predicted_ms", "auc", "gauc", "overlap@10", "overlap@20", "true_overlap@10", "click_recall@10",
                  "n_fields", "params")


def write_pareto(rows: list[dict[str, Any]], refs: dict[str, dict[str, float]], out: Path) -> None:
    with open(out / "pareto.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, PARETO_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"autofas": "AutoFAS", "cold": "COLD", "two_tower": "two-tower", "mlp_kd": "distilled MLP",
                "mlp_all_features": "all-features MLP"}
    for metric, name in (("auc", "pareto_auc_latency.png"), ("overlap@10", "pareto_overlap_latency.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for prefix, label in families.items():
            pts = sorted((r["latency_p50_ms"], r[metric]) for r in rows if r["model"].startswith(prefix))
            if pts:
                ax.plot(*zip(*pts), marker="o", linestyle="-" if prefix == "autofas" else "none", label=label)
        for ref, style in (("teacher", "--"), ("bayes", ":")):
            if ref in refs and metric in refs[ref]:
                ax.axhline(refs[ref][metric], linestyle=style, color="grey", label=ref)
        ax.set_xscale("log")
        ax.set_xlabel("latency per request, p50 (ms): simulated retrieval + measured inference")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
