"""Next-POI retrieval samples and their oracle (geogr.md §2, world.md §3).

A sample is one physical visit (a completed step: `order` or `navigate`) of a user, predicted from the user's
earlier physical visits (up to 50: POI, category, hour) and the context at the visit: hour, weekday, and where
the user set off from. The target is stored as the item column `target_poi_id` with a constant `label` of 1
(the data contract's labels are numeric). Splits are per user and temporal: of a user's samples, the first 80 %
are train, the next 10 % valid and the last 10 % test (users with fewer than 3 samples are train only).

The oracle (`next_poi/truth/test.parquet`) is the exact distribution the generator drew each test target from:
P(poi) = P(category | step) · P(poi | category, origin, hour, user), where P(category | step) is the session-start
intent distribution on a session's first step and the chain's transition row on later steps. Its top 50 give
the best achievable Acc@K (in expectation).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rankstack.data.schema import ColumnSpec, Schema
from rankstack.world import city
from rankstack.world.behaviour import Steps, World, ranks
from rankstack.world.features import list_rows
from rankstack.world.places import grid_cell, to_latlon

HISTORY_LEN = 50
ORACLE_TOP = 50


def next_poi_schema() -> Schema:
    cols = [
        ColumnSpec("sample_id", "categorical", "key"),
        ColumnSpec("user_id", "categorical", "key"),
        ColumnSpec("timestamp", "numeric", "meta", dtype="int64", description="time of the target visit"),
        ColumnSpec("hist_poi_id", "sequence", "history", max_len=HISTORY_LEN, embedding_group="poi_id"),
        ColumnSpec("hist_category_l2", "sequence", "history", max_len=HISTORY_LEN, embedding_group="category_l2"),
        ColumnSpec("hist_hour", "sequence", "history", max_len=HISTORY_LEN, embedding_group="hour"),
        ColumnSpec("hour", "categorical", "context"),
        ColumnSpec("weekday", "categorical", "context"),
        ColumnSpec("user_lat", "numeric", "context", num_buckets=16, description="where the user set off from"),
        ColumnSpec("user_lon", "numeric", "context", num_buckets=16),
        ColumnSpec("user_grid", "categorical", "context", embedding_group="grid"),
        ColumnSpec("target_poi_id", "categorical", "item", embedding_group="poi_id", description="the visited POI"),
        ColumnSpec("label", "numeric", "label", description="always 1: the target is the positive"),
    ]
    return Schema(name="world-next-poi", columns=cols, group_key="user_id", request_key="sample_id",
                  description="synthetic city: next-POI retrieval samples (rankstack world, geogr.md §2)")


def next_poi_samples(world: World, steps: Steps) -> tuple[dict[str, dict[str, object]], Steps, np.ndarray]:
    """Samples of one chunk by split, plus the test samples' steps and sample ids (for the oracle)."""
    visits = steps.take(np.flatnonzero(steps.completed))
    visits = visits.take(np.lexsort((visits.final_time, visits.user)))
    rank = ranks(visits.user)  # index of the visit in the user's visit list
    n_user = np.bincount(np.searchsorted(np.unique(visits.user), visits.user))
    total = np.repeat(n_user, n_user)
    target = np.flatnonzero(rank >= 1)  # a sample needs at least one earlier visit
    n_samples = total[target] - 1
    i = rank[target] - 1  # index among the user's samples
    n_eval = np.where(n_samples >= 3, np.maximum(1, np.rint(0.1 * n_samples)), 0).astype(np.int64)
    split = np.where(i >= n_samples - n_eval, "test", np.where(i >= n_samples - 2 * n_eval, "valid", "train"))
    start = target - np.minimum(rank[target], HISTORY_LEN)
    length = target - start
    cat = visits.cat
    hour_of_visit = (visits.final_time % 86400) // 3600
    lat, lon = to_latlon(visits.x[target], visits.y[target])
    sample_id = (visits.user[target] + 1) * 100000 + rank[target]
    columns = {
        "sample_id": sample_id, "user_id": visits.user[target] + 1, "timestamp": visits.final_time[target],
        "hist_poi_id": list_rows(visits.final_poi + 1, start, length),
        "hist_category_l2": list_rows(cat + 1, start, length),
        "hist_hour": list_rows(hour_of_visit, start, length),
        "hour": hour_of_visit[target], "weekday": (visits.final_time[target] // 86400) % 7,
        "user_lat": lat, "user_lon": lon, "user_grid": grid_cell(visits.x[target], visits.y[target]),
        "target_poi_id": visits.final_poi[target] + 1, "label": np.ones(len(target), dtype=np.float32),
    }
    out = {}
    for name in ("train", "valid", "test"):
        rows = np.flatnonzero(split == name)
        out[name] = {k: (v.take(pa.array(rows)) if isinstance(v, pa.Array) else v[rows]) for k, v in columns.items()}
    test = target[split == "test"]
    return out, visits.take(test), sample_id[split == "test"]


def oracle(world: World, steps: Steps, sample_id: np.ndarray) -> dict[str, object]:
    """Top-50 POIs and probabilities of the true next-visit distribution of each test sample."""
    n_pois = len(world.pois)
    batch = max(1, (1 << 22) // n_pois)
    top_ids, top_p, target_p = [], [], []
    for lo in range(0, len(sample_id), batch):
        part = steps.take(np.arange(lo, min(lo + batch, len(sample_id))))
        ctx = part.context()
        first = part.k == 0
        walk = world.chain_walk(part.k)
        p_cat = np.where(first[:, None], world.intent_probs(ctx), city.CHAIN_MATRIX[np.maximum(part.prev_cat, 0)])
        p_cat = p_cat / p_cat.sum(axis=1, keepdims=True)
        dist = np.zeros((len(part.k), n_pois))
        for c in np.flatnonzero(p_cat.sum(axis=0) > 0):
            dist[:, world.by_cat[c]] = p_cat[:, c, None] * world.within_category_probs(ctx, int(c), walk)
        top = np.argpartition(-dist, min(ORACLE_TOP, n_pois) - 1, axis=1)[:, :ORACLE_TOP]
        order = np.argsort(-np.take_along_axis(dist, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_ids.append(top + 1)
        top_p.append(np.take_along_axis(dist, top, axis=1))
        target_p.append(dist[np.arange(len(part.k)), part.final_poi])
    k = min(ORACLE_TOP, n_pois)
    ids = np.concatenate(top_ids) if top_ids else np.zeros((0, k), dtype=np.int64)
    probs = np.concatenate(top_p) if top_p else np.zeros((0, k))
    offsets = pa.array(np.arange(0, (len(ids) + 1) * k, k), type=pa.int32())
    return {
        "sample_id": sample_id,
        "target_poi_id": steps.final_poi + 1,
        "target_prob": np.concatenate(target_p) if target_p else np.zeros(0),
        "oracle_poi_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1), type=pa.int64())),
        "oracle_probs": pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1), type=pa.float64())),
    }
