"""The ranking dataset of the world: its schema (with pre-ranking levels and costs) and its feature columns.

Every impression row has request-level context and user profile, the candidate's item fields, user × item
crosses from the daily batch (the behaviour log before the request's day), the displayed position, two behaviour
sequences (`longterm_*`: up to 100 events before the real-time window; `realtime_*`: the last 20 events), noise,
duplicate and proxy fields, and the labels `click` and `order`. `user_id` is a key, never a feature: long-term
taste must be read from the long-term sequence and the history crosses.

Costs (autofas.md §8): request-level fields U(0.05, 0.5) ms per request, item-level U(0.5, 2) µs and crosses
U(2, 8) µs per candidate; the costly informative crosses are drawn from the top of the cross range and the cheap
proxies from the item range. `FIELD_KINDS` records which fields are informative, weak, noise, duplicates and
proxies; `generate` writes it to `ranking/truth/fields.json` with the measured proxy correlations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rankstack.data.schema import ColumnSpec, Schema
from rankstack.world import city
from rankstack.world.behaviour import Events, Impressions, Requests, World, time_key
from rankstack.world.config import WorldConfig
from rankstack.world.places import Pois, grid_cell, to_latlon

LONGTERM_LEN = 100
REALTIME_LEN = 20
SEQUENCE_FIELDS = ("poi_id", "category_l1", "category_l2", "brand", "price_level", "district")
NEVER_DAYS = 120.0  # `days_since_cat` when the user never touched the category
COSTLY_CROSSES = ("distance_km", "user_cat_ctr", "user_cat_visits", "user_poi_visits", "user_brand_visits")

#: Why each feature field is there (mechanism numbers of world.md §2). `informative` fields carry information the
#: true probabilities depend on; `weak` ones correlate only indirectly; `noise` ones are independent of
#: everything; `duplicate:X` repeats X; `proxy:X` is a cheap estimate of the costly X (corr ≈ 0.8).
FIELD_KINDS: dict[str, str] = {
    "hour": "informative", "weekday": "weak", "weather": "informative", "scene": "weak",
    "query_category_l2": "informative", "user_district": "weak", "user_grid": "weak", "user_lat": "weak",
    "user_lon": "weak", "session_events": "weak", "age_band": "weak", "income_band": "informative",
    "loyalty_band": "informative", "hour_slot": "duplicate:hour",
    "poi_id": "informative", "category_l1": "informative", "category_l2": "informative", "brand": "informative",
    "price_level": "informative", "district": "weak", "poi_grid": "weak", "indoor": "informative",
    "rating": "informative", "review_count": "informative", "open_hour": "informative",
    "close_hour": "informative", "attributes": "weak", "price_tier": "duplicate:price_level",
    "position": "informative",
    "distance_km": "informative", "user_cat_ctr": "informative", "user_cat_visits": "informative",
    "user_poi_visits": "informative", "user_brand_visits": "informative", "user_price_gap": "informative",
    "days_since_cat": "informative", "travel_time_min": "duplicate:distance_km",
    "district_distance_km": "proxy:distance_km", "user_cat_ctr_stale": "proxy:user_cat_ctr",
}


def _cost_range(name: str, level: str, role: str) -> tuple[float, float]:
    if level == "request":
        return 0.05, 0.5
    if FIELD_KINDS.get(name, "").startswith("proxy") or role in ("item", "context"):
        return 0.0005, 0.002
    if name in COSTLY_CROSSES or name == "travel_time_min":
        return 0.005, 0.008
    return 0.002, 0.008


def noise_fields(config: WorldConfig) -> list[tuple[str, str, str]]:
    """(name, level, kind) of the noise fields: levels cycle request, item, cross; kinds alternate."""
    levels = ("request", "item", "cross")
    out = []
    for i in range(config.noise_feature_count):
        level = levels[i % 3]
        kind = "categorical" if (i // 3) % 2 == 0 else "numeric"
        out.append((f"noise_{level}_{i}", level, kind))
    return out


def ranking_schema(config: WorldConfig, seed: int) -> Schema:
    """The ranking dataset's columns, with levels and seeded fetch costs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    cols: list[ColumnSpec] = []

    def add(name: str, kind: str, role: str, **kw) -> None:
        spec = ColumnSpec(name, kind, role, **kw)
        if spec.is_feature:
            lo, hi = _cost_range(name, spec.level, role)
            spec = ColumnSpec(name, kind, role, **kw, cost_ms=round(float(rng.uniform(lo, hi)), 6))
        cols.append(spec)

    add("request_id", "categorical", "key")
    add("user_id", "categorical", "key")
    add("timestamp", "numeric", "meta", dtype="int64", level="request",
        description="request time, seconds since the world began")
    add("query_id", "categorical", "meta", dtype="string", level="request",
        description="the search query (tables/queries.parquet), empty for feed requests")
    # Request-level context and user profile.
    add("hour", "categorical", "context")
    add("weekday", "categorical", "context")
    add("weather", "categorical", "context", description="0 sunny, 1 cloudy, 2 rain")
    add("scene", "categorical", "context", description="0 feed, 1 search")
    add("query_category_l2", "categorical", "context", embedding_group="category_l2",
        description="the search query's category (0 for feed requests)")
    add("user_district", "categorical", "context", embedding_group="district")
    add("user_grid", "categorical", "context", embedding_group="grid", description="1 km cell of the user")
    add("user_lat", "numeric", "context", num_buckets=16)
    add("user_lon", "numeric", "context", num_buckets=16)
    add("session_events", "numeric", "context", num_buckets=8, description="events of this session so far")
    add("age_band", "categorical", "user")
    add("income_band", "categorical", "user")
    add("loyalty_band", "categorical", "user", description="membership band 0-2")
    add("hour_slot", "categorical", "context", description="duplicate: time-of-day slot of `hour`")
    # Candidate item fields.
    add("poi_id", "categorical", "item")
    add("category_l1", "categorical", "item")
    add("category_l2", "categorical", "item")
    add("brand", "categorical", "item", description="0 for independents")
    add("price_level", "categorical", "item")
    add("district", "categorical", "item")
    add("poi_grid", "categorical", "item", embedding_group="grid")
    add("indoor", "categorical", "item")
    add("rating", "numeric", "item", num_buckets=16)
    add("review_count", "numeric", "item", num_buckets=16)
    add("open_hour", "categorical", "item")
    add("close_hour", "categorical", "item", description="closing hour; > 24 runs past midnight")
    add("attributes", "sequence", "item", max_len=len(city.ATTRIBUTES), embedding_group="attribute",
        description="attributes the record states as present")
    add("price_tier", "categorical", "item", description="duplicate of price_level")
    add("position", "categorical", "context", level="candidate", description="displayed position, 1 = top")
    # User × item crosses, from the behaviour log strictly before the request.
    add("distance_km", "numeric", "cross", num_buckets=16)
    add("user_cat_ctr", "numeric", "cross", num_buckets=16,
        description="the user's past click-through on the candidate's category_l2 (smoothed)")
    add("user_cat_visits", "numeric", "cross", num_buckets=16, description="past events in the category_l2")
    add("user_poi_visits", "numeric", "cross", num_buckets=8, description="past events at this POI")
    add("user_brand_visits", "numeric", "cross", num_buckets=8, description="past events at this brand")
    add("user_price_gap", "numeric", "cross", num_buckets=16, description="price level minus the user's mean")
    add("days_since_cat", "numeric", "cross", num_buckets=16)
    add("travel_time_min", "numeric", "cross", num_buckets=16, description="duplicate of distance_km")
    add("district_distance_km", "numeric", "cross", num_buckets=16,
        description="cheap proxy of distance_km: a district-to-district travel table")
    add("user_cat_ctr_stale", "numeric", "cross", num_buckets=16,
        description="cheap proxy of user_cat_ctr: last week's batch snapshot, heavily smoothed")
    for name, level, kind in noise_fields(config):
        role = {"request": "context", "item": "item", "cross": "cross"}[level]
        add(name, kind, role, **({"num_buckets": 16} if kind == "numeric" else {}), description="pure noise")
    for prefix, role, length in (("longterm", "longterm_seq", LONGTERM_LEN), ("realtime", "realtime_seq",
                                                                               REALTIME_LEN)):
        for name in SEQUENCE_FIELDS:
            add(f"{prefix}_{name}", "sequence", role, max_len=length, embedding_group=name)
        add(f"{prefix}_action", "sequence", role, max_len=length, embedding_group="action",
            description="1 view, 2 click, 3 order, 4 navigate")
    add("click", "numeric", "label")
    add("order", "numeric", "label")
    return Schema(name="world-ranking", columns=cols, group_key="user_id", request_key="request_id",
                  description="synthetic city: ranking impressions (rankstack world, world.md)")


def field_kinds(config: WorldConfig) -> dict[str, str]:
    kinds = dict(FIELD_KINDS)
    kinds.update({name: "noise" for name, _, _ in noise_fields(config)})
    for prefix in ("longterm", "realtime"):
        for name in (*SEQUENCE_FIELDS, "action"):
            kinds[f"{prefix}_{name}"] = "informative"
    return kinds


@dataclass
class _History:
    """Events grouped by an integer key, sorted by time: counts and sums before a time, per group."""

    key: np.ndarray
    time: np.ndarray
    cum_pos: np.ndarray
    cum_price: np.ndarray

    @classmethod
    def build(cls, group: np.ndarray, ev: Events, positive: np.ndarray, price: np.ndarray) -> _History:
        key = time_key(group, ev.time)
        order = np.argsort(key, kind="stable")
        return cls(key[order], ev.time[order], np.r_[0, np.cumsum(positive[order])],
                   np.r_[0.0, np.cumsum(price[order])])

    def span(self, group: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(self.key, time_key(group, 0), "left")
        hi = np.searchsorted(self.key, time_key(group, time), "left")
        return lo, hi


class FeatureBuilder:
    """Feature columns of impressions for one chunk, from its behaviour log (sorted by user, time)."""

    def __init__(self, world: World, chunk: np.ndarray, events: Events) -> None:
        self.world = world
        self.chunk = chunk
        self.events = events
        pois = world.pois
        self.local = np.searchsorted(chunk, events.user)
        positive = (events.action >= city.CLICK).astype(np.int64)
        price = pois.price[events.poi].astype(np.float64)
        cat = pois.cat[events.poi]
        self.by_cat = _History.build(self.local * len(city.CAT_L2) + cat, events, positive, price)
        self.by_poi = _History.build(self.local * len(pois) + events.poi, events, positive, price)
        self.by_brand = _History.build(self.local * (len(city.BRANDS) + 1) + pois.brand[events.poi], events,
                                       positive, price)
        self.by_user = _History.build(self.local, events, positive, price)
        self.event_key = time_key(self.local, events.time)  # events are sorted by (user, time)

    def crosses(self, req: Requests, row: np.ndarray, poi: np.ndarray) -> dict[str, np.ndarray]:
        """User × item crosses of (request row, POI) pairs, from events strictly before the request."""
        pois, world = self.world.pois, self.world
        local = np.searchsorted(self.chunk, req.user[row])
        t = req.time[row]
        # History crosses come from the daily batch, as in a production feature store: events before the
        # request's day. Today's behaviour, which reveals the session's intent, is only in the real-time sequence.
        batch_t = (t // 86400) * 86400
        cat = pois.cat[poi]
        n_cat = len(city.CAT_L2)
        lo, hi = self.by_cat.span(local * n_cat + cat, batch_t)
        n_events = hi - lo
        clicks = self.by_cat.cum_pos[hi] - self.by_cat.cum_pos[lo]
        last = np.where(n_events > 0, self.by_cat.time[np.maximum(hi - 1, 0)], -1)
        lo_p, hi_p = self.by_poi.span(local * len(pois) + poi, batch_t)
        lo_b, hi_b = self.by_brand.span(local * (len(city.BRANDS) + 1) + pois.brand[poi], batch_t)
        lo_u, hi_u = self.by_user.span(local, batch_t)
        mean_price = np.where(hi_u > lo_u, (self.by_user.cum_price[hi_u] - self.by_user.cum_price[lo_u])
                              / np.maximum(hi_u - lo_u, 1), 2.0)
        # Cheap proxies (mechanism 8), each correlated about 0.8 with its costly cross: a weekly batch snapshot
        # of the category click-through, smoothed towards 0.3 with 16 pseudo-events, and a district-to-district
        # travel table (centre distance × a road factor per district pair).
        week = 7 * 86400
        lo_s, hi_s = self.by_cat.span(local * n_cat + cat, (t // week) * week)
        stale = (self.by_cat.cum_pos[hi_s] - self.by_cat.cum_pos[lo_s] + 4.8) / (hi_s - lo_s + 16.0)
        distance = np.hypot(pois.x[poi] - req.x[row], pois.y[poi] - req.y[row])
        d = world.districts
        user_d = d.nearest(req.x[row], req.y[row])
        poi_d = pois.district[poi]
        centre = np.hypot(d.x[user_d] - d.x[poi_d], d.y[user_d] - d.y[poi_d])
        road = np.exp(0.3 * world.rng.normal("road_factor", np.minimum(user_d, poi_d), np.maximum(user_d, poi_d)))
        return {
            "distance_km": distance,
            "user_cat_ctr": (clicks + 0.6) / (n_events + 2.0),
            "user_cat_visits": n_events.astype(np.float64),
            "user_poi_visits": (hi_p - lo_p).astype(np.float64),
            "user_brand_visits": np.where(pois.brand[poi] > 0, hi_b - lo_b, 0).astype(np.float64),
            "user_price_gap": pois.price[poi] - mean_price,
            "days_since_cat": np.where(last >= 0, np.minimum((t - last) / 86400.0, NEVER_DAYS), NEVER_DAYS),
            "district_distance_km": np.where(user_d == poi_d, 1.25 * d.sigma[poi_d], centre) * road,
            "user_cat_ctr_stale": stale,
        }

    def sequence_spans(self, req: Requests) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(start, length) of each request's long-term and real-time windows in the event arrays."""
        local = np.searchsorted(self.chunk, req.user)
        first = np.searchsorted(self.event_key, time_key(local, 0), "left")
        end = np.searchsorted(self.event_key, time_key(local, req.time), "left")  # strictly before the request
        rt_start = np.maximum(first, end - REALTIME_LEN)
        lt_start = np.maximum(first, rt_start - LONGTERM_LEN)
        return {"realtime": (rt_start, end - rt_start), "longterm": (lt_start, rt_start - lt_start)}

    def event_fields(self) -> dict[str, np.ndarray]:
        pois, ev = self.world.pois, self.events
        cat = pois.cat[ev.poi]
        return {"poi_id": ev.poi + 1, "category_l1": city.L1_OF_L2[cat] + 1, "category_l2": cat + 1,
                "brand": pois.brand[ev.poi], "price_level": pois.price[ev.poi], "district": pois.district[ev.poi] + 1,
                "action": ev.action}

    def rows(self, req: Requests, imp: Impressions, sequences: bool = True) -> dict[str, object]:
        """All ranking columns of the impressions `imp` (a dict of arrays / Arrow list arrays); without
        `sequences` the behaviour-sequence columns are left out (the pre-ranking view does not carry them)."""
        world, pois, users, cfg = self.world, self.world.pois, self.world.users, self.world.config
        rng = world.rng
        r, p = imp.req, imp.poi
        rid = req.request_id[r]
        u = req.user[r]
        lat, lon = to_latlon(req.x[r], req.y[r])
        cat = pois.cat[p]
        cols: dict[str, object] = {
            "request_id": rid, "user_id": u + 1, "timestamp": req.time[r], "query_id": query_keys(req.query_id[r]),
            "hour": req.hour[r], "weekday": req.weekday[r], "weather": req.weather[r],
            "scene": (req.query_cat[r] >= 0).astype(np.int64), "query_category_l2": req.query_cat[r] + 1,
            "user_district": world.districts.nearest(req.x[r], req.y[r]) + 1, "user_grid": grid_cell(req.x[r], req.y[r]),
            "user_lat": lat, "user_lon": lon, "session_events": req.session_events[r].astype(np.float64),
            "age_band": users.age[u], "income_band": users.income[u], "loyalty_band": users.loyalty[u],
            "hour_slot": city.HOUR_SLOT[req.hour[r]],
            "poi_id": p + 1, "category_l1": city.L1_OF_L2[cat] + 1, "category_l2": cat + 1, "brand": pois.brand[p],
            "price_level": pois.price[p], "district": pois.district[p] + 1, "poi_grid": grid_cell(pois.x[p], pois.y[p]),
            "indoor": city.INDOOR[cat].astype(np.int64), "rating": pois.rating[p], "review_count": pois.reviews[p],
            "open_hour": pois.open_hour[p], "close_hour": pois.close_hour[p],
            "attributes": _poi_attribute_lists(pois, p), "price_tier": pois.price[p], "position": imp.position,
        }
        crosses = self.crosses(req, r, p)
        # Mechanism 8: `costly_feature_signal` < 1 makes a costly cross describe a random POI instead of the
        # candidate (per value, with probability 1 - s): same marginal distribution, less information, so
        # AutoFAS should stop paying for it.
        signal = cfg.costly_feature_signal
        if signal < 1.0:
            decoy = rng.integers("decoy_poi", len(pois), rid, p)
            decoy_crosses = self.crosses(req, r, decoy)
            for name in COSTLY_CROSSES:
                swap = rng.uniform(f"decoy_{name}", rid, p) >= signal
                crosses[name] = np.where(swap, decoy_crosses[name], crosses[name])
        cols.update(crosses)
        cols["travel_time_min"] = 2.0 + 2.4 * crosses["distance_km"] * (1.0 + 0.05 * rng.normal("travel", rid, p))
        for name, level, kind in noise_fields(cfg):
            keys = {"request": (rid,), "item": (p,), "cross": (rid, p)}[level]
            if kind == "categorical":
                cols[name] = 1 + rng.integers(name, 50, *keys)
            else:
                cols[name] = rng.normal(name, *keys)
        spans = self.sequence_spans(req) if sequences else {}
        values = self.event_fields()
        for prefix, (start, length) in spans.items():
            for name, vals in values.items():
                cols[f"{prefix}_{name}"] = list_rows(vals, start[r], length[r])
        cols["click"] = imp.click.astype(np.float32)
        cols["order"] = imp.order.astype(np.float32)
        return cols


def query_keys(query_num: np.ndarray) -> np.ndarray:
    """Query ids as stored everywhere (`q000123`); "" for 0, i.e. no query."""
    return np.array([f"q{q:06d}" if q else "" for q in query_num.tolist()], dtype=object)


def list_rows(values: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.ListArray:
    """An Arrow list per row: values[start : start + length]."""
    offsets = np.r_[0, np.cumsum(length)]
    idx = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values[idx], type=pa.int64()))


def _poi_attribute_lists(pois: Pois, poi: np.ndarray) -> pa.ListArray:
    stated = pois.attrs[poi] & pois.recorded[poi]
    length = stated.sum(axis=1)
    ids = np.nonzero(stated)[1] + 1
    offsets = np.r_[0, np.cumsum(length)]
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(ids, type=pa.int64()))
