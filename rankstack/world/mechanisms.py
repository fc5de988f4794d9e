"""The planted mechanisms as one function of (user, context, POI): the truth behind every label (world.md §2).

The same terms drive everything the world does, so behaviour and labels are coherent:
- a session's starting intent is drawn from the category terms (`category_terms`);
- the POI a user views or visits within a category is drawn from the POI terms (`poi_terms`);
- the click logit of an impression is their sum plus real-time intent and position (`click_logit`);
- the order-given-click logit has its own weights (`cvr_logit`).
`truth.py` calls these same functions, so later stages can score any (request, POI) pair.

Every term is scaled by its knob in `WorldConfig` and is exactly 0 when the knob is 0. Each term's comment says
which model should win or lose because of it. All arrays broadcast, so one call scores a [rows] batch of
impressions or a [rows, pois] utility matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankstack.world import city
from rankstack.world.config import WorldConfig
from rankstack.world.places import Pois, Users

#: Intercepts that put CTR near 10 % and CVR given click near 20 % at the default knobs.
CLICK_BIAS = -2.45
CVR_BIAS = -1.5
#: Weather × indoor effect, [weather, indoor]: rain sends people indoors, sun outdoors.
WEATHER_INDOOR = np.array([[0.4, 0.0],   # sunny: outdoor +0.4
                           [0.0, 0.0],   # cloudy
                           [-1.2, 0.3]])  # rain: outdoor -1.2, indoor +0.3
INTENT_MATCH = 1.6
INTENT_NEAR = 0.4
POSITION_SLOPE = 0.3

#: The click logit's named parts, in the order `click_logit` returns them (truth columns `logit_<name>`).
CLICK_TERMS = ("base", "user_bias", "longterm_category", "hour_x_category", "weather_x_indoor", "quality",
               "distance", "longterm_brand_price", "loyalty_x_brand", "distance_x_price_x_income", "rating_x_price",
               "opening_hours", "realtime_intent", "position")


@dataclass
class Context:
    """Where and when a decision happens: the user index, hour 0-23, weather id, origin (km)."""

    user: np.ndarray
    hour: np.ndarray
    weather: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def take(self, rows: np.ndarray) -> Context:
        return Context(self.user[rows], self.hour[rows], self.weather[rows], self.x[rows], self.y[rows])

    def column(self) -> Context:
        """The same context as [rows, 1] arrays, to broadcast against [1, pois]."""
        return Context(self.user[:, None], self.hour[:, None], self.weather[:, None], self.x[:, None], self.y[:, None])


def category_terms(config: WorldConfig, users: Users, ctx: Context, cat: np.ndarray) -> dict[str, np.ndarray]:
    """Terms that depend on the category, not on the place: they decide *what* a user wants."""
    return {
        # Mechanism 2: stable interest in categories. Visible only through behaviour, i.e. the long-term
        # sequence and history crosses; HeMix's fixed queries over the global sequence should capture it, and
        # a model that uses only the real-time sequence (or neither) loses it.
        "longterm_category": config.longterm_interest * 0.5 * users.cat_pref[ctx.user, cat],
        # Mechanism 4 (2nd order): hour × category (bakeries at breakfast, bars at night).
        "hour_x_category": config.interaction_order * 0.6 * city.SLOT_AFFINITY[city.HOUR_SLOT[ctx.hour], cat],
        # Mechanism 4 (2nd order): weather × indoor.
        "weather_x_indoor": config.interaction_order * WEATHER_INDOOR[ctx.weather, city.INDOOR[cat].astype(np.int64)],
    }


def travel_km(pois: Pois, ctx: Context, poi: np.ndarray) -> np.ndarray:
    return np.hypot(pois.x[poi] - ctx.x, pois.y[poi] - ctx.y)


def poi_terms(config: WorldConfig, users: Users, pois: Pois, ctx: Context, poi: np.ndarray) -> dict[str, np.ndarray]:
    """Terms that depend on the place: they decide *which* place of a category a user picks or clicks."""
    u = ctx.user
    cat = pois.cat[poi]
    price = pois.price[poi].astype(np.float64)
    d = travel_km(pois, ctx, poi)
    income = users.income[u].astype(np.float64)
    open_now = city.is_open(pois.open_hour[poi], pois.close_hour[poi], ctx.hour)
    interact = config.interaction_order
    return {
        # Item quality, seen through `rating` and `review_count` (no knob: every ranker can learn it).
        "quality": 0.4 * pois.quality[poi],
        # Mechanism 1: distance decay, steeper for everyday categories (decay_km 1 km for parking, 8 km for
        # hotels). `distance_km` is the costly cross that carries it; `district_distance_km` its cheap proxy.
        "distance": -config.distance_decay * 0.4 * d / city.DECAY_KM[cat],
        # Mechanism 2: brand and price preferences (latent, learnable from the brands and price levels in the
        # long-term sequence). Loyal members weigh their brand taste more: a 3rd-order term.
        "longterm_brand_price": config.longterm_interest * (
            (0.2 + 0.3 * users.loyalty[u]) * users.brand_pref[u, pois.brand[poi]]
            - 0.35 * users.price_sens[u] * np.abs(price - users.pref_price[u])),
        # Mechanism 4 (2nd order): loyalty band × chain brand (members favour chains, others independents).
        "loyalty_x_brand": interact * 0.5 * (users.loyalty[u] - 1.0) * (pois.brand[poi] > 0),
        # Mechanism 4 (3rd order): distance × price level × income band: the well-off travel for upmarket
        # places, the rest do not. A plain MLP approximates this poorly; explicit crosses (DCNv2, HeteroMixer)
        # should do better.
        "distance_x_price_x_income": interact * 0.05 * d * (price - 2.5) * (income - 2.5),
        # Mechanism 4 (2nd order): rating × price: an expensive place needs a high rating.
        "rating_x_price": interact * 0.6 * (pois.rating[poi] - 4.0) * (price - 2.5),
        # Mechanism 4 (3rd order): hour × opening hours: closed places are rarely clicked.
        "opening_hours": interact * -1.0 * (~open_now),
    }


def intent_term(config: WorldConfig, intent: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """Mechanism 3: the click boost of matching the session's current intent (a same-l1 near miss gets a little).

    The intent is latent; the last ~20 events reveal it (views of the intent category, or the completed visit
    that precedes it in a complementary chain), and a search query states it. Target-aware attention over the
    real-time sequence (DIN, HeMix's dynamic queries) should capture it; mean-pooling or the long-term sequence
    alone should not; with `realtime_intent: 0` the HeMix real-time ablations should stop mattering.
    """
    same = cat == intent
    near = (city.L1_OF_L2[cat] == city.L1_OF_L2[intent]) & ~same
    return config.realtime_intent * (INTENT_MATCH * same + INTENT_NEAR * near)


def position_term(config: WorldConfig, position: np.ndarray) -> np.ndarray:
    """Mechanism 7: displayed position lowers the click logit (0 at position 1)."""
    return -config.position_bias * POSITION_SLOPE * np.log2(np.maximum(position, 1))


def click_logit(config: WorldConfig, users: Users, pois: Pois, ctx: Context, poi: np.ndarray, intent: np.ndarray,
                position: np.ndarray) -> dict[str, np.ndarray]:
    """All named click-logit terms (`CLICK_TERMS`) of impressions; their sum is the logit of `p_click`."""
    cat = pois.cat[poi]
    shape = np.broadcast_shapes(np.shape(poi), np.shape(ctx.user))
    terms = {"base": np.full(shape, CLICK_BIAS), "user_bias": np.broadcast_to(users.bias[ctx.user], shape)}
    terms.update(category_terms(config, users, ctx, cat))
    terms.update(poi_terms(config, users, pois, ctx, poi))
    terms["realtime_intent"] = intent_term(config, intent, cat)
    terms["position"] = position_term(config, position)
    return {name: np.asarray(terms[name], dtype=np.float64) for name in CLICK_TERMS}


def cvr_logit(config: WorldConfig, users: Users, pois: Pois, ctx: Context, poi: np.ndarray,
              click_terms: dict[str, np.ndarray]) -> np.ndarray:
    """Mechanism 6: order given click. Its own weights: signed price gap × sensitivity (cheaper converts), a
    stronger rating effect, plain distance, and per-category offsets; at `conversion: 0` it is a rescaled copy
    of the click logit (without position), so separate CTR and CVR towers only pay off when the knob is on."""
    u = ctx.user
    cat = pois.cat[poi]
    own = (city.CVR_OFFSET[cat] - 0.8 * users.price_sens[u] * (pois.price[poi] - users.pref_price[u])
           + 1.0 * (pois.rating[poi] - 4.0) - 0.12 * travel_km(pois, ctx, poi))
    shared = sum(v for k, v in click_terms.items() if k not in ("base", "position"))
    return CVR_BIAS + config.conversion * own + (1.0 - config.conversion) * 0.6 * shared


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
