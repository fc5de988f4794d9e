"""`generate(config, seed, out)`: write a whole synthetic city to a folder (world.md §1).

Layout of `out/`:

    world.yaml                       seed + the resolved WorldConfig
    tables/pois.parquet              POIs: name, categories, brand, price, rating, coordinates, district, hours,
                                     stated attributes, description
    tables/users.parquet             users: home, work, age band, income band, loyalty band
    tables/visits.parquet            the behaviour log: user, POI, time, user location, action, session, request
    tables/queries.parquet           the query bank: id, text, intent type
    truth/                           latent state, read only by evaluation and `rankstack.world.truth`:
        users.parquet                  preferences over categories and brands, price taste and sensitivity, bias
        pois.parquet                   latent quality and the true attribute set
        queries.parquet                each query's intent category and parsed constraints
        requests.parquet               each ranking request's context and latent intent
    ranking/                         rankstack dataset of impressions (train/valid/test by request time)
        truth/{train,valid,test}.parquet   row-aligned: request_id, poi_id, position, p_click, p_cvr, p_order and
                                           the click logit's terms `logit_<mechanism>`
        truth/fields.json                  informative / weak / noise / duplicate / proxy feature fields
    relevance/                       rankstack dataset in `relevance_schema` format (splits by query hash)
        rules.json                     the rule table the gold steps cite
    next_poi/                        rankstack dataset of next-POI samples (per-user temporal split)
        truth/test.parquet             the oracle: top-50 POIs and probabilities per test sample

Generation is streamed: users are simulated `chunk_users` at a time and every file is written in fixed-size row
groups as it goes, so memory is bounded by a chunk. All per-user randomness is keyed (`KeyedRandom`) and row
groups have fixed sizes, so the files are byte-identical for one (config, seed) whatever `chunk_users` is.
The folder appears atomically: everything is written to a temporary sibling that is renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankstack.config import dump_yaml
from rankstack.data.dataset import DatasetWriter, arrow_schema
from rankstack.data.formats import relevance_schema
from rankstack.errors import DataError
from rankstack.world import city
from rankstack.world.behaviour import Events, Impressions, Requests, World, organic_events, sort_events
from rankstack.world.config import WorldConfig
from rankstack.world.features import FeatureBuilder, field_kinds, query_keys, ranking_schema
from rankstack.world.mechanisms import CLICK_TERMS
from rankstack.world.next_poi import next_poi_samples, next_poi_schema, oracle
from rankstack.world.places import Pois, make_districts, make_pois, make_users, to_latlon
from rankstack.world.relevance import RULES, Query, category_path, make_queries, relevance_pairs

SPLITS = ("train", "valid", "test")
RANKING_ROW_GROUP = 16384  # ranking rows carry 120-event sequences; small groups keep the buffers small
ROW_GROUP = 65536
FEATURE_BATCH = 8192


def generate(config: WorldConfig, seed: int, out: Path | str, overwrite: bool = False) -> Path:
    """Generate the world of (`config`, `seed`) into the new folder `out`; returns `out`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; choose a new --out folder or remove it first.")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tables").mkdir(parents=True)
    (tmp / "truth").mkdir()
    try:
        _generate(config, seed, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _generate(config: WorldConfig, seed: int, root: Path) -> None:
    rng_places = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    districts = make_districts(config, rng_places)
    pois = make_pois(config, districts, rng_places)
    users = make_users(config, districts, seed)
    queries = make_queries(config, pois, districts, np.random.default_rng(np.random.SeedSequence([seed, 2])))
    query_ids_by_cat = [np.array([q.num for q in queries if q.cat == c], dtype=np.int64)
                        for c in range(len(city.CATEGORIES))]
    world = World(config, seed, districts, pois, users, query_ids_by_cat)

    dump_yaml({"seed": seed, "config": config}, root / "world.yaml")
    _write_static_tables(root, world, queries)
    _write_relevance(root / "relevance", config, queries, pois, world,
                     np.random.default_rng(np.random.SeedSequence([seed, 4])))

    schema = ranking_schema(config, seed)
    kinds = field_kinds(config)
    proxies = {name: kind.split(":", 1)[1] for name, kind in kinds.items() if kind.startswith("proxy:")}
    correlation = {name: _Correlation() for name in proxies}
    ranking = DatasetWriter(root / "ranking", schema, row_group_size=RANKING_ROW_GROUP)
    next_poi = DatasetWriter(root / "next_poi", next_poi_schema())
    (ranking.path / "truth").mkdir()
    (next_poi.path / "truth").mkdir()
    ranking_arrow = arrow_schema(schema)
    next_poi_arrow = arrow_schema(next_poi.schema)
    sinks = {
        **{("ranking", s): _Sink(lambda t, s=s: ranking.write(s, t), RANKING_ROW_GROUP) for s in SPLITS},
        **{("ranking_truth", s): _ParquetSink(ranking.path / "truth" / f"{s}.parquet", RANKING_ROW_GROUP)
           for s in SPLITS},
        **{("next_poi", s): _Sink(lambda t, s=s: next_poi.write(s, t), ROW_GROUP) for s in SPLITS},
        ("oracle", "test"): _ParquetSink(next_poi.path / "truth" / "test.parquet", 4096),
        ("visits", ""): _ParquetSink(root / "tables" / "visits.parquet", ROW_GROUP),
        ("requests", ""): _ParquetSink(root / "truth" / "requests.parquet", ROW_GROUP),
    }
    try:
        for lo in range(0, config.n_users, config.chunk_users):
            chunk = np.arange(lo, min(lo + config.chunk_users, config.n_users))
            steps, views = world.sessions(chunk)
            organic = sort_events(organic_events(steps, views))
            req = world.requests(chunk, steps, views, organic)
            imp = world.impressions(req)
            events = sort_events(Events.concat([organic, world.clicked_events(req, imp)]))
            sinks[("visits", "")].add(_table(_visit_columns(world, events)))
            split = np.where(req.time < config.train_end_s, "train",
                             np.where(req.time < config.valid_end_s, "valid", "test"))
            sinks[("requests", "")].add(_table(_request_columns(req, split)))
            builder = FeatureBuilder(world, chunk, events)
            for name in SPLITS:
                rows = np.flatnonzero(split[imp.req] == name)
                for start in range(0, len(rows), FEATURE_BATCH):  # sequences make rows wide: bound the batch
                    part = _take_impressions(imp, rows[start:start + FEATURE_BATCH])
                    columns = builder.rows(req, part)
                    sinks[("ranking", name)].add(_table(columns, ranking_arrow))
                    sinks[("ranking_truth", name)].add(_table(_truth_columns(req, part)))
                    if name == "train":
                        for proxy, costly in proxies.items():
                            correlation[proxy].add(columns[proxy], columns[costly])
            samples, test_steps, test_ids = next_poi_samples(world, steps)
            for name in SPLITS:
                sinks[("next_poi", name)].add(_table(samples[name], next_poi_arrow))
            sinks[("oracle", "test")].add(_table(oracle(world, test_steps, test_ids)))
        for sink in sinks.values():
            sink.close()
        fields = _fields_json(schema, kinds, {p: (proxies[p], correlation[p].value()) for p in proxies})
        (ranking.path / "truth" / "fields.json").write_text(json.dumps(fields, indent=1))
        ranking.close()
        next_poi.close()
    except BaseException:
        ranking.abort()
        next_poi.abort()
        raise


# ---- writing helpers -----------------------------------------------------------------------------------------


def _table(columns: dict[str, object], schema: pa.Schema | None = None) -> pa.Table:
    """A table from NumPy arrays / Arrow arrays, cast to `schema` when given."""
    if schema is None:
        return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()})
    arrays = []
    for f in schema:
        v = columns[f.name]
        arrays.append((v if isinstance(v, pa.Array) else pa.array(v)).cast(f.type))
    return pa.table(arrays, schema=schema)


class _Sink:
    """Buffers tables and hands them on in slices of exactly `rows` rows (the last one shorter), so the row
    groups of a file, and hence its bytes, do not depend on how the rows were chunked."""

    def __init__(self, write: Callable[[pa.Table], None], rows: int) -> None:
        self._write = write
        self._rows = rows
        self._parts: list[pa.Table] = []
        self._buffered = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._parts.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self._rows:
            merged = pa.concat_tables(self._parts)
            self._write(merged.slice(0, self._rows).combine_chunks())
            rest = merged.slice(self._rows)
            self._parts, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self._buffered:
            self._write(pa.concat_tables(self._parts).combine_chunks())
        self._parts, self._buffered = [], 0


class _ParquetSink(_Sink):
    """A `_Sink` into one Parquet file (its schema is the first table's)."""

    def __init__(self, path: Path, rows: int) -> None:
        self._path = path
        self._writer: pq.ParquetWriter | None = None
        super().__init__(self._write_table, rows)

    def _write_table(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table, row_group_size=self._rows)

    def close(self) -> None:
        super().close()
        if self._writer is not None:
            self._writer.close()


class _Correlation:
    """Streaming Pearson correlation."""

    def __init__(self) -> None:
        self.sums = np.zeros(6)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.sums += (len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())

    def value(self) -> float:
        n, sx, sy, sxx, syy, sxy = self.sums
        if n < 2:
            return float("nan")
        cov = sxy / n - sx / n * sy / n
        return float(cov / np.sqrt(max(sxx / n - (sx / n) ** 2, 1e-12) * max(syy / n - (sy / n) ** 2, 1e-12)))


# ---- tables ---------------------------------------------------------------------------------------------------


def _write_static_tables(root: Path, world: World, queries: list[Query]) -> None:
    pois, users, districts = world.pois, world.users, world.districts
    lat, lon = to_latlon(pois.x, pois.y)
    stated = pois.attrs & pois.recorded
    attr_names = np.array(city.ATTRIBUTES)
    brand_names = np.array([""] + [b[0] for b in city.BRANDS])
    pq.write_table(pa.table({
        "poi_id": np.arange(1, len(pois) + 1),
        "name": pois.names,
        "category_l1": np.array([city.CATEGORIES[c].l1 for c in pois.cat]),
        "category_l2": np.array(city.CAT_L2)[pois.cat],
        "category_l1_id": city.L1_OF_L2[pois.cat] + 1,
        "category_l2_id": pois.cat + 1,
        "brand": brand_names[pois.brand],
        "brand_id": pois.brand,
        "price_level": pois.price,
        "rating": pois.rating,
        "review_count": pois.reviews.astype(np.int64),
        "lat": lat, "lon": lon, "x_km": pois.x, "y_km": pois.y,
        "district": np.array(districts.names)[pois.district],
        "district_id": pois.district + 1,
        "open_hour": pois.open_hour, "close_hour": pois.close_hour,
        "attributes": [attr_names[row].tolist() for row in stated],
        "attributes_unstated": [attr_names[~row].tolist() for row in pois.recorded],
        "indoor": city.INDOOR[pois.cat].astype(bool),
        "description": pois.descriptions,
    }), root / "tables" / "pois.parquet")
    pq.write_table(pa.table({
        "poi_id": np.arange(1, len(pois) + 1),
        "quality": pois.quality,
        "attributes_true": [attr_names[row].tolist() for row in pois.attrs],
    }), root / "truth" / "pois.parquet")
    home_lat, home_lon = to_latlon(users.home_x, users.home_y)
    work_lat, work_lon = to_latlon(users.work_x, users.work_y)
    pq.write_table(pa.table({
        "user_id": np.arange(1, len(users) + 1),
        "home_lat": home_lat, "home_lon": home_lon, "work_lat": work_lat, "work_lon": work_lon,
        "home_x_km": users.home_x, "home_y_km": users.home_y, "work_x_km": users.work_x, "work_y_km": users.work_y,
        "age_band": np.array(city.AGE_BANDS)[users.age], "income_band": users.income, "loyalty_band": users.loyalty,
    }), root / "tables" / "users.parquet")
    pq.write_table(pa.table({
        "user_id": np.arange(1, len(users) + 1),
        "cat_pref": pa.array(list(users.cat_pref), type=pa.list_(pa.float64())),
        "brand_pref": pa.array(list(users.brand_pref), type=pa.list_(pa.float64())),
        "pref_price": users.pref_price, "price_sens": users.price_sens, "bias": users.bias,
        "activity": users.activity,
    }), root / "truth" / "users.parquet")
    pq.write_table(pa.table({
        "query_id": [q.query_id for q in queries],
        "text": [q.text for q in queries],
        "intent_type": [q.intent_type for q in queries],
        "is_hard": [q.is_hard for q in queries],
    }), root / "tables" / "queries.parquet")
    pq.write_table(pa.table({
        "query_id": [q.query_id for q in queries],
        "category_l1_id": [int(city.L1_OF_L2[q.cat]) + 1 for q in queries],
        "category_l2_id": [q.cat + 1 for q in queries],
        "intent": [category_path(q.cat) for q in queries],
        "constraints": [json.dumps(q.constraints) for q in queries],
    }), root / "truth" / "queries.parquet")


def _write_relevance(out: Path, config: WorldConfig, queries: list[Query], pois: Pois, world: World,
                     rng: np.random.Generator) -> None:
    schema = relevance_schema("world-relevance")
    pairs = relevance_pairs(config, queries, pois, world.districts, rng)
    missing = [s for s in SPLITS if s not in pairs]
    if missing:
        raise DataError(f"the query bank of {config.n_queries} queries leaves split `{missing[0]}` of the relevance "
                        "dataset empty; raise `n_queries`.")
    with DatasetWriter(out, schema) as writer:
        for name in SPLITS:
            writer.write(name, _table(pairs[name], arrow_schema(schema)))
        (writer.path / "rules.json").write_text(json.dumps(RULES, indent=1))


def _visit_columns(world: World, ev: Events) -> dict[str, object]:
    lat, lon = to_latlon(ev.x, ev.y)
    return {"user_id": ev.user + 1, "poi_id": ev.poi + 1, "timestamp": ev.time, "lat": lat, "lon": lon,
            "x_km": ev.x, "y_km": ev.y, "action": np.array(city.ACTIONS)[ev.action - 1], "action_id": ev.action,
            "session_id": ev.sid, "request_id": ev.request_id}


def _request_columns(req: Requests, split: np.ndarray) -> dict[str, object]:
    return {"request_id": req.request_id, "user_id": req.user + 1, "timestamp": req.time, "hour": req.hour,
            "weekday": req.weekday, "weather": req.weather, "x_km": req.x, "y_km": req.y,
            "intent_category_l2_id": req.intent + 1, "session_id": req.sid, "query_id": query_keys(req.query_id),
            "session_events": req.session_events, "split": split}


def _take_impressions(imp: Impressions, rows: np.ndarray) -> Impressions:
    return Impressions(imp.req[rows], imp.poi[rows], imp.position[rows], {k: v[rows] for k, v in imp.terms.items()},
                       imp.p_click[rows], imp.p_cvr[rows], imp.click[rows], imp.order[rows])


def _truth_columns(req: Requests, imp: Impressions) -> dict[str, object]:
    cols: dict[str, object] = {"request_id": req.request_id[imp.req], "poi_id": imp.poi + 1,
                               "position": imp.position, "p_click": imp.p_click, "p_cvr": imp.p_cvr,
                               "p_order": imp.p_click * imp.p_cvr}
    cols.update({f"logit_{name}": imp.terms[name] for name in CLICK_TERMS})
    return cols


def _fields_json(schema, kinds: dict[str, str], proxies: dict[str, tuple[str, float]]) -> dict[str, object]:
    features = [c.name for c in schema.columns if c.is_feature]
    by_kind: dict[str, object] = {
        "informative": [n for n in features if kinds.get(n) == "informative"],
        "costly_informative": [n for n in features if kinds.get(n) == "informative"
                               and schema.column(n).role == "cross"
                               and schema.column(n).cost_ms >= 0.005],
        "weak": [n for n in features if kinds.get(n) == "weak"],
        "noise": [n for n in features if kinds.get(n) == "noise"],
        "duplicates": {n: kinds[n].split(":", 1)[1] for n in features if kinds.get(n, "").startswith("duplicate:")},
        "proxies": {n: {"of": of, "corr": round(corr, 4)} for n, (of, corr) in proxies.items()},
    }
    return by_kind

