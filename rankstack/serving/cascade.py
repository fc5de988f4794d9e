"""The cascade as a library object: feed and search requests through retrieval → pre-ranking → ranking
(→ relevance), with stage budgets from config and per-stage candidate counts and latencies in every answer.

    cascade = Cascade.load("runs/demo/dlrm")                    # reads <run>/serving/ (see `artifacts`)
    cascade.feed(user_id=17, context=Context(hour=12), k=10)
    cascade.search(user_id=17, query="sushi", context=Context(lat=31.2, lon=121.4, hour=19), k=10)

Feed: retrieval (GeoGR when the export holds a GeoGR run, with geo-nearest popular for users without a logged
visit; else geo-nearest popular for every user) →
pre-ranking → ranking → top K. Search: query-conditioned retrieval → pre-ranking → ranking → relevance (the TaoSR1
model when the export holds one, else the lexical baseline) tiers by CumPT (`rankstack.relevance.cumpt`) with the
stage's β: Bad results dropped, Mid demoted below Good, ranking order within a tier →
top K. Stages are the protocols of `rankstack.serving.stages`; which method runs, and whether it is a baseline,
is in each answer's `funnel`.

Problems with a request that validation cannot see (a cold-start user without a location, a point outside the
city, an unknown POI id) raise `RequestError`, which the HTTP layer answers with 422.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankstack.config import load_yaml
from rankstack.errors import ConfigError
from rankstack.relevance.cumpt import cumpt_tiers, expected_tier, page_tiers
from rankstack.serving.artifacts import Artifacts, load_artifacts, load_autofas, load_geogr, load_relevance
from rankstack.serving.features import OnlineFeatures, RequestContext, WorldTables, from_latlon
from rankstack.serving.stages import (
    AutoFASPreRanker,
    Candidates,
    CumPTRelevance,
    GeoGRFeedRetriever,
    GeoNearestPopular,
    LexicalGeoRetriever,
    LexicalRelevance,
    ModelRanker,
    ParsedQuery,
    PreRanker,
    QueryParser,
    Ranker,
    RelevanceScorer,
    RetrievalScoreTruncation,
    Retriever,
)
from rankstack.world import city
from rankstack.world.places import CITY_KM, to_latlon


class RequestError(ValueError):
    """A request the cascade cannot answer as asked; the message says what to change."""


@dataclass
class StageBudgets:
    """Candidates each stage hands on: retrieval → `retrieval`, pre-ranking → `preranking`; ranking scores all of
    the pre-ranker's survivors and the answer keeps the top K."""

    retrieval: int = 300
    preranking: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.preranking <= self.retrieval:
            raise ValueError(f"budgets need 1 <= preranking ({self.preranking}) <= retrieval ({self.retrieval})")


FEED_RETRIEVERS = ("auto", "geogr", "geo_nearest_popular")
PRERANKERS = ("auto", "autofas", "retrieval_score_truncation")
RELEVANCE_STAGES = ("auto", "cumpt", "lexical")


@dataclass
class CascadeConfig:
    """Serving configuration (YAML via `--config`; every key optional).

    feed, search: `StageBudgets` of each request kind.
    max_k: the largest K a request may ask for (larger → 422); default_k when it asks for none.
    bandwidth_km: h of the geo-popularity score in retrieval (log(1 + visits) − distance / h).
    objective: weight of each ranking task's probability in the ranking score (default p(click)).
    relevance: `auto` (the TaoSR1 model when the export holds one, `serving/relevance/`, else the lexical baseline),
        `cumpt` (the TaoSR1 model; start-up fails without it) or `lexical` (the `lexical_rules` baseline).
    relevance_beta: CumPT β (relevance.md §3.4); None: the stage's own (the β exported with the TaoSR1 model, 0.5
        for the baseline).
    relevance_batch_size: (query, POI) prompts per forward pass of the TaoSR1 model.
    score_batch_size: candidates per ranking forward pass.
    use_user_cache: HeMix scores through its user-side cache (False: the reference path, for comparison).
    threads: torch intra-op threads per request (1: requests run in parallel in the server's thread pool, one core
        each, without oversubscribing the machine; raise it for few large requests on many cores).
    parallel_requests: cascade calls the HTTP server runs at once (None: the CPU cores); more requests wait their
        turn (reported as `queue_ms`) instead of thrashing the cores.
    feed_retrieval: `auto` (GeoGR when the export holds one, `serving/geogr/`, else the geo-nearest popular
        baseline), `geogr` (GeoGR, and start-up fails without it) or `geo_nearest_popular` (the baseline).
    preranker: `auto` (the AutoFAS student when the export holds one, `serving/autofas/`, else the retrieval-score
        baseline), `autofas` (start-up fails without it) or `retrieval_score_truncation`.
    geogr_num_beams: GeoGR's beam width (None: the run's; the beams are widened to the retrieval budget anyway).
    """

    feed: StageBudgets = field(default_factory=StageBudgets)
    search: StageBudgets = field(default_factory=StageBudgets)
    max_k: int = 100
    default_k: int = 10
    bandwidth_km: float = 1.0
    objective: dict[str, float] = field(default_factory=lambda: {"click": 1.0})
    relevance: str = "auto"
    relevance_beta: float | None = None
    relevance_batch_size: int = 32
    score_batch_size: int = 512
    use_user_cache: bool = True
    threads: int = 1
    parallel_requests: int | None = None
    feed_retrieval: str = "auto"
    geogr_num_beams: int | None = None
    preranker: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"need 1 <= default_k ({self.default_k}) <= max_k ({self.max_k})")
        for kind in (self.feed, self.search):
            if kind.preranking < self.max_k:
                raise ValueError(f"max_k ({self.max_k}) exceeds a pre-ranking budget ({kind.preranking}); "
                                 "raise the budget or lower max_k")
        if self.bandwidth_km <= 0:
            raise ValueError(f"bandwidth_km must be positive, got {self.bandwidth_km}")
        if self.feed_retrieval not in FEED_RETRIEVERS:
            raise ValueError(f"feed_retrieval must be one of {', '.join(FEED_RETRIEVERS)}, got `{self.feed_retrieval}`")
        if self.preranker not in PRERANKERS:
            raise ValueError(f"preranker must be one of {', '.join(PRERANKERS)}, got `{self.preranker}`")
        if self.relevance not in RELEVANCE_STAGES:
            raise ValueError(f"relevance must be one of {', '.join(RELEVANCE_STAGES)}, got `{self.relevance}`")
        if self.relevance_beta is not None and not 0.0 < self.relevance_beta <= 1.0:
            raise ValueError(f"relevance_beta must be in (0, 1], got {self.relevance_beta}")


def load_cascade_config(path: str | Path | None) -> CascadeConfig:
    return CascadeConfig() if path is None else load_yaml(CascadeConfig, path)


def configure_threads(config: CascadeConfig) -> int:
    """Set torch's intra-op threads for a serving process (the server's entry point calls this, not `load`, so
    a library user's own thread settings are left alone); returns the count."""
    threads = max(1, min(config.threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    return threads


@dataclass
class Context:
    """Where and when a request happens. Every field is optional.

    lat, lon: the user's position; default: a known user's home (a cold-start user must give one).
    hour (0-23), weekday (0 Monday - 6): default: noon on the first day after the behaviour log.
    weather: 0 sunny, 1 cloudy, 2 rain; default: the city's weather at that time.
    timestamp: seconds since the world began; replays that moment (history before it only) and fixes hour and
        weekday. Must be within the log or the week after it.
    """

    lat: float | None = None
    lon: float | None = None
    hour: int | None = None
    weekday: int | None = None
    weather: int | None = None
    timestamp: int | None = None


@dataclass
class StageReport:
    stage: str
    method: str
    baseline: bool
    note: str
    candidates_in: int
    candidates_out: int
    latency_ms: float


class Cascade:
    """Loaded once; answers feed and search requests. Thread-safe: the server runs requests in parallel in its
    thread pool (inference only reads the model), each with `threads` intra-op threads."""

    def __init__(self, tables: WorldTables, config: CascadeConfig, retriever: Retriever, search_retriever: Retriever,
                 preranker: PreRanker, ranker: Ranker, relevance: RelevanceScorer, parser: QueryParser) -> None:
        self.tables, self.config = tables, config
        self.retriever, self.search_retriever = retriever, search_retriever
        self.preranker, self.ranker, self.relevance, self.parser = preranker, ranker, relevance, parser
        self._served = itertools.count(1)  # numbers served requests (keys their noise fields); atomic under the GIL

    @classmethod
    def load(cls, run_dir: str | Path, world_dir: str | Path | None = None,
             config: CascadeConfig | None = None) -> Cascade:
        config = config or CascadeConfig()
        artifacts: Artifacts = load_artifacts(run_dir, world_dir)
        tables = WorldTables.load(artifacts.world_dir)
        if len(artifacts.popularity) != tables.n_pois:
            raise ConfigError(f"{artifacts.root / 'retrieval.safetensors'} covers {len(artifacts.popularity)} POIs "
                               f"but {artifacts.world_dir} has {tables.n_pois}; export the run against this world.")
        features = OnlineFeatures(tables, artifacts.schema, artifacts.vocab)
        try:
            ranker = ModelRanker(artifacts.ranking_name, artifacts.ranking, features, config.objective,
                                 config.score_batch_size, config.use_user_cache)
        except ValueError as err:
            raise ConfigError(f"serving config: {err}") from None
        geo = GeoNearestPopular(tables, artifacts.popularity, config.bandwidth_km)
        feed: Retriever = geo
        if config.feed_retrieval == "geogr" or (config.feed_retrieval == "auto" and artifacts.geogr_dir is not None):
            feed = GeoGRFeedRetriever(load_geogr(artifacts, config.geogr_num_beams), tables, geo)
        preranker: PreRanker = RetrievalScoreTruncation()
        if config.preranker == "autofas" or (config.preranker == "auto" and artifacts.autofas_dir is not None):
            student = load_autofas(artifacts)
            preranker = AutoFASPreRanker(student.model, OnlineFeatures(tables, student.schema, student.vocab),
                                         student.spec)
        relevance: RelevanceScorer = LexicalRelevance(tables)
        if config.relevance == "cumpt" or (config.relevance == "auto" and artifacts.relevance_dir is not None):
            relevance = CumPTRelevance(load_relevance(artifacts, config.relevance_batch_size), tables)
        return cls(tables, config, feed,
                   LexicalGeoRetriever(tables, artifacts.popularity, config.bandwidth_km),
                   preranker, ranker, relevance, QueryParser(tables))

    # ---- request resolution --------------------------------------------------------------------------------

    def resolve(self, user_id: int, context: Context, query_category: int = -1) -> RequestContext:
        """The request's user row, position (km), time, weekday and weather, with defaults filled in."""
        tables = self.tables
        user = tables.user_index(user_id)
        if context.lat is None or context.lon is None:
            if context.lat is not None or context.lon is not None:
                raise RequestError("context.lat and context.lon go together; give both or neither.")
            if user is None:
                raise RequestError(f"user {user_id} is unknown (a cold start, served from context alone) and the "
                                   "request has no context.lat/lon; give the user's position.")
            x, y = tables.home(user)
        else:
            x, y = (float(v) for v in from_latlon(context.lat, context.lon))
            if not (0.0 <= x <= CITY_KM and 0.0 <= y <= CITY_KM):
                (lat0, lon0), (lat1, lon1) = (to_latlon(np.array(0.0), np.array(0.0)),
                                              to_latlon(np.array(CITY_KM), np.array(CITY_KM)))
                raise RequestError(f"position ({context.lat}, {context.lon}) is outside the city; lat must be in "
                                   f"[{float(lat0):.4f}, {float(lat1):.4f}] and lon in [{float(lon0):.4f}, "
                                   f"{float(lon1):.4f}].")
        end = tables.log_end_s
        if context.timestamp is not None:
            if not 0 <= context.timestamp <= end + 7 * 86400:
                raise RequestError(f"context.timestamp {context.timestamp} is outside the world's time; use seconds "
                                   f"in [0, {end + 7 * 86400}] (the log ends at {end}).")
            t = int(context.timestamp)
            if context.hour is not None and context.hour != (t % 86400) // 3600:
                raise RequestError("context.hour disagrees with context.timestamp; give one of them.")
            if context.weekday is not None and context.weekday != (t // 86400) % 7:
                raise RequestError("context.weekday disagrees with context.timestamp; give one of them.")
        else:
            day = end // 86400
            if context.weekday is not None:
                day += (context.weekday - day) % 7
            t = day * 86400 + 3600 * (12 if context.hour is None else context.hour)
        weather = context.weather
        if weather is None:
            weather = int(tables.world.weather_at(np.array([t]))[0])
        return RequestContext(user_id, user, x, y, t, (t % 86400) // 3600, (t // 86400) % 7, int(weather),
                              query_category)

    def _check_pois(self, poi_ids: list[int]) -> np.ndarray:
        ids = np.asarray(poi_ids, dtype=np.int64)
        bad = ids[(ids < 1) | (ids > self.tables.n_pois)]
        if len(bad):
            raise RequestError(f"poi_id {int(bad[0])} is not a POI of this world; ids run from 1 to "
                               f"{self.tables.n_pois}.")
        return ids - 1

    def _check_k(self, k: int | None) -> int:
        k = self.config.default_k if k is None else k
        if not 1 <= k <= self.config.max_k:
            raise RequestError(f"k must be between 1 and {self.config.max_k}, got {k}.")
        return k

    # ---- requests ------------------------------------------------------------------------------------------

    def feed(self, user_id: int, context: Context | None = None, k: int | None = None,
             exclude_poi_ids: list[int] | None = None) -> dict[str, Any]:
        k = self._check_k(k)
        excluded = self._check_pois(exclude_poi_ids or [])
        request = self.resolve(user_id, context or Context())
        return self._run(request, None, k, excluded, self.retriever, self.config.feed, explain=False)

    def search(self, user_id: int, query: str, context: Context | None = None, k: int | None = None,
               exclude_poi_ids: list[int] | None = None, explain: bool = False) -> dict[str, Any]:
        k = self._check_k(k)
        if not query.strip():
            raise RequestError("query is empty; send the search text, or use /v1/feed for a query-free feed.")
        excluded = self._check_pois(exclude_poi_ids or [])
        parsed = self.parser.parse(query)
        request = self.resolve(user_id, context or Context(), parsed.category_l2)
        return self._run(request, parsed, k, excluded, self.search_retriever, self.config.search, explain)

    def _run(self, request: RequestContext, query: ParsedQuery | None, k: int, excluded: np.ndarray,
             retriever: Retriever, budgets: StageBudgets, explain: bool) -> dict[str, Any]:
        funnel: list[StageReport] = []
        start = time.perf_counter()

        def report(stage: str, impl: Any, n_in: int, n_out: int, since: float) -> float:
            now = time.perf_counter()
            funnel.append(StageReport(stage, impl.name, impl.baseline, impl.note, n_in, n_out,
                                      round(1000 * (now - since), 3)))
            return now

        n_catalogue = self.tables.n_pois
        retrieved = retriever.retrieve(request, query, budgets.retrieval + len(excluded))
        if len(excluded):
            keep = ~np.isin(retrieved.pois, excluded)
            retrieved = Candidates(retrieved.pois[keep], retrieved.scores[keep], served_by=retrieved.served_by)
        retrieved = retrieved.top(budgets.retrieval)
        t = report("retrieval", retrieved.served_by or retriever, n_catalogue, len(retrieved), start)
        survivors = self.preranker.prerank(request, retrieved, budgets.preranking)
        t = report("preranking", self.preranker, len(retrieved), len(survivors), t)
        ranked = self.ranker.rank(request, survivors, next(self._served))
        t = report("ranking", self.ranker, len(survivors), len(ranked), t)
        tiers = None
        if query is not None:
            probs = self.relevance.tier_probabilities(query, ranked.pois)
            beta = self.relevance.beta if self.config.relevance_beta is None else self.config.relevance_beta
            tier = cumpt_tiers(probs, beta)
            page = page_tiers(tier)
            order = np.flatnonzero(page == "Good").tolist() + np.flatnonzero(page == "Mid").tolist()
            tiers = {"tier": tier, "page": page, "expected": expected_tier(probs)}
            kept = np.array(order, dtype=np.int64)
            tiers = {name: values[kept] for name, values in tiers.items()}
            n_ranked = len(ranked)
            ranked = ranked.take(kept)
            t = report("relevance", self.relevance, n_ranked, len(ranked), t)
        top = np.arange(min(k, len(ranked)))
        results = [self._result(request, ranked, tiers, int(i), query if explain else None) for i in top]
        total = round(1000 * (time.perf_counter() - start), 3)
        return {"request": self._describe(request), "query": _describe_query(query), "k": k,
                "results": results, "funnel": [r.__dict__ for r in funnel], "latency_ms": total}

    def _result(self, request: RequestContext, ranked: Any, tiers: dict[str, np.ndarray] | None, i: int,
                query: ParsedQuery | None) -> dict[str, Any]:
        poi = int(ranked.pois[i])
        pois = self.tables.world.pois
        lat, lon = float(self.tables.poi_lat[poi]), float(self.tables.poi_lon[poi])
        out: dict[str, Any] = {
            "rank": i + 1, "poi_id": poi + 1, "name": pois.names[poi], "category": city.CAT_L2[pois.cat[poi]],
            "lat": lat, "lon": lon, "distance_km": round(float(np.hypot(pois.x[poi] - request.x,
                                                                        pois.y[poi] - request.y)), 3),
            "score": float(ranked.scores[i]),
            "probabilities": {task: float(p[i]) for task, p in ranked.probabilities.items()},
        }
        if tiers is not None:
            out["relevance"] = {"tier": int(tiers["tier"][i]), "page": str(tiers["page"][i]),
                                "expected_tier": round(float(tiers["expected"][i]), 4)}
            if query is not None:
                out["relevance"]["rationale"] = self.relevance.rationale(query, poi)
        return out

    @staticmethod
    def _describe(request: RequestContext) -> dict[str, Any]:
        lat, lon = to_latlon(np.array(request.x), np.array(request.y))
        return {"user_id": request.user_id, "cold_start": request.cold_start, "lat": float(lat), "lon": float(lon),
                "timestamp": request.time_s, "hour": request.hour, "weekday": request.weekday,
                "weather": city.WEATHERS[request.weather]}

    def stage_methods(self) -> dict[str, dict[str, Any]]:
        """Which method runs at each stage, and whether it is a baseline (for /healthz and the docs)."""
        stages = {"feed_retrieval": self.retriever, "search_retrieval": self.search_retriever,
                  "preranking": self.preranker, "ranking": self.ranker, "relevance": self.relevance}
        return {name: {"method": s.name, "baseline": s.baseline, "note": s.note} for name, s in stages.items()}


def _describe_query(query: ParsedQuery | None) -> dict[str, Any] | None:
    if query is None:
        return None
    return {"text": query.text, "understood": query.understood, "matched_terms": list(query.matched),
            "category": city.CAT_L2[query.category_l2] if query.category_l2 >= 0 else None}
