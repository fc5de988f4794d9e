"""Behaviour: sessions, visits, ranking requests and their impressions, for one chunk of users (world.md §2).

A user's life is a list of sessions. A session starts somewhere (home, work, or out in town) with an intent
category drawn from the category terms of `mechanisms` (long-term taste × hour × weather); each *step* of the
session browses a few places (views, some clicked), then, with probability `COMPLETE_SHARE`, goes to one
(`order` or `navigate`: physical presence). After a completed step the session may continue along a
complementary chain (airport → hotel → parking), starting from the place just visited. Views and visits pick a
place within a category from the POI terms (distance, brand, price, quality, hours).

Ranking requests are dropped into steps after the warm-up: a request sits just before one of the step's events,
so the realtime sequence holds the step's earlier views (and the chain visit that led to it), never the request's
own outcome. Each request shows `candidates_per_request` POIs from a retrieval-like sampler, ordered by a noisy
logging policy; clicks and orders are Bernoulli draws from the true probabilities, and clicked impressions are
written back into `visits`, so later requests see them in their sequences.

All draws are keyed by user, session, step and event (`KeyedRandom`), so a chunk's output does not depend on
which other users share the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from rankstack.world import city
from rankstack.world.config import WorldConfig
from rankstack.world.keyed import KeyedRandom, softmax_rows
from rankstack.world.mechanisms import (
    Context,
    category_terms,
    click_logit,
    cvr_logit,
    poi_terms,
    sigmoid,
    travel_km,
)
from rankstack.world.places import Districts, Pois, Users

#: Session start hours: quiet nights, peaks at breakfast, lunch, after work and in the evening.
HOUR_PMF = np.array([0.4, 0.2, 0.1, 0.1, 0.1, 0.3, 1.0, 2.2, 3.0, 2.2, 2.0, 3.0, 3.6, 2.6, 2.2, 2.2, 2.6, 3.2,
                     4.0, 3.8, 3.4, 2.8, 1.8, 0.9])
MAX_STEPS = 3
VIEW_MEAN = 3.0  # every step has at least one view, so a request always follows a view that reveals its intent
MAX_VIEWS = 8
INTENT_VIEW_SHARE = 0.9  # the rest of a step's views are browsing noise from other categories
COMPLETE_SHARE = 0.7
CHAIN_CONTINUE = 0.6  # P(continue along a chain) at covisit_chains = 1
SESSION_GAP_S = 4 * 3600
CANDIDATE_DRAWS = 16  # candidates drawn per request before de-duplication
HISTORY_TASTE = 2.5  # taste weighs this much more in where people set out to go than in what they click
VISIT_DISTANCE = 2.5  # distance weighs this much more in where people go than in what they click
CHAIN_WALK_PER_KM = 2.5  # extra utility cost per km on a chain's later steps, at covisit_chains = 1


@dataclass
class Steps:
    """One row per session step (the unit that has one intent)."""

    user: np.ndarray  # user index
    session: np.ndarray  # session key (index in the user's draw order)
    k: np.ndarray  # step within the session
    sid: np.ndarray  # session id: user_id * 1000 + rank of the session in time
    cat: np.ndarray  # the step's intent (category_l2 index)
    prev_cat: np.ndarray  # intent of the previous step, -1 on a session's first step
    x: np.ndarray  # origin (km)
    y: np.ndarray
    t_start: np.ndarray
    hour: np.ndarray
    weather: np.ndarray
    n_views: np.ndarray
    view_offset: np.ndarray  # index of the step's first view in the chunk's view arrays
    completed: np.ndarray
    final_poi: np.ndarray
    final_time: np.ndarray
    final_action: np.ndarray

    def take(self, rows: np.ndarray) -> Steps:
        return Steps(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def context(self) -> Context:
        return Context(self.user, self.hour, self.weather, self.x, self.y)


@dataclass
class Events:
    """The behaviour log of a chunk (`visits`), sorted by (user, time)."""

    user: np.ndarray
    time: np.ndarray
    poi: np.ndarray
    action: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sid: np.ndarray
    request_id: np.ndarray  # the impression a clicked event came from, 0 for organic events

    def take(self, rows: np.ndarray) -> Events:
        return Events(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Events]) -> Events:
        return Events(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Events)})


@dataclass
class Requests:
    """Ranking requests of a chunk, with their latent intent (truth) and observable context."""

    request_id: np.ndarray
    user: np.ndarray
    time: np.ndarray
    hour: np.ndarray
    weekday: np.ndarray
    weather: np.ndarray
    x: np.ndarray
    y: np.ndarray
    intent: np.ndarray  # latent: the step's category_l2 index
    sid: np.ndarray
    session_events: np.ndarray  # events of the session before the request
    query_id: np.ndarray  # 0 for feed requests
    query_cat: np.ndarray  # the query's category_l2 index, -1 for feed requests

    def take(self, rows: np.ndarray) -> Requests:
        return Requests(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def context(self) -> Context:
        return Context(self.user, self.hour, self.weather, self.x, self.y)


@dataclass
class Impressions:
    """Displayed candidates: one row per (request, position)."""

    req: np.ndarray  # row in Requests
    poi: np.ndarray
    position: np.ndarray
    terms: dict[str, np.ndarray]  # click-logit terms (mechanisms.CLICK_TERMS)
    p_click: np.ndarray
    p_cvr: np.ndarray
    click: np.ndarray
    order: np.ndarray


class World:
    """The static world a chunk is simulated in: config, keyed randomness, city, places, people, queries."""

    def __init__(self, config: WorldConfig, seed: int, districts: Districts, pois: Pois, users: Users,
                 query_ids_by_cat: list[np.ndarray]) -> None:
        self.config = config
        self.rng = KeyedRandom(seed)
        self.districts = districts
        self.pois = pois
        self.users = users
        self.by_cat = pois.by_category()
        self.query_ids_by_cat = query_ids_by_cat

    # ---- shared pieces ----------------------------------------------------------------------------------

    def weather_at(self, t: np.ndarray) -> np.ndarray:
        """City-wide weather, constant over 3-hour blocks."""
        block = t // (3 * 3600)
        return self.rng.categorical("weather", np.broadcast_to(city.WEATHER_SHARE, (len(block), 3)), block)

    def intent_probs(self, ctx: Context) -> np.ndarray:
        """P(intent category) when a session starts: popularity × the category terms. [rows, categories].

        Taste weighs `HISTORY_TASTE` times more in what users set out to do than in what they click when shown,
        so the long history concentrates on favourite categories and long-term interest is learnable from it.
        """
        cats = np.arange(len(city.CATEGORIES))[None, :]
        terms = category_terms(self.config, self.users, ctx.column(), cats)
        terms["longterm_category"] = HISTORY_TASTE * terms["longterm_category"]
        logits = np.log(city.CAT_POPULARITY)[None, :] + sum(terms.values())
        return softmax_rows(logits)

    def visit_utility(self, ctx: Context, cand: np.ndarray, walk: np.ndarray | float = 0.0) -> np.ndarray:
        """Utility of each candidate POI for each row ([rows, 1] context × [1, pois]): the POI terms, with
        distance weighing `VISIT_DISTANCE` times more (going somewhere costs more than clicking), minus `walk`
        per km on a chain's later steps."""
        terms = poi_terms(self.config, self.users, self.pois, ctx, cand)
        terms["distance"] = VISIT_DISTANCE * terms["distance"]
        return sum(terms.values()) - walk * travel_km(self.pois, ctx, cand)

    def retrieval_utility(self, ctx: Context, cand: np.ndarray) -> np.ndarray:
        """The logging system's candidate sampler: nearby, well-rated places (not the truth)."""
        d = travel_km(self.pois, ctx, cand)
        return -0.7 * d / city.DECAY_KM[self.pois.cat[cand]] + 0.5 * (self.pois.rating[cand] - 4.0) / 0.35

    def chain_walk(self, k: np.ndarray) -> np.ndarray:
        """Mechanism 5: on a chain's later steps users walk to the partner next door (extra cost per km)."""
        return np.where(k > 0, CHAIN_WALK_PER_KM * self.config.covisit_chains, 0.0)

    def within_category_probs(self, ctx: Context, c: int, walk: np.ndarray | None = None,
                              retrieval: bool = False) -> np.ndarray:
        """P(place | category c) for each row of `ctx`: [rows, pois of c]."""
        cand = self.by_cat[c][None, :]
        if retrieval:
            return softmax_rows(self.retrieval_utility(ctx.column(), cand))
        return softmax_rows(self.visit_utility(ctx.column(), cand, 0.0 if walk is None else walk[:, None]))

    def choose(self, ctx: Context, cat: np.ndarray, stream: str, keys: tuple, walk: np.ndarray | None = None,
               retrieval: bool = False) -> np.ndarray:
        """One POI per row, drawn within the row's category from the visit (or retrieval) utility."""
        keys = tuple(np.broadcast_to(np.asarray(k), cat.shape) for k in keys)
        out = np.zeros(len(cat), dtype=np.int64)
        for c in np.unique(cat):
            rows = np.flatnonzero(cat == c)
            probs = self.within_category_probs(ctx.take(rows), int(c), None if walk is None else walk[rows],
                                               retrieval)
            out[rows] = self.by_cat[c][self.rng.categorical(stream, probs, *(k[rows] for k in keys))]
        return out

    # ---- sessions and visits ----------------------------------------------------------------------------

    def sessions(self, chunk: np.ndarray) -> tuple[Steps, Events]:
        """Simulate the sessions of the users in `chunk` (user indices): their steps and their views (in step
        order; `Steps.view_offset` points into them). `organic_events` adds the completed visits."""
        cfg, rng, users, districts = self.config, self.rng, self.users, self.districts
        n_sess = np.clip(np.rint(cfg.sessions_per_user * users.activity[chunk]
                                 * np.exp(0.3 * rng.normal("n_sessions", chunk))), 3, 999).astype(np.int64)
        user = np.repeat(chunk, n_sess)
        sess = ranks(user)
        day = rng.integers("session_day", cfg.days, user, sess)
        hour = rng.categorical("session_hour", np.broadcast_to(HOUR_PMF, (len(user), 24)), user, sess)
        planned = day * 86400 + hour * 3600 + rng.integers("session_second", 3600, user, sess)
        order = np.lexsort((planned, user))
        user, sess, planned = user[order], sess[order], planned[order]
        rank = ranks(user)
        # Sessions of one user never overlap: start_i >= start_{i-1} + SESSION_GAP_S (a segmented running max).
        group = np.cumsum(np.r_[True, user[1:] != user[:-1]]) - 1
        shifted = planned - rank * SESSION_GAP_S + group * (1 << 40)
        start = np.maximum.accumulate(shifted) - group * (1 << 40) + rank * SESSION_GAP_S
        keep = start < cfg.days * 86400 - 3 * 3600
        user, sess, start, rank = user[keep], sess[keep], start[keep], rank[keep]
        sid = (user + 1) * 1000 + rank

        # Where a session starts: at work on weekday office hours, mostly at home otherwise, sometimes out.
        weekday = (start // 86400) % 7
        hour = (start % 86400) // 3600
        office = (weekday < 5) & (hour >= 9) & (hour < 18)
        u = rng.uniform("where", user, sess)
        at_work = np.where(office, u < 0.8, (u >= 0.65) & (u < 0.7))
        at_home = ~office & (u < 0.65)
        out_d = rng.categorical("outing", np.broadcast_to(districts.size, (len(user), len(districts.size))),
                                user, sess)
        x = np.where(at_work, users.work_x[user], np.where(at_home, users.home_x[user], districts.x[out_d]))
        y = np.where(at_work, users.work_y[user], np.where(at_home, users.home_y[user], districts.y[out_d]))
        spread = np.where(at_work | at_home, 0.3, districts.sigma[out_d])
        x = np.clip(x + spread * rng.normal("origin_x", user, sess), 0.05, 19.95)
        y = np.clip(y + spread * rng.normal("origin_y", user, sess), 0.05, 19.95)

        step_parts: list[dict[str, np.ndarray]] = []
        view_parts: list[Events] = []
        active = np.arange(len(user))
        prev_cat = np.full(len(user), -1)
        t = start
        n_views_total = 0
        for k in range(MAX_STEPS):
            u_k, s_k, sid_k = user[active], sess[active], sid[active]
            hour_k = (t % 86400) // 3600
            ctx = Context(u_k, hour_k, self.weather_at(t), x, y)
            if k == 0:
                cat = rng.categorical("intent", self.intent_probs(ctx), u_k, s_k, k)
            else:
                cat = rng.categorical("intent", city.CHAIN_MATRIX[prev_cat], u_k, s_k, k)
            n_views = 1 + np.minimum(np.floor(-np.log(rng.uniform("n_views", u_k, s_k, k)) * (VIEW_MEAN - 1)),
                                     MAX_VIEWS - 1).astype(np.int64)
            row = np.repeat(np.arange(len(active)), n_views)
            v = ranks(row)
            gap = 60 + rng.integers("view_gap", 180, u_k[row], s_k[row], k, v)
            cum_gap = segment_cumsum(gap, row)
            view_time = t[row] + cum_gap
            last_time = t.copy()
            np.maximum.at(last_time, row, view_time)
            on_intent = rng.uniform("view_intent", u_k[row], s_k[row], k, v) < INTENT_VIEW_SHARE
            browse = rng.categorical("view_cat", np.broadcast_to(city.CAT_POPULARITY, (len(row), len(city.CAT_L2))),
                                     u_k[row], s_k[row], k, v)
            view_cat = np.where(on_intent, cat[row], browse)
            walk = self.chain_walk(np.full(len(active), k))
            view_poi = self.choose(ctx.take(row), view_cat, "view_poi", (u_k[row], s_k[row], k, v), walk[row])
            clicked = rng.uniform("view_click", u_k[row], s_k[row], k, v) < np.where(on_intent, 0.35, 0.08)
            view_parts.append(Events(u_k[row], view_time, view_poi, np.where(clicked, city.CLICK, city.VIEW),
                                     x[row], y[row], sid_k[row], np.zeros(len(row), dtype=np.int64)))

            completed = rng.uniform("complete", u_k, s_k, k) < COMPLETE_SHARE
            final_poi = self.choose(ctx, cat, "visit_poi", (u_k, s_k, k), walk)
            final_time = last_time + 60 + rng.integers("final_gap", 180, u_k, s_k, k)
            final_action = np.where(rng.uniform("order", u_k, s_k, k) < city.ORDER_SHARE[cat], city.ORDER,
                                    city.NAVIGATE)
            step_parts.append(dict(user=u_k, session=s_k, k=np.full(len(active), k), sid=sid_k, cat=cat,
                                   prev_cat=prev_cat, x=x, y=y, t_start=t, hour=hour_k, weather=ctx.weather,
                                   n_views=n_views, view_offset=n_views_total + np.cumsum(n_views) - n_views,
                                   completed=completed, final_poi=final_poi, final_time=final_time,
                                   final_action=final_action))
            n_views_total += len(row)

            # Mechanisms 3 and 5: a completed visit to a chain's key continues the session along the chain,
            # starting from the place just visited, which is why complementary partners end up co-visited.
            cont = (completed & (city.CHAIN_MATRIX[cat].sum(axis=1) > 0)
                    & (rng.uniform("chain", u_k, s_k, k) < min(1.0, CHAIN_CONTINUE * cfg.covisit_chains)))
            stay = 1200 + rng.integers("stay", 2400, u_k, s_k, k)
            active, prev_cat = active[cont], cat[cont]
            x, y = self.pois.x[final_poi[cont]], self.pois.y[final_poi[cont]]
            t = (final_time + stay)[cont]

        steps = Steps(**{name: np.concatenate([p[name] for p in step_parts]) for name in step_parts[0]})
        return steps, Events.concat(view_parts)

    # ---- requests ---------------------------------------------------------------------------------------

    def requests(self, chunk: np.ndarray, steps: Steps, views: Events, organic: Events) -> Requests:
        """Ranking requests after the warm-up, each placed just before one event of a step."""
        cfg, rng = self.config, self.rng
        n_req = np.clip(np.rint(cfg.requests_per_user * np.exp(0.4 * rng.normal("n_requests", chunk) - 0.08)),
                        1, 999).astype(np.int64)
        eligible = np.flatnonzero((steps.t_start >= cfg.warmup_days * 86400) & (steps.t_start < cfg.days * 86400))
        eligible = eligible[np.lexsort((steps.t_start[eligible], steps.user[eligible]))]
        pos = np.searchsorted(chunk, steps.user[eligible])
        first = np.searchsorted(pos, np.arange(len(chunk)), "left")
        count = np.searchsorted(pos, np.arange(len(chunk)), "right") - first
        n_req = np.where(count > 0, n_req, 0)
        owner = np.repeat(np.arange(len(chunk)), n_req)
        r = ranks(owner)
        user = chunk[owner]
        step = eligible[first[owner] + rng.integers("request_step", count[owner], user, r)]
        # Requests come while browsing: after at least one of the step's views when it has any.
        n_views = steps.n_views[step]
        slot = np.where(n_views > 0, 1 + rng.integers("request_slot", np.maximum(n_views, 1), user, r), 0)
        _, unique = np.unique(step * (MAX_VIEWS + 1) + slot, return_index=True)
        unique = np.sort(unique)
        user, r, step, slot = user[unique], r[unique], step[unique], slot[unique]

        # The request happens 20-39 s before the step's event number `slot` (a view, or the visit / end of step).
        has_view = slot < steps.n_views[step]
        view_t = views.time[np.where(has_view, steps.view_offset[step] + slot, 0)] if len(views.time) else 0
        end_t = np.where(steps.completed[step], steps.final_time[step],
                         np.maximum(steps.t_start[step], _last_view_time(steps, views, step)) + 120)
        time = np.where(has_view, view_t, end_t) - 20 - rng.integers("request_offset", 20, user, r)
        time = np.maximum(time, steps.t_start[step] - 30)
        hour = (time % 86400) // 3600
        intent = steps.cat[step]

        # Mechanism 3 (observable side): a search states the intent; its query comes from the query bank.
        n_q = np.array([len(q) for q in self.query_ids_by_cat])[intent]
        search = (rng.uniform("scene", user, r) < cfg.search_share) & (n_q > 0)
        pick = rng.integers("query", np.maximum(n_q, 1), user, r)
        query_id = np.array([self.query_ids_by_cat[c][p] if s else 0 for c, p, s in zip(intent, pick, search)],
                            dtype=np.int64)
        sid = steps.sid[step]
        order = np.lexsort((time, user))
        req = Requests(request_id=(user + 1) * 1000 + r, user=user, time=time, hour=hour, weekday=(time // 86400) % 7,
                       weather=self.weather_at(time), x=steps.x[step], y=steps.y[step], intent=intent, sid=sid,
                       session_events=np.zeros(len(user), dtype=np.int64), query_id=query_id,
                       query_cat=np.where(search, intent, -1)).take(order)
        # Events of the same session before the request (organic events are sorted by (user, time)).
        key_ev = time_key(organic.sid, organic.time)
        key_req = time_key(req.sid, req.time)
        sorted_keys = np.sort(key_ev)
        req.session_events = (np.searchsorted(sorted_keys, key_req, "left")
                              - np.searchsorted(sorted_keys, time_key(req.sid, 0), "left"))
        return req

    # ---- impressions ------------------------------------------------------------------------------------

    def impressions(self, req: Requests) -> Impressions:
        """Candidates per request from a retrieval-like sampler, ordered by a noisy logging policy, labelled."""
        cfg, rng, users = self.config, self.rng, self.users
        n = len(req.request_id)
        row = np.repeat(np.arange(n), CANDIDATE_DRAWS)
        draw = np.tile(np.arange(CANDIDATE_DRAWS), n)
        rid = req.request_id[row]
        ctx = req.context().take(row)
        slot = city.HOUR_SLOT[ctx.hour]
        source = rng.uniform("cand_source", rid, draw)
        intent_share = np.where(req.query_cat[row] >= 0, 0.7, 0.35)
        taste = softmax_rows(cfg.longterm_interest * users.cat_pref[ctx.user] + city.SLOT_AFFINITY[slot])
        popular = city.CAT_POPULARITY[None, :] * np.exp(city.SLOT_AFFINITY[slot])
        cat = np.where(source < intent_share, req.intent[row],
                       np.where(source < intent_share + 0.25, rng.categorical("cand_taste", taste, rid, draw),
                                rng.categorical("cand_popular", popular, rid, draw)))
        poi = self.choose(ctx, cat, "cand_poi", (rid, draw), retrieval=True)
        # De-duplicate within a request, keep the first `candidates_per_request`.
        _, first = np.unique(row * len(self.pois) + poi, return_index=True)
        keep = np.zeros(len(row), dtype=bool)
        keep[first] = True
        keep &= segment_cumsum(keep.astype(np.int64), row) <= cfg.candidates_per_request
        row, poi = row[keep], poi[keep]
        rid, ctx = req.request_id[row], req.context().take(row)

        # The logging policy: a noisy view of the truth (without position) decides the displayed order, so
        # position is confounded with relevance as in real logs.
        no_pos = click_logit(cfg, users, self.pois, ctx, poi, req.intent[row], np.ones(len(row)))
        policy = 0.5 * (sum(no_pos.values()) - no_pos["user_bias"]) + rng.normal("policy", rid, poi)
        order = np.lexsort((-policy, row))
        row, poi, rid = row[order], poi[order], rid[order]
        ctx = req.context().take(row)
        position = ranks(row) + 1
        terms = click_logit(cfg, users, self.pois, ctx, poi, req.intent[row], position)
        p_click = sigmoid(sum(terms.values()))
        p_cvr = sigmoid(cvr_logit(cfg, users, self.pois, ctx, poi, terms))
        # Mechanism 7: labels are Bernoulli draws from the true probabilities.
        click = rng.uniform("click", rid, poi) < p_click
        order_label = click & (rng.uniform("order_label", rid, poi) < p_cvr)
        return Impressions(row, poi, position, terms, p_click, p_cvr, click, order_label)

    def clicked_events(self, req: Requests, imp: Impressions) -> Events:
        """Clicked impressions as `visits` events, a few seconds after their request."""
        hit = np.flatnonzero(imp.click)
        r = imp.req[hit]
        return Events(req.user[r], req.time[r] + 1 + imp.position[hit], imp.poi[hit],
                      np.where(imp.order[hit], city.ORDER, city.CLICK), req.x[r], req.y[r], req.sid[r],
                      req.request_id[r])


def organic_events(steps: Steps, views: Events) -> Events:
    """Views plus completed visits (`order` / `navigate` at the step's chosen place), unsorted."""
    done = np.flatnonzero(steps.completed)
    finals = Events(steps.user[done], steps.final_time[done], steps.final_poi[done], steps.final_action[done],
                    steps.x[done], steps.y[done], steps.sid[done], np.zeros(len(done), dtype=np.int64))
    return Events.concat([views, finals])


def sort_events(events: Events) -> Events:
    return events.take(np.lexsort((events.action, events.poi, events.time, events.user)))


def _last_view_time(steps: Steps, views: Events, step: np.ndarray) -> np.ndarray:
    has = steps.n_views[step] > 0
    idx = np.where(has, steps.view_offset[step] + steps.n_views[step] - 1, 0)
    return np.where(has, views.time[idx] if len(views.time) else 0, steps.t_start[step])


def time_key(group: np.ndarray, time: np.ndarray) -> np.ndarray:
    """One sortable int64 per (group, time) with time < 2^24 s (194 days)."""
    return group.astype(np.int64) * (1 << 24) + time


def ranks(group: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal values (`group` must be grouped)."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[True, group[1:] != group[:-1]]
    idx = np.arange(len(group))
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def segment_cumsum(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum within runs of equal `group` values."""
    total = np.cumsum(values)
    if len(values) == 0:
        return total
    starts = np.r_[True, group[1:] != group[:-1]]
    base = np.maximum.accumulate(np.where(starts, np.arange(len(values)), 0))
    return total - (total - values)[base]
