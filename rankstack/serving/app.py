"""The HTTP API over a `Cascade` (FastAPI): feed, search, health, Prometheus metrics and the demo page.

    POST /v1/feed      {"user_id": 17, "context": {"hour": 12}, "k": 10}
    POST /v1/search    {"user_id": 17, "query": "sushi with wifi", "context": {...}, "k": 10, "explain": true}
    GET  /healthz      which method each stage runs (and whether it is a baseline), catalogue and user counts
    GET  /metrics      Prometheus text: requests and errors per endpoint and status, latency histograms end to
                       end and per stage, candidates per stage, process memory
    GET  /v1/world     the city for the demo map: POI coordinates, names and categories, bounds, sample users
    GET  /             the demo page (an SVG map drawn from /v1/world, the results and the funnel)
    GET  /openapi.json, /docs

Every bad request gets a 4xx with a message, never a 500: malformed JSON, missing or wrong-typed fields and
unknown keys (422, strict validation: "17" is not an int), an empty query, an unknown POI id, a position outside
the city or an absurd K (422), and a body over `max_body_bytes` (413, refused while it streams in). An unknown
user is a cold start, not an error.
"""

from __future__ import annotations

import os
import threading
import time
from importlib.resources import files
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rankstack.serving.cascade import Cascade, Context, RequestError
from rankstack.world import city
from rankstack.world.places import CITY_KM, to_latlon

MAX_BODY_BYTES = 64 * 1024  # a request is a few hundred bytes; anything near this is not a request
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CANDIDATE_BUCKETS = (1, 10, 50, 100, 200, 300, 500, 1000, 5000)
MAX_ID = 2**62
ENDPOINTS = ("/v1/feed", "/v1/search", "/healthz", "/metrics", "/v1/world", "/", "/docs", "/openapi.json")
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ContextIn(BaseModel):
    """Where and when; every field optional (see `rankstack.serving.cascade.Context` for the defaults)."""

    model_config = _STRICT
    lat: float | None = Field(None, ge=-90, le=90, description="latitude of the user; default: a known user's home")
    lon: float | None = Field(None, ge=-180, le=180)
    hour: int | None = Field(None, ge=0, le=23, description="default 12")
    weekday: int | None = Field(None, ge=0, le=6, description="0 Monday … 6 Sunday")
    weather: Literal["sunny", "cloudy", "rain"] | None = Field(None, description="default: the city's weather")
    timestamp: int | None = Field(None, ge=0, description="seconds since the world began: replay that moment")


class FeedIn(BaseModel):
    model_config = _STRICT
    user_id: int = Field(ge=1, le=MAX_ID, description="an unknown id is a cold-start user, not an error")
    context: ContextIn = Field(default_factory=ContextIn)
    k: int | None = Field(None, description="results wanted (1 … max_k of the server's config)")
    exclude_poi_ids: list[int] = Field(default_factory=list, max_length=1000, description="POIs not to show")


class SearchIn(FeedIn):
    query: str = Field(min_length=1, max_length=500)
    explain: bool = Field(False, description="add the relevance rationale to each result")


class StageOut(BaseModel):
    stage: str
    method: str
    baseline: bool
    note: str
    candidates_in: int
    candidates_out: int
    latency_ms: float


class RelevanceOut(BaseModel):
    tier: int
    page: str
    expected_tier: float
    rationale: str | None = None


class ResultOut(BaseModel):
    rank: int
    poi_id: int
    name: str
    category: str
    lat: float
    lon: float
    distance_km: float
    score: float
    probabilities: dict[str, float]
    relevance: RelevanceOut | None = None


class RequestOut(BaseModel):
    user_id: int
    cold_start: bool
    lat: float
    lon: float
    timestamp: int
    hour: int
    weekday: int
    weather: str


class QueryOut(BaseModel):
    text: str
    understood: bool
    matched_terms: list[str]
    category: str | None


class CascadeOut(BaseModel):
    request: RequestOut
    query: QueryOut | None
    k: int
    results: list[ResultOut]
    funnel: list[StageOut]
    latency_ms: float = Field(description="the cascade's own time, stage by stage")
    queue_ms: float = Field(description="time the request waited for a free worker before the cascade ran")


class BodyLimit:
    """Pure ASGI middleware: answers 413 once a request body passes `limit` bytes, before it is all read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes; a request is a small JSON "
                                           "object"}, status_code=413)
        await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("rankstack_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("rankstack_errors", "requests answered with 4xx or 5xx, by endpoint and class",
                              ["endpoint", "kind"], registry=self.registry)
        self.latency = Histogram("rankstack_request_latency_seconds", "end-to-end handler latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_latency = Histogram("rankstack_stage_latency_seconds", "latency of each cascade stage",
                                       ["kind", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_candidates = Histogram("rankstack_stage_candidates", "candidates each stage hands on",
                                          ["kind", "stage"], buckets=CANDIDATE_BUCKETS, registry=self.registry)

    def observe_cascade(self, kind: str, answer: dict[str, Any]) -> None:
        for stage in answer["funnel"]:
            self.stage_latency.labels(kind, stage["stage"]).observe(stage["latency_ms"] / 1000)
            self.stage_candidates.labels(kind, stage["stage"]).observe(stage["candidates_out"])


def _context(c: ContextIn) -> Context:
    weather = None if c.weather is None else city.WEATHERS.index(c.weather)
    return Context(c.lat, c.lon, c.hour, c.weekday, weather, c.timestamp)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        if e.get("type") == "json_invalid":
            parts.append(f"malformed JSON at character {e.get('loc', ('', '?'))[-1]}: "
                         f"{e.get('ctx', {}).get('error', 'cannot be parsed')}")
            continue
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(cascade: Cascade, max_body_bytes: int = MAX_BODY_BYTES, workers: int | None = None) -> FastAPI:
    """The FastAPI app answering from `cascade` (loaded once, before the app is made).

    workers: cascade calls that run at once (default: the config's `parallel_requests`, else the CPU cores). Requests beyond it wait their turn instead
        of thrashing the cores; the wait is reported as `queue_ms` and in the `queue` stage of the metrics.
    """
    app = FastAPI(title="rankstack", version="0.1.0",
                  description="The rankstack search & recommendation cascade: retrieval → pre-ranking → ranking "
                              "(→ relevance). Stages still on a baseline say so in each answer's funnel.")
    metrics = Metrics()
    app.state.cascade, app.state.metrics = cascade, metrics
    slots = threading.BoundedSemaphore(workers or cascade.config.parallel_requests or os.cpu_count() or 1)

    def answer(kind: str, call: Any) -> dict[str, Any]:
        start = time.perf_counter()
        with slots:
            waited = time.perf_counter() - start
            result = call()
        result["queue_ms"] = round(1000 * waited, 3)
        metrics.stage_latency.labels(kind, "queue").observe(waited)
        metrics.observe_cascade(kind, result)
        return result
    app.add_middleware(BodyLimit, limit=max_body_bytes)  # inside the counting middleware: 413s are counted

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        # Unknown paths share one label, so random URLs cannot grow the metrics without bound.
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        try:
            response = await call_next(request)
        except Exception:
            metrics.requests.labels(endpoint, "500").inc()
            metrics.errors.labels(endpoint, "5xx").inc()
            raise
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, f"{response.status_code // 100}xx").inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err), "errors": _jsonable(err.errors())},
                            status_code=422)

    @app.exception_handler(RequestError)
    async def unanswerable(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.post("/v1/feed", response_model=CascadeOut, responses={422: {"description": "invalid request"},
                                                                413: {"description": "body too large"}})
    def feed(body: FeedIn) -> dict[str, Any]:
        return answer("feed", lambda: cascade.feed(body.user_id, _context(body.context), body.k,
                                                   body.exclude_poi_ids))

    @app.post("/v1/search", response_model=CascadeOut, responses={422: {"description": "invalid request"},
                                                                  413: {"description": "body too large"}})
    def search(body: SearchIn) -> dict[str, Any]:
        return answer("search", lambda: cascade.search(body.user_id, body.query, _context(body.context), body.k,
                                                       body.exclude_poi_ids, body.explain))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        tables = cascade.tables
        return {"status": "ok", "world": str(tables.root), "pois": tables.n_pois, "users": tables.n_users,
                "max_k": cascade.config.max_k, "stages": cascade.stage_methods()}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/world")
    def world() -> dict[str, Any]:
        return world_summary(cascade)

    @app.get("/", response_class=HTMLResponse)
    def demo() -> str:
        return files("rankstack.serving").joinpath("static/demo.html").read_text()

    return app


def world_summary(cascade: Cascade) -> dict[str, Any]:
    """What the demo page draws: POIs (id, name, category, lat, lon), the city's corners, a few users."""
    tables = cascade.tables
    pois = tables.world.pois
    (lat0, lon0), (lat1, lon1) = to_latlon(0.0, 0.0), to_latlon(CITY_KM, CITY_KM)
    home_lat, home_lon = to_latlon(tables.world.users.home_x[:tables.n_users], tables.world.users.home_y[:tables.n_users])
    sample = list(range(min(tables.n_users, 40)))
    return {
        "bounds": {"lat_min": float(lat0), "lat_max": float(lat1), "lon_min": float(lon0), "lon_max": float(lon1)},
        "categories": list(city.CAT_L1),
        "pois": [{"poi_id": i + 1, "name": pois.names[i], "category": city.CAT_L2[pois.cat[i]],
                  "category_l1": int(city.L1_OF_L2[pois.cat[i]]), "lat": round(float(tables.poi_lat[i]), 6),
                  "lon": round(float(tables.poi_lon[i]), 6)} for i in range(tables.n_pois)],
        "users": [{"user_id": u + 1, "lat": round(float(home_lat[u]), 6), "lon": round(float(home_lon[u]), 6)}
                  for u in sample],
        "max_k": cascade.config.max_k,
        "stages": cascade.stage_methods(),
    }


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors without the raw input and context objects (which may not be JSON)."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]
