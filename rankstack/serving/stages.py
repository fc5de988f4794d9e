"""The cascade's stage interface and the stage implementations a server can load today.

Each stage is a small object with a `name`, a `baseline` flag and a `note`, behind one of four protocols:

    Retriever        retrieve(request, query, budget) → Candidates        (the whole catalogue → a few hundred)
    PreRanker        prerank(request, candidates, budget) → Candidates    (a few hundred → about a hundred)
    Ranker           rank(request, candidates) → Ranked                   (scores every survivor, per task)
    RelevanceScorer  tier_probabilities(query, pois) → [N, 4]             (p(tier k), k = 1..4, for CumPT)

The paper methods of the stages that are still being built plug in behind the same protocols. Until then the
server runs honest, clearly named baselines and says so in every response (`baseline: true` and a `note`):

| stage | method here | planned method |
|---|---|---|
| feed retrieval | `geo_nearest_popular` (geogr.md §6 baseline; also the cold-start fallback), or `geogr` when the export holds a GeoGR run (`GeoGRFeedRetriever`) | — |
| search retrieval | `lexical_geo`: query terms matched against POI category/brand/attribute/district names, plus geo-popularity | query-conditioned GeoGR |
| pre-ranking | `retrieval_score_truncation`: keep the best retrieval scores, or `autofas` when the export holds an AutoFAS student (`AutoFASPreRanker`) | — |
| ranking | the run's trained model (`HeMix` with its user-side cache, or a baseline ranker) | — |
| relevance | `lexical_rules`: the parsed query's category/brand/attributes against the POI record, or `cumpt` when the export holds a TaoSR1 relevance model (`CumPTRelevance`) | — |
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from rankstack.ranking.base import RankingModel
from rankstack.ranking.hemix import HeMix
from rankstack.relevance.cumpt import TIER_RULES, RelevanceItem
from rankstack.relevance.cumpt import RelevanceScorer as CumPTScorer
from rankstack.relevance.data import RelevanceRecord
from rankstack.retrieval.baselines import topk_indices
from rankstack.retrieval.data import haversine_km
from rankstack.serving.features import OnlineFeatures, RequestContext, WorldTables
from rankstack.world import city
from rankstack.world.city import NAVIGATE, ORDER
from rankstack.world.places import to_latlon
from rankstack.world.relevance import category_path, constraint_rules, item_attrs_json


@dataclass
class Candidates:
    """POI indices (0-based rows of tables/pois.parquet) with the score the last stage gave them, best first."""

    pois: np.ndarray
    scores: np.ndarray
    served_by: Any = field(default=None, kw_only=True)  # the stage that actually produced them, when a stage delegates (a cold-start fallback)

    def __len__(self) -> int:
        return len(self.pois)

    def top(self, k: int) -> Candidates:
        order = np.argsort(-self.scores, kind="stable")[:k]
        return Candidates(self.pois[order], self.scores[order], served_by=self.served_by)


@dataclass
class Ranked(Candidates):
    """Candidates scored by a ranker: `scores` is the ranking objective, `probabilities` per task `[C]`."""

    probabilities: dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, rows: np.ndarray) -> Ranked:
        return Ranked(self.pois[rows], self.scores[rows], {t: p[rows] for t, p in self.probabilities.items()})


@dataclass
class ParsedQuery:
    """What the lexical query parser found in a search query (indices are 0-based; -1 / 0 = not found)."""

    text: str
    category_l2: int = -1
    category_l1: int = -1
    brand: int = 0
    district: int = -1
    attributes: tuple[int, ...] = ()
    negated: tuple[int, ...] = ()
    matched: tuple[str, ...] = ()
    price_cap: str = ""  # "soft" for "cheap …", "hard" for "cheaper …" / "… for less" (a cap below a named brand's)
    wants_rating: bool = False  # "good …": a soft rating preference
    needs_knowledge: bool = False  # names a need of the city's knowledge table (K_MAP), not a category

    @property
    def understood(self) -> bool:
        return bool(self.matched)


PHYSICAL_ACTIONS = (ORDER, NAVIGATE)  # a visit: what the next-POI data's histories hold (world/next_poi.py)


class Retriever(Protocol):
    name: str
    baseline: bool
    note: str

    def retrieve(self, request: RequestContext, query: ParsedQuery | None, budget: int) -> Candidates: ...


class PreRanker(Protocol):
    name: str
    baseline: bool
    note: str

    def prerank(self, request: RequestContext, candidates: Candidates, budget: int) -> Candidates: ...


class Ranker(Protocol):
    name: str
    baseline: bool
    note: str

    def rank(self, request: RequestContext, candidates: Candidates, request_number: int = 0) -> Ranked: ...


class RelevanceScorer(Protocol):
    name: str
    baseline: bool
    note: str
    beta: float  # the CumPT β its distributions are tiered with, unless the serving config sets one

    def tier_probabilities(self, query: ParsedQuery, pois: np.ndarray) -> np.ndarray: ...

    def rationale(self, query: ParsedQuery, poi: int) -> str: ...


# Retrieval ---------------------------------------------------------------------------------------------------


def geo_popular_scores(tables: WorldTables, popularity: np.ndarray, request: RequestContext,
                       bandwidth_km: float) -> np.ndarray:
    """log(1 + visits_p) − dist(request, p) / h for every POI (the geo-nearest popular score, geogr.md §6)."""
    lat, lon = to_latlon(np.array([request.x]), np.array([request.y]))
    dist = haversine_km(lat[0], lon[0], tables.poi_lat, tables.poi_lon)
    return np.log1p(popularity) - dist / bandwidth_km


class GeoNearestPopular:
    """Feed retrieval baseline and the cold-start fallback: the best geo-nearest popular POIs."""

    name = "geo_nearest_popular"
    baseline = True
    note = ("baseline: the geo-nearest popular POIs (log(1+visits) - distance/h); serves the feed when the export "
            "holds no GeoGR run, and GeoGR's users without a logged visit")

    def __init__(self, tables: WorldTables, popularity: np.ndarray, bandwidth_km: float) -> None:
        self.tables, self.popularity, self.bandwidth_km = tables, popularity, bandwidth_km

    def retrieve(self, request: RequestContext, query: ParsedQuery | None, budget: int) -> Candidates:
        scores = geo_popular_scores(self.tables, self.popularity, request, self.bandwidth_km)
        top = topk_indices(scores[None, :], budget)[0]
        return Candidates(top, scores[top], served_by=self)


class GeoGRFeedRetriever:
    """Feed retrieval by GeoGR (geogr.md §4.4): the user's logged physical visits (order / navigate, before the
    request time, oldest first) and the request's hour, weekday and position go to the exported
    `rankstack.retrieval.retriever.GeoGRRetriever`, whose trie-constrained beam search returns up to `budget`
    POIs. A user with no logged visit (a cold start, or a known user without any) is served by the cascade's
    `GeoNearestPopular`, and so are the slots the beams leave empty (ranked after every GeoGR candidate). The
    candidates say which method served them (`served_by`), so the funnel names it."""

    name = "geogr"
    baseline = False
    note = ("GeoGR generative retrieval: trie-constrained beam search over semantic IDs from the user's visit "
            "history and context; geo-nearest popular tops up empty beam slots")

    def __init__(self, retriever: Any, tables: WorldTables, fallback: GeoNearestPopular,
                 max_history: int = 50) -> None:
        self.retriever, self.tables, self.fallback, self.max_history = retriever, tables, fallback, max_history

    def history(self, request: RequestContext) -> list[int]:
        """The user's physical visits before the request, as external POI ids (1-based), oldest first."""
        events = self.tables.user_events(request.user, request.time_s)
        visits = events.poi[np.isin(events.action, PHYSICAL_ACTIONS)]
        return (visits[-self.max_history:] + 1).tolist() if self.max_history else []

    def retrieve(self, request: RequestContext, query: ParsedQuery | None, budget: int) -> Candidates:
        history = self.history(request)
        if not history:
            return self.fallback.retrieve(request, query, budget)
        lat, lon = to_latlon(np.array([request.x]), np.array([request.y]))
        context = {"hour": request.hour, "weekday": request.weekday, "lat": float(lat[0]), "lon": float(lon[0])}
        ids, scores = self.retriever.retrieve([history], [context], k=budget)
        keep = ids[0] >= 1
        pois, score = ids[0][keep] - 1, scores[0][keep].astype(np.float64)
        if len(pois) < budget:  # beams ran out: geo-nearest popular fills the rest, below every GeoGR score
            extra = self.fallback.retrieve(request, query, budget + len(pois))
            fill = ~np.isin(extra.pois, pois)
            more = extra.pois[fill][:budget - len(pois)]
            pois = np.r_[pois, more]
            score = np.r_[score, -1.0 - np.arange(len(more), dtype=np.float64)]
        return Candidates(pois, score, served_by=self)


def _normalise(text: str) -> str:
    """Lower case, accents folded (Café → cafe), words separated by single spaces, padded with one space."""
    folded = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return " " + " ".join(re.findall(r"[a-z0-9]+", folded)) + " "


def _phrase_in(phrase: str, text: str) -> bool:
    """Whole-word match, also when one side carries a plural `s` the other lacks."""
    p = _normalise(phrase).strip()
    if not p:
        return False
    forms = {p, p + "s", p[:-1] if p.endswith("s") else p}
    return any(f" {form} " in text for form in forms)


class QueryParser:
    """A lexical query parser over the names in tables/pois.parquet (categories, brands, districts) and the city's
    attribute names. It reads no query log and no truth: a dictionary baseline for query understanding."""

    def __init__(self, tables: WorldTables) -> None:
        t: pa.Table = tables.poi_table
        cols = {name: t.column(name).to_pylist() for name in
                ("category_l1", "category_l1_id", "category_l2", "category_l2_id", "brand", "brand_id", "district",
                 "district_id")}
        self.l2 = sorted({(n, i - 1) for n, i in zip(cols["category_l2"], cols["category_l2_id"])})
        self.l1 = sorted({(n, i - 1) for n, i in zip(cols["category_l1"], cols["category_l1_id"])})
        self.brands = sorted({(n, i) for n, i in zip(cols["brand"], cols["brand_id"]) if i})
        self.districts = sorted({(n, i - 1) for n, i in zip(cols["district"], cols["district_id"])})
        self.l1_of_l2 = dict(zip((i - 1 for i in cols["category_l2_id"]), (i - 1 for i in cols["category_l1_id"])))
        brand_cat = {}
        for b, c in zip(cols["brand_id"], cols["category_l2_id"]):
            brand_cat.setdefault(b, c - 1)
        self.brand_category = brand_cat

    def parse(self, text: str) -> ParsedQuery:
        norm = _normalise(text)
        matched: list[str] = []

        def longest(names: list[tuple[str, int]], text: str = norm) -> tuple[str, int]:
            hits = sorted((n for n in names if _phrase_in(n[0], text)), key=lambda n: -len(n[0]))
            if hits:
                matched.append(hits[0][0])
                return hits[0]
            return "", -1

        l2 = longest(self.l2)[1]
        brand_name, brand = longest(self.brands)
        brand = max(brand, 0)
        # "Harbor Suites" names a brand, not the Harbor district
        district = longest(self.districts, norm.replace(_normalise(brand_name), " ") if brand else norm)[1]
        l1 = longest(self.l1)[1]
        if l2 < 0 and brand:
            l2 = self.brand_category[brand]
        if l1 < 0 and l2 >= 0:
            l1 = self.l1_of_l2[l2]
        attributes, negated = [], []
        for i, attr in enumerate(city.ATTRIBUTES):
            words = attr.replace("_", " ")
            said, negation = city.ATTR_PHRASES[attr]  # the city's own phrasing ("kid friendly", "open 24 hours")
            named = _phrase_in(words, norm) or _phrase_in(said, norm)
            negated_phrase = negation is not None and _phrase_in(negation, norm)
            if not (named or negated_phrase):
                continue
            matched.append(words)
            if negated_phrase or any(f" {neg} {_normalise(words).strip()}" in norm
                                     for neg in ("not", "no", "without", "non")):
                negated.append(i)
            else:
                attributes.append(i)
        needs = [(_normalise(need), attrs) for need, _, attrs in city.KNOWLEDGE if _normalise(need) in norm]
        wishes = norm  # the words outside a stated need ("a cheap bed for backpackers" is a need, not a price cap)
        for phrase, attrs in needs:
            wishes = wishes.replace(phrase, " ")
            for attr in attrs:  # the need implies them ("watch the sunset": a view)
                if city.ATTR_INDEX[attr] not in attributes + negated:
                    attributes.append(city.ATTR_INDEX[attr])
        price_cap = "hard" if any(f" {w} " in wishes for w in ("cheaper", "for less")) else \
            "soft" if " cheap " in wishes else ""
        return ParsedQuery(text, l2, l1, brand, district, tuple(attributes), tuple(negated), tuple(matched),
                           price_cap, " good " in wishes, bool(needs))


def lexical_match(tables: WorldTables, query: ParsedQuery, pois: np.ndarray | None = None) -> np.ndarray:
    """How well each POI's record matches the parsed query (0 = not at all)."""
    world = tables.world.pois
    rows = np.arange(tables.n_pois) if pois is None else pois
    cat = world.cat[rows]
    score = np.zeros(len(rows))
    if query.category_l2 >= 0:
        score += 3.0 * (cat == query.category_l2)
    if query.category_l1 >= 0:
        score += 1.5 * (city.L1_OF_L2[cat] == query.category_l1)
    if query.brand:
        score += 3.0 * (world.brand[rows] == query.brand)
    if query.district >= 0:
        score += 1.0 * (world.district[rows] == query.district)
    for attr in query.attributes:
        score += 1.0 * world.attrs[rows, attr]
    for attr in query.negated:
        score -= 1.0 * world.attrs[rows, attr]
    return score


class LexicalGeoRetriever:
    """Search retrieval baseline: POIs whose record matches the query terms, ordered by match + geo-popularity."""

    name = "lexical_geo"
    baseline = True
    note = ("baseline: query-conditioned GeoGR is not built yet; POIs matching the query's category, brand, "
            "attribute or district names, ordered by 2*match + log(1+visits) - distance/h")

    def __init__(self, tables: WorldTables, popularity: np.ndarray, bandwidth_km: float) -> None:
        self.tables, self.popularity, self.bandwidth_km = tables, popularity, bandwidth_km

    def retrieve(self, request: RequestContext, query: ParsedQuery | None, budget: int) -> Candidates:
        geo = geo_popular_scores(self.tables, self.popularity, request, self.bandwidth_km)
        match = lexical_match(self.tables, query) if query is not None else np.zeros_like(geo)
        pool = np.flatnonzero(match > 0) if (match > 0).any() else np.arange(len(geo))  # no match: geo only
        scores = 2.0 * match[pool] + geo[pool]
        top = topk_indices(scores[None, :], budget)[0]
        return Candidates(pool[top], scores[top])


# Pre-ranking -------------------------------------------------------------------------------------------------


class RetrievalScoreTruncation:
    """Pre-ranking baseline: keep the `budget` candidates with the best retrieval scores."""

    name = "retrieval_score_truncation"
    baseline = True
    note = "baseline: candidates are truncated by retrieval score (the export holds no AutoFAS student)"

    def prerank(self, request: RequestContext, candidates: Candidates, budget: int) -> Candidates:
        return candidates.top(budget)


class AutoFASPreRanker:
    """Pre-ranking by an AutoFAS derived student (autofas.md §3.1, §12): the `MLPStudent` scores every retrieved
    candidate from the fields the search kept, and the `budget` best logits survive. Its features are the
    pre-ranking view's columns, which the world's `FeatureBuilder` computes without behaviour sequences; online they
    come from the same `OnlineFeatures` code the ranker uses, over the view's schema (restricted to the kept
    fields) and vocabulary. Request-level fields go through the request half of the split first layer once."""

    name = "autofas"
    baseline = False

    def __init__(self, model: Any, features: OnlineFeatures, spec: dict[str, Any]) -> None:
        self.model, self.features = model, features
        self.note = (f"AutoFAS derived student: {len(spec['fields'])} kept fields, MLP widths {list(spec['widths'])}"
                     + (f", budget {spec['budget_ms']} ms" if spec.get("budget_ms") is not None else ""))

    @torch.inference_mode()
    def scores(self, request: RequestContext, pois: np.ndarray) -> np.ndarray:
        """The student's logit of every candidate `[C]`."""
        if not len(pois):
            return np.zeros(0)
        encoded = self.features.encode(request, pois)
        batch = {key: value.unsqueeze(0) for key, value in encoded.items()}  # one request of C candidates
        batch["shown"] = torch.zeros((1, len(pois)))
        return self.model.logits(batch)[0].double().numpy()

    def prerank(self, request: RequestContext, candidates: Candidates, budget: int) -> Candidates:
        return Candidates(candidates.pois, self.scores(request, candidates.pois)).top(budget)


# Ranking -----------------------------------------------------------------------------------------------------


class ModelRanker:
    """A trained ranking model over online features; HeMix scores through its user-side cache (hemix.md §11):
    the behaviour sequences are encoded once per request, then every candidate batch reads the cache."""

    baseline = False

    def __init__(self, name: str, model: RankingModel, features: OnlineFeatures, objective: dict[str, float],
                 batch_size: int = 512, use_user_cache: bool = True) -> None:
        unknown = sorted(set(objective) - set(model.tasks))
        if unknown:
            raise ValueError(f"ranking objective names task `{unknown[0]}`, but the model predicts "
                             f"{', '.join(model.tasks)}")
        self.name, self.model, self.features = name, model, features
        self.objective, self.batch_size = objective, batch_size
        self.use_user_cache = use_user_cache and isinstance(model, HeMix)
        self.note = ("trained ranker" + (", HeMix user-side cache: sequences encoded once per request"
                                         if self.use_user_cache else ""))

    @torch.inference_mode()
    def probabilities(self, request: RequestContext, pois: np.ndarray, request_number: int = 0,
                      use_user_cache: bool | None = None) -> torch.Tensor:
        """Per-task probabilities `[C, T]` of the candidates, in batches of `batch_size`."""
        cached = self.use_user_cache if use_user_cache is None else use_user_cache
        batch = self.features.encode(request, pois, request_number)
        cache = None
        if cached:
            assert isinstance(self.model, HeMix)
            cache = self.model.encode_user({key: value[:1] for key, value in batch.items()})
        parts = []
        for lo in range(0, len(pois), self.batch_size):
            rows = {key: value[lo:lo + self.batch_size] for key, value in batch.items()}
            parts.append(self.model.score(cache, rows) if cache is not None else self.model(rows))
        return torch.cat(parts) if parts else torch.zeros((0, len(self.model.tasks)))

    def rank(self, request: RequestContext, candidates: Candidates, request_number: int = 0) -> Ranked:
        probs = self.probabilities(request, candidates.pois, request_number).double().numpy()
        per_task = {task: probs[:, i] for i, task in enumerate(self.model.tasks)}
        score = sum(weight * per_task[task] for task, weight in self.objective.items())
        order = np.argsort(-score, kind="stable")
        return Ranked(candidates.pois, np.asarray(score, dtype=np.float64), per_task).take(order)


# Relevance ---------------------------------------------------------------------------------------------------


class LexicalRelevance:
    """Relevance baseline: a tier from the parsed query against the POI record, as a distribution for CumPT.

    Tier 4 when the query's category (or brand) is the POI's, 2 when only the top-level category agrees, 1
    otherwise; every requested attribute the record does not state, and every negated one it states, lowers a
    matching POI by one tier (not below 2). A query nothing was parsed from leaves every POI at 2 (unknown).
    The tier gets probability 0.7 and the others 0.1 each, so CumPT at β = 0.5 returns it."""

    name = "lexical_rules"
    baseline = True
    note = ("baseline: the export holds no TaoSR1 relevance model (`export --relevance`); tiers come from the parsed "
            "query's category, brand and attributes against the POI record")
    beta = 0.5

    def __init__(self, tables: WorldTables) -> None:
        self.tables = tables

    def tiers(self, query: ParsedQuery, pois: np.ndarray) -> np.ndarray:
        world = self.tables.world.pois
        cat, brand = world.cat[pois], world.brand[pois]
        tier = np.full(len(pois), 2, dtype=np.int64)
        if query.category_l2 >= 0 or query.brand:
            exact = (brand == query.brand) if query.brand else (cat == query.category_l2)
            tier = np.where(exact, 4, np.where(city.L1_OF_L2[cat] == query.category_l1, 2, 1))
        elif query.category_l1 >= 0:
            tier = np.where(city.L1_OF_L2[cat] == query.category_l1, 4, 1)
        misses = sum((~world.attrs[pois, a]).astype(np.int64) for a in query.attributes) if query.attributes else 0
        misses = misses + (sum(world.attrs[pois, a].astype(np.int64) for a in query.negated) if query.negated else 0)
        return np.where(tier >= 3, np.maximum(tier - misses, 2), tier)

    def tier_probabilities(self, query: ParsedQuery, pois: np.ndarray) -> np.ndarray:
        probs = np.full((len(pois), 4), 0.1)
        probs[np.arange(len(pois)), self.tiers(query, pois) - 1] = 0.7
        return probs

    def rationale(self, query: ParsedQuery, poi: int) -> str:
        world = self.tables.world.pois
        parts = [f"category {city.CAT_L2[world.cat[poi]]}"]
        if query.category_l2 >= 0:
            same = world.cat[poi] == query.category_l2
            parts.append(f"{'matches' if same else 'differs from'} the query's {city.CAT_L2[query.category_l2]}")
        if query.brand:
            parts.append("brand matches" if world.brand[poi] == query.brand else "another brand than asked")
        for a in query.attributes:
            parts.append(f"{city.ATTRIBUTES[a]} {'stated' if world.attrs[poi, a] else 'not stated'}")
        for a in query.negated:
            parts.append(f"asked without {city.ATTRIBUTES[a]}: {'stated' if world.attrs[poi, a] else 'not stated'}")
        if not query.understood:
            parts.append("no query term was recognised, so the tier is unknown (Mid)")
        return "; ".join(parts)


def relevance_rules(query: ParsedQuery) -> tuple[str, ...]:
    """The rule ids a served query's relevance prompts list: the tier rules R1-R4, then the atomic rules of the
    constraints the parser found, mapped by the world's own rule retrieval (`rankstack.world.relevance.
    constraint_rules`) in the order the query bank writes them (brand, required and negated attributes, price,
    rating, district), then K_MAP when the query states a need of the city's knowledge table ("somewhere to charge
    my car"). The world's pairs list the rules of the constraints the query was generated with; a served query has
    only its text, so these are the parser's reading of it."""
    # "like BlueFlame but cheaper": the brand is the reference for the price cap, not a constraint
    constraints = [{"name": "brand", "op": "eq", "hard": True}] if query.brand and query.price_cap != "hard" else []
    constraints += [{"name": city.ATTRIBUTES[a], "op": "has", "hard": True} for a in query.attributes]
    constraints += [{"name": city.ATTRIBUTES[a], "op": "not_has", "hard": True} for a in query.negated]
    if query.price_cap:
        constraints.append({"name": "price_level", "op": "lt" if query.price_cap == "hard" else "le",
                            "hard": query.price_cap == "hard"})
    if query.wants_rating:
        constraints.append({"name": "rating", "op": "ge", "hard": False})
    if query.district >= 0:
        constraints.append({"name": "district", "op": "eq", "hard": True})
    rules = [*TIER_RULES, *dict.fromkeys(r for c in constraints for r in constraint_rules(c))]
    if query.needs_knowledge:
        rules.append("K_MAP")
    return tuple(rules)


def poi_items(tables: WorldTables) -> list[RelevanceItem]:
    """Every POI's record as the world's relevance pairs show it (title, category path, brand, price level, and
    `item_attrs_json`: stated attributes, district, rating, hours), from the observable tables."""
    pois, brands = tables.world.pois, tables.poi_table.column("brand").to_pylist()
    return [RelevanceItem(str(i + 1), pois.names[i], category_path(int(pois.cat[i])), brands[i],
                          float(pois.price[i]), json.loads(item_attrs_json(pois, tables.world.districts, i)))
            for i in range(tables.n_pois)]


class CumPTRelevance:
    """Relevance by a TaoSR1 model (relevance.md §3.4): each (query, POI) pair becomes the prompt the model was
    trained on — `rankstack.relevance.data.prompt_message` via the scorer, with the request's query text, the POI's
    record (`poi_items`) and the rules `relevance_rules` retrieves for the parsed query — and one batched forward pass
    reads the four label logits at the last prompt position → p(tier k), tiered by CumPT with the exported β. The
    rationale is decoded (greedily) only for a request that asks for it."""

    name = "cumpt"
    baseline = False

    def __init__(self, scorer: CumPTScorer, tables: WorldTables, max_new_tokens: int = 160) -> None:
        self.scorer, self.items, self.max_new_tokens = scorer, poi_items(tables), max_new_tokens
        self.beta = float(scorer.beta)
        self.note = (f"TaoSR1 relevance model ({scorer.meta.get('stage', '?')}, {scorer.variant}): one forward pass "
                     f"per (query, POI) pair, CumPT tiers at beta = {self.beta}")

    def records(self, query: ParsedQuery, pois: np.ndarray) -> list[RelevanceRecord]:
        """The unlabelled pairs the prompts are built from."""
        rules = relevance_rules(query)
        return self.scorer.records([query.text] * len(pois), [self.items[int(i)] for i in pois], [rules] * len(pois))

    @torch.inference_mode()
    def tier_probabilities(self, query: ParsedQuery, pois: np.ndarray) -> np.ndarray:
        if not len(pois):
            return np.zeros((0, 4))
        return self.scorer.score_records(self.records(query, pois))

    @torch.inference_mode()
    def rationale(self, query: ParsedQuery, poi: int) -> str:
        return self.scorer.explain(query.text, self.items[poi], relevance_rules(query), self.max_new_tokens)
