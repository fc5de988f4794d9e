"""The city's places and people: districts, POIs and users with their latent traits (world.md §1, §2.1-2.2).

Coordinates are kilometres on a 20 × 20 km plane; `to_latlon` maps them to degrees around a fixed origin for the
`lat`/`lon` columns. POIs and districts are drawn once per world with `np.random.Generator`; user traits are
keyed by user id (`KeyedRandom`), so user 17 is the same person whatever the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankstack.world import city
from rankstack.world.config import WorldConfig
from rankstack.world.keyed import KeyedRandom

CITY_KM = 20.0
LAT0, LON0 = 31.10, 121.30  # the south-west corner of the city
KM_PER_DEG_LAT = 111.195
KM_PER_DEG_LON = KM_PER_DEG_LAT * float(np.cos(np.radians(LAT0 + CITY_KM / 2 / KM_PER_DEG_LAT)))
GRID_KM = 1.0  # grid cells for the `*_grid` features
GRID_SIDE = int(CITY_KM / GRID_KM)


def to_latlon(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return LAT0 + y / KM_PER_DEG_LAT, LON0 + x / KM_PER_DEG_LON


def grid_cell(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 km cell id (1-based) of a point."""
    gx = np.clip((x / GRID_KM).astype(np.int64), 0, GRID_SIDE - 1)
    gy = np.clip((y / GRID_KM).astype(np.int64), 0, GRID_SIDE - 1)
    return 1 + gx * GRID_SIDE + gy


@dataclass
class Districts:
    """District centres (km), spreads (km), sizes and business share; index = district id - 1."""

    names: list[str]
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    size: np.ndarray
    business: np.ndarray
    airport: int  # index of the airport district

    def nearest(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Index of the nearest district centre of each point."""
        d2 = (x[..., None] - self.x) ** 2 + (y[..., None] - self.y) ** 2
        return np.argmin(d2, axis=-1)


@dataclass
class Pois:
    """All POIs as arrays; index i is `poi_id` i + 1. `cat` is the category_l2 index, `brand` 0 for none."""

    x: np.ndarray
    y: np.ndarray
    cat: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    rating: np.ndarray
    quality: np.ndarray  # latent; `rating` is its noisy public trace
    reviews: np.ndarray
    district: np.ndarray
    open_hour: np.ndarray
    close_hour: np.ndarray
    attrs: np.ndarray  # [n, n_attrs] bool, the truth
    recorded: np.ndarray  # [n, n_attrs] bool, whether the record states the attribute at all
    names: list[str]
    descriptions: list[str]

    def __len__(self) -> int:
        return len(self.x)

    def by_category(self) -> list[np.ndarray]:
        """POI indices of each category_l2 index (sorted)."""
        return [np.flatnonzero(self.cat == c) for c in range(len(city.CATEGORIES))]


@dataclass
class Users:
    """All users as arrays; index i is `user_id` i + 1. Observable profile and latent traits (truth only)."""

    home_x: np.ndarray
    home_y: np.ndarray
    work_x: np.ndarray
    work_y: np.ndarray
    age: np.ndarray  # band 0..4
    income: np.ndarray  # band 1..4
    loyalty: np.ndarray  # membership band 0..2, observable
    cat_pref: np.ndarray  # [n, n_categories] latent log-preference (log-normal weights)
    brand_pref: np.ndarray  # [n, n_brands + 1] latent, column 0 (no brand) is 0
    pref_price: np.ndarray  # latent preferred price level
    price_sens: np.ndarray  # latent price sensitivity
    bias: np.ndarray  # latent click propensity
    activity: np.ndarray  # latent activity multiplier

    def __len__(self) -> int:
        return len(self.home_x)


def make_districts(config: WorldConfig, rng: np.random.Generator) -> Districts:
    n = config.n_districts
    names = list(city.DISTRICTS[:n])
    airport = names.index("Airport") if "Airport" in names else n - 1
    xs, ys = [], []
    while len(xs) < n:  # rejection sampling keeps centres apart, so districts are distinct clusters
        x, y = rng.uniform(2.5, CITY_KM - 2.5, size=2)
        if all((x - a) ** 2 + (y - b) ** 2 > (CITY_KM / (1.6 * np.sqrt(n))) ** 2 for a, b in zip(xs, ys)):
            xs.append(float(x))
            ys.append(float(y))
    x, y = np.array(xs), np.array(ys)
    x[airport], y[airport] = CITY_KM - 1.5, 1.5  # the airport sits at the edge of town
    sigma = rng.uniform(0.7, 1.5, size=n)
    sigma[airport] = 0.6
    size = rng.uniform(0.6, 1.4, size=n)
    business = rng.uniform(0.0, 1.0, size=n)
    size[airport], business[airport] = 0.25, 0.2
    return Districts(names, x, y, sigma, size, business, airport)


#: How much each top-level category leans to business (+) or residential/green (-) districts.
_BUSINESS_LEAN = {"Food": 0.8, "Drinks": 1.0, "Lodging": 1.2, "Transport": 0.0, "Fitness": 0.5,
                  "Entertainment": 0.6, "Scenic": -1.5, "Shopping": 0.0}
#: Categories found in the airport district besides the airport itself.
_AIRPORT_CATEGORIES = {"Airport", "Hotel", "Parking", "Fast food", "Café", "Charging station", "Convenience store"}


def make_pois(config: WorldConfig, districts: Districts, rng: np.random.Generator) -> Pois:
    cats = city.CATEGORIES
    n = config.n_pois
    fixed = np.array([c.n_pois for c in cats])
    share = np.where(fixed > 0, 0.0, city.CAT_POPULARITY)
    counts = np.where(fixed > 0, fixed, 0)
    free = n - counts.sum()
    counts = counts + np.floor(share / share.sum() * free).astype(np.int64)
    counts[np.argmax(share)] += n - counts.sum()
    cat = np.repeat(np.arange(len(cats)), counts)

    # Districts: business-leaning categories sit downtown, parks in green districts; airport only near the airport.
    lean = np.array([_BUSINESS_LEAN[c.l1] for c in cats])
    weight = districts.size[None, :] * np.exp(lean[:, None] * (districts.business[None, :] - 0.5) * 2.0)
    in_airport = np.array([c.l2 in _AIRPORT_CATEGORIES for c in cats])
    weight[:, districts.airport] *= np.where(in_airport, 1.0, 0.02)
    weight[city.L2_INDEX["Airport"]] = 0.0
    weight[city.L2_INDEX["Airport"], districts.airport] = 1.0
    weight /= weight.sum(axis=1, keepdims=True)
    cdf = np.cumsum(weight[cat], axis=1)
    district = np.minimum((cdf < rng.uniform(size=n)[:, None]).sum(axis=1), len(districts.x) - 1)
    x = districts.x[district] + rng.normal(size=n) * districts.sigma[district]
    y = districts.y[district] + rng.normal(size=n) * districts.sigma[district]

    # Mechanism 5 (co-visitation): partners of a complementary chain open next to the place that feeds them
    # (a car park beside each hotel, a juice bar beside each gym). Chains then make users visit the pair in one
    # session, so the pair is co-visited, close, and textually unrelated: GeoGR's geo-constrained co-visit
    # contrastive loss can find it, text-only semantic IDs cannot.
    place_share = min(1.0, 0.8 * config.covisit_chains)
    moved = np.zeros(n, dtype=bool)
    for src, partners in city.CHAINS.items():
        src_pois = np.flatnonzero(cat == city.L2_INDEX[src])
        for dst, w in partners.items():
            per_anchor = 3 if cats[city.L2_INDEX[src]].n_pois else 1
            anchors = np.repeat(src_pois[rng.uniform(size=len(src_pois)) < place_share * w], per_anchor)
            pool = np.flatnonzero((cat == city.L2_INDEX[dst]) & ~moved)
            take = min(len(anchors), len(pool))
            chosen = rng.permutation(pool)[:take]
            x[chosen] = x[anchors[:take]] + rng.normal(size=take) * 0.25
            y[chosen] = y[anchors[:take]] + rng.normal(size=take) * 0.25
            moved[chosen] = True
    x = np.clip(x, 0.05, CITY_KM - 0.05)
    y = np.clip(y, 0.05, CITY_KM - 0.05)
    district = districts.nearest(x, y)

    # Brands: half of a branded category's places belong to a chain, which fixes their price level.
    brand = np.zeros(n, dtype=np.int64)
    brand_price = np.array([0] + [p for _, _, p in city.BRANDS])
    for c in range(len(cats)):
        ids = [b + 1 for b, (_, l2, _) in enumerate(city.BRANDS) if l2 == cats[c].l2]
        members = np.flatnonzero(cat == c)
        if ids:
            branded = members[rng.uniform(size=len(members)) < city.BRANDED_SHARE]
            brand[branded] = rng.choice(ids, size=len(branded))
    base_price = np.array([c.price for c in cats])[cat]
    price = np.clip(np.rint(base_price + rng.normal(size=n) * 0.7), 1, 4).astype(np.int64)
    price = np.where(brand > 0, brand_price[brand], price)

    brand_quality = np.concatenate([[0.0], rng.normal(size=len(city.BRANDS)) * 0.5])
    quality = np.where(brand > 0, brand_quality[brand] + rng.normal(size=n) * 0.5, rng.normal(size=n))
    rating = np.clip(np.round(4.0 + 0.35 * quality + rng.normal(size=n) * 0.2, 1), 2.5, 5.0)
    reviews = np.rint(np.exp(3.0 + 0.5 * quality + np.log(city.CAT_POPULARITY[cat]) + rng.normal(size=n) * 0.8))

    hours = np.array([c.hours for c in cats])[cat]
    round_clock = (hours[:, 0] == 0) & (hours[:, 1] == 24)
    jitter = rng.integers(-1, 2, size=(n, 2))
    open_hour = np.where(round_clock, 0, np.clip(hours[:, 0] + jitter[:, 0], 0, 23))
    close_hour = np.where(round_clock, 24, hours[:, 1] + jitter[:, 1])
    share_24h = np.array([city.ROUND_THE_CLOCK.get(c.l2, 0.0) for c in cats])[cat]
    make_24h = rng.uniform(size=n) < share_24h
    open_hour = np.where(make_24h, 0, open_hour)
    close_hour = np.where(make_24h, 24, close_hour)

    attr_p = np.full((len(cats), len(city.ATTRIBUTES)), 0.03)
    for c, spec in enumerate(cats):
        for a, p in spec.attrs.items():
            attr_p[c, city.ATTR_INDEX[a]] = p
    attrs = rng.uniform(size=(n, len(city.ATTRIBUTES))) < attr_p[cat]
    attrs[:, city.ATTR_INDEX["24h"]] = (open_hour == 0) & (close_hour == 24)
    # Records are incomplete: 8 % of (place, attribute) facts are not stated, which the relevance rules read as
    # "unknown" (world.md §2.9). Opening hours, and EV charging at charging stations, are always stated.
    recorded = rng.uniform(size=attrs.shape) >= 0.08
    recorded[:, city.ATTR_INDEX["24h"]] = True
    recorded[cat == city.L2_INDEX["Charging station"], city.ATTR_INDEX["ev_charging"]] = True

    names, descriptions = _texts(cats, cat, brand, price, rating, attrs & recorded, district, districts, rng)
    return Pois(x, y, cat, brand, price, rating, quality, reviews, district, open_hour, close_hour, attrs, recorded,
                names, descriptions)


_PRICE_WORDS = ("", "budget", "moderately priced", "upmarket", "luxury")


def _texts(cats: tuple[city.Category, ...], cat: np.ndarray, brand: np.ndarray, price: np.ndarray,
           rating: np.ndarray, stated: np.ndarray, district: np.ndarray, districts: Districts,
           rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """POI names and descriptions. Partners of a chain share no words, by construction of the templates."""
    adjectives = rng.integers(len(city.NAME_ADJECTIVES), size=len(cat))
    nouns = rng.integers(len(city.NAME_NOUNS), size=len(cat))
    names, descriptions = [], []
    seen: dict[str, int] = {}
    for i in range(len(cat)):
        spec = cats[cat[i]]
        where = districts.names[district[i]]
        if spec.l2 == "Airport":
            name = "Meridian International Airport"
        elif spec.l2 == "Train station":
            name = f"{where} Station"
        elif brand[i]:
            name = f"{city.BRANDS[brand[i] - 1][0]} {where}"
        else:
            name = f"{city.NAME_ADJECTIVES[adjectives[i]]} {city.NAME_NOUNS[nouns[i]]} {spec.words[0].title()}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        names.append(name)
        offers = [city.ATTR_PHRASES[a][0] for a, on in zip(city.ATTRIBUTES, stated[i]) if on]
        text = f"{name} is a {_PRICE_WORDS[price[i]]} {spec.words[0]} in {where}, rated {rating[i]:.1f}."
        if offers:
            text += " Known for being " + ", ".join(offers) + "."
        descriptions.append(text)
    return names, descriptions


def make_users(config: WorldConfig, districts: Districts, seed: int) -> Users:
    """Users with homes in residential districts and jobs downtown; latent traits for the mechanisms."""
    rng = KeyedRandom(seed)
    n = config.n_users
    uid = np.arange(n)
    n_cats, n_brands = len(city.CATEGORIES), len(city.BRANDS)
    live = districts.size * (1.2 - districts.business)
    live[districts.airport] = 0.0
    work = districts.size * (0.2 + districts.business)
    work[districts.airport] *= 0.3
    home_d = rng.categorical("home_district", np.broadcast_to(live, (n, len(live))), uid)
    work_d = rng.categorical("work_district", np.broadcast_to(work, (n, len(work))), uid)
    spread = 1.2 * districts.sigma
    home_x = districts.x[home_d] + rng.normal("home_x", uid) * spread[home_d]
    home_y = districts.y[home_d] + rng.normal("home_y", uid) * spread[home_d]
    work_x = districts.x[work_d] + rng.normal("work_x", uid) * spread[work_d]
    work_y = districts.y[work_d] + rng.normal("work_y", uid) * spread[work_d]
    age = rng.categorical("age", np.broadcast_to([0.2, 0.3, 0.2, 0.15, 0.15], (n, 5)), uid)
    income = 1 + np.clip(rng.categorical("income", np.broadcast_to([0.25, 0.35, 0.25, 0.15], (n, 4)), uid)
                         + (age >= 2) * (rng.uniform("income_age", uid) < 0.3), 0, 3)
    loyalty = rng.categorical("loyalty", np.broadcast_to([0.4, 0.4, 0.2], (n, 3)), uid)

    # Mechanism 2 (long-term interest): log-normal preference weights over categories and brands, and a preferred
    # price level tied to income. They are fixed per user, so they shape the whole long history; a ranker can
    # only recover them from behaviour (the long-term sequence and the history crosses), never from `user_id`.
    cat_pref = rng.normal("cat_pref", uid[:, None], np.arange(n_cats)[None, :])
    brand_pref = np.concatenate(
        [np.zeros((n, 1)), rng.normal("brand_pref", uid[:, None], np.arange(n_brands)[None, :])], axis=1)
    pref_price = np.clip(1.0 + 0.6 * (income - 1) + 0.5 * rng.normal("pref_price", uid), 1.0, 4.0)
    price_sens = np.exp(0.4 * rng.normal("price_sens", uid)) * (1.3 - 0.2 * (income - 1))
    bias = 0.3 * rng.normal("user_bias", uid)
    activity = np.exp(0.5 * rng.normal("activity", uid) - 0.125)
    home_x, home_y, work_x, work_y = (np.clip(v, 0.05, CITY_KM - 0.05) for v in (home_x, home_y, work_x, work_y))
    return Users(home_x, home_y, work_x, work_y, age, income, loyalty, cat_pref, brand_pref, pref_price, price_sens,
                 bias, activity)
