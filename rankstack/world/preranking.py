"""The pre-ranking view of a generated world: requests with `n_cand` candidates each (autofas.md §2, §8).

The ranking dataset holds only what was displayed (`candidates_per_request` POIs per request). A pre-ranker
scores many more: for a sample of each split's requests this module writes every displayed POI plus
`n_cand - displayed` further candidates from a retrieval-like sampler (nearby, well rated, the session's
category favoured; the same kind of sampler the logging system uses, see `World.retrieval_utility`), with the
ranking dataset's non-sequence feature columns computed exactly as the generator computes them (the same
`FeatureBuilder`, from the behaviour log before the request), so the displayed rows of the view equal the
ranking rows. Non-displayed candidates have no click (`shown` = 0); the true click probability of every
candidate (as if shown at the top) is in `truth/`, for evaluation only.

Layout of `out/` (an ordinary rankstack dataset, read with `Dataset.open`):

    schema.yaml                  the ranking schema without behaviour sequences and `position`, plus the meta
                                 columns `shown` (0/1) and `shown_position` (1..10, 0 when not displayed)
    {train,valid,test}.parquet   requests × candidates, each request's `n_cand` rows contiguous
    vocab/                       the ranking dataset's vocabularies (built from its train split), so a ranking
                                 model trained on `ranking/` reads the view with the same ids
    truth/{split}.parquet        row-aligned: request_id, poi_id, p_click (position 1)
    truth/fields.json            copied from the ranking dataset (informative / noise / proxy fields)
    view.json                    n_cand, requests per split, seed

`behaviour sequences` are left out: they would make the view 100× larger (120 events × 7 columns per
candidate row); the pre-ranker and its teacher use the per-field features (docs/preranking.md says so).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankstack.config import from_dict, read_yaml
from rankstack.data.dataset import DatasetWriter, arrow_schema
from rankstack.data.schema import SEQUENCE_ROLES, ColumnSpec, Schema
from rankstack.data.vocab import Vocabulary
from rankstack.errors import DataError
from rankstack.world.behaviour import Events, Impressions, Requests, World, sort_events
from rankstack.world.config import WorldConfig
from rankstack.world.features import FeatureBuilder
from rankstack.world.places import make_districts, make_pois, make_users
from rankstack.world.truth import WorldTruth

SPLITS = ("train", "valid", "test")
INTENT_BONUS = 1.0  # the sampler's preference for the session's category (retrieval knows the query / context)
REQUEST_BATCH = 64


def view_schema(ranking: Schema) -> Schema:
    """The ranking schema without sequences and `position`, plus `shown` and `shown_position`."""
    cols = [c for c in ranking.columns if c.role not in SEQUENCE_ROLES and c.name != "position"]
    at = next(i for i, c in enumerate(cols) if c.role == "label")
    extra = [ColumnSpec("shown", "numeric", "meta", description="1 if the logging system displayed the candidate"),
             ColumnSpec("shown_position", "numeric", "meta", dtype="int64",
                        description="displayed position (1 = top), 0 if not displayed")]
    return replace(ranking, name="world-preranking", columns=cols[:at] + extra + cols[at:],
                   description="synthetic city: pre-ranking requests × candidates (rankstack.world.preranking)")


def build_preranking_view(world_dir: str | Path, out: str | Path, n_cand: int = 200,
                          requests: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write the pre-ranking view of the world in `world_dir` to the new folder `out`; returns `out`.

    requests: requests sampled per split (default train 2000, valid 300, test 500; fewer if the split has fewer).
    """
    world_dir, out = Path(world_dir), Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; choose a new folder for the pre-ranking view or remove it.")
    meta_path = world_dir / "world.yaml"
    if not meta_path.is_file():
        raise DataError(f"{world_dir} has no world.yaml; point at a folder written by `rankstack world generate`.")
    meta = read_yaml(meta_path)
    world_seed = int(meta["seed"])
    config = from_dict(WorldConfig, meta["config"], where=str(meta_path))
    if n_cand <= config.candidates_per_request:
        raise DataError(f"n_cand ({n_cand}) must exceed the displayed candidates per request "
                        f"({config.candidates_per_request}).")
    if n_cand > config.n_pois:
        raise DataError(f"n_cand ({n_cand}) exceeds the world's {config.n_pois} POIs; lower n_cand.")
    wanted = {"train": 2000, "valid": 300, "test": 500, **(requests or {})}
    ranking_dir = world_dir / "ranking"
    ranking = Schema.load(ranking_dir)
    schema = view_schema(ranking)

    rng_places = np.random.default_rng(np.random.SeedSequence([world_seed, 1]))
    districts = make_districts(config, rng_places)
    pois = make_pois(config, districts, rng_places)
    world = World(config, world_seed, districts, pois, make_users(config, districts, world_seed), [])
    truth = WorldTruth(world_dir)
    req_table = pq.read_table(world_dir / "truth" / "requests.parquet")
    visits = pq.read_table(world_dir / "tables" / "visits.parquet")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(tmp, schema, row_group_size=n_cand * REQUEST_BATCH)
    (writer.path / "truth").mkdir(parents=True, exist_ok=True)
    arrow = arrow_schema(schema)
    counts = {}
    try:
        for split_index, split in enumerate(SPLITS):
            shown = pq.read_table(ranking_dir / f"{split}.parquet",
                                  columns=["request_id", "poi_id", "position", "click", "order"])
            ids = np.unique(shown.column("request_id").to_numpy())
            pick = np.random.default_rng([seed, split_index]).permutation(len(ids))[:wanted[split]]
            ids = np.sort(ids[pick])
            counts[split] = len(ids)
            truth_parts = []
            for lo in range(0, len(ids), REQUEST_BATCH):
                part = ids[lo:lo + REQUEST_BATCH]
                cols, rows_truth = _view_rows(world, truth, req_table, visits, shown, part, n_cand)
                writer.write(split, pa.table([pa.array(cols[f.name]).cast(f.type) if not isinstance(
                    cols[f.name], pa.Array) else cols[f.name].cast(f.type) for f in arrow], schema=arrow))
                truth_parts.append(pa.table(rows_truth))
            pq.write_table(pa.concat_tables(truth_parts), writer.path / "truth" / f"{split}.parquet",
                           row_group_size=n_cand * REQUEST_BATCH)
        shutil.copy(ranking_dir / "truth" / "fields.json", writer.path / "truth" / "fields.json")
        (writer.path / "view.json").write_text(json.dumps(
            {"world": str(world_dir), "n_cand": n_cand, "requests": counts, "seed": seed}, indent=1))
        written = writer.close()
        # The ranking dataset's vocabulary (built over its full schema) replaces the one the writer built from the
        # view, so ids and numeric buckets are identical for models trained on `ranking/`.
        shutil.rmtree(written / "vocab")
        Vocabulary.build(ranking, [ranking_dir / "train.parquet"]).save(written / "vocab")
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out)
    return out


def _view_rows(world: World, truth: WorldTruth, req_table: pa.Table, visits: pa.Table, shown: pa.Table,
               request_ids: np.ndarray, n_cand: int) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Feature columns and truth of `request_ids` (sorted) × their `n_cand` candidates."""
    req = _requests(req_table, request_ids)
    users = np.unique(req.user)
    in_chunk = np.isin(visits.column("user_id").to_numpy() - 1, users)
    builder = FeatureBuilder(world, users, _events(visits.filter(pa.array(in_chunk))))

    sid = shown.column("request_id").to_numpy()
    mask = np.isin(sid, request_ids)
    s_req = np.searchsorted(request_ids, sid[mask])
    s_poi = shown.column("poi_id").to_numpy()[mask] - 1
    s_pos = shown.column("position").to_numpy()[mask]
    s_click = shown.column("click").to_numpy()[mask]
    s_order = shown.column("order").to_numpy()[mask]

    # Further candidates: Gumbel top-k over every POI of the retrieval utility (never a displayed one).
    n_pois = len(world.pois.cat)
    all_pois = np.arange(n_pois)
    utility = world.retrieval_utility(req.context().column(), all_pois[None, :])
    utility = utility + INTENT_BONUS * (world.pois.cat[None, :] == req.intent[:, None])
    gumbel = -np.log(-np.log(world.rng.uniform("prerank_candidate", req.request_id[:, None], all_pois[None, :])))
    score = utility + gumbel
    score[s_req, s_poi] = -np.inf
    n_shown = np.bincount(s_req, minlength=len(request_ids))
    order = np.argsort(-score, axis=1, kind="stable")
    rows, pois, pos, click, order_label = [s_req], [s_poi], [s_pos], [s_click], [s_order]
    for r in range(len(request_ids)):
        extra = order[r, :n_cand - n_shown[r]]
        rows.append(np.full(len(extra), r))
        pois.append(extra)
        pos.append(np.zeros(len(extra), dtype=np.int64))
        click.append(np.zeros(len(extra), dtype=np.float32))
        order_label.append(np.zeros(len(extra), dtype=np.float32))
    row, poi, position = np.concatenate(rows), np.concatenate(pois), np.concatenate(pos)
    # Per request: the displayed candidates in position order, then the sampled ones in sampler order.
    sort = np.lexsort((np.where(position > 0, position, n_cand + np.arange(len(row))), row))
    row, poi, position = row[sort], poi[sort], position[sort]
    clicks, orders = np.concatenate(click)[sort], np.concatenate(order_label)[sort]
    imp = Impressions(row, poi, np.ones(len(row), dtype=np.int64), {}, np.zeros(len(row)), np.zeros(len(row)),
                      clicks > 0, orders > 0)
    cols = builder.rows(req, imp, sequences=False)
    cols["shown"] = (position > 0).astype(np.float32)
    cols["shown_position"] = position.astype(np.int64)
    rid = req.request_id[row]
    return cols, {"request_id": rid, "poi_id": poi + 1, "p_click": truth.click_probability(rid, poi + 1)}


def _requests(table: pa.Table, request_ids: np.ndarray) -> Requests:
    """The world's `Requests` of `request_ids`, rebuilt from truth/requests.parquet."""
    all_ids = table.column("request_id").to_numpy()
    order = np.argsort(all_ids)
    rows = order[np.searchsorted(all_ids, request_ids, sorter=order)]
    col = {name: table.column(name).to_numpy(zero_copy_only=False)[rows] for name in table.column_names}
    query = np.array([int(q[1:]) if q else 0 for q in col["query_id"]], dtype=np.int64)
    intent = col["intent_category_l2_id"] - 1
    return Requests(request_id=col["request_id"], user=col["user_id"] - 1, time=col["timestamp"],
                    hour=col["hour"], weekday=col["weekday"], weather=col["weather"], x=col["x_km"], y=col["y_km"],
                    intent=intent, sid=col["session_id"], session_events=col["session_events"], query_id=query,
                    query_cat=np.where(query > 0, intent, -1))


def _events(visits: pa.Table) -> Events:
    c = {name: visits.column(name).to_numpy() for name in
         ("user_id", "timestamp", "poi_id", "action_id", "x_km", "y_km", "session_id", "request_id")}
    return sort_events(Events(c["user_id"] - 1, c["timestamp"], c["poi_id"] - 1, c["action_id"], c["x_km"],
                              c["y_km"], c["session_id"], c["request_id"]))

