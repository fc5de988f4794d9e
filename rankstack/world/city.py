"""The city's fixed knowledge: categories, their habits, complementary chains, attributes, brands, districts and
the query vocabulary (world.md §1-2).

Everything here is data, not randomness: the generator draws POIs, users and behaviour *around* these tables,
so two worlds with different seeds share one city "culture" (breakfast means bakeries, rain sends people
indoors, a hotel guest needs parking). Each table says which planted mechanism reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Time-of-day slots used by the hour × category interaction (mechanism 4). Index = slot id.
SLOTS = ("night", "breakfast", "lunch", "afternoon", "dinner", "evening")
#: Hour (0-23) → slot id.
HOUR_SLOT = np.array([0] * 6 + [1] * 4 + [2] * 4 + [3] * 3 + [4] * 4 + [5] * 3, dtype=np.int64)

WEATHERS = ("sunny", "cloudy", "rain")
WEATHER_SHARE = np.array([0.5, 0.3, 0.2])

ACTIONS = ("view", "click", "order", "navigate")
VIEW, CLICK, ORDER, NAVIGATE = 1, 2, 3, 4  # raw action ids in `visits` and the `*_action` sequences

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
INCOME_BANDS = ("low", "lower-middle", "upper-middle", "high")  # raw ids 1..4

ATTRIBUTES = ("spicy", "vegetarian", "parking", "24h", "pet_friendly", "wifi", "view", "ev_charging",
              "outdoor_seating", "kids_friendly", "live_music", "smoking")
ATTR_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}

#: How queries phrase attributes: (positive phrase, negation phrase or None when a negation sounds wrong).
ATTR_PHRASES = {
    "spicy": ("spicy", "not spicy"),
    "vegetarian": ("vegetarian", None),
    "parking": ("with parking", None),
    "24h": ("open 24 hours", None),
    "pet_friendly": ("pet friendly", "without pets around"),
    "wifi": ("with wifi", None),
    "view": ("with a view", None),
    "ev_charging": ("with EV charging", None),
    "outdoor_seating": ("with outdoor seating", None),
    "kids_friendly": ("kid friendly", None),
    "live_music": ("with live music", "without live music"),
    "smoking": ("smoking allowed", "non-smoking"),
}


@dataclass(frozen=True)
class Category:
    """One sub-category (category_l2) and the habits the mechanisms read.

    decay_km: distance scale of mechanism 1 (visit utility falls by `distance_decay · d / decay_km`): short for
        cheap everyday places, long for hotels and scenic spots.
    popularity: base share of sessions that start with this intent (before preferences and context).
    slots: hour × category affinity per slot of `SLOTS` (mechanism 4, 2nd order).
    indoor: weather × indoor interaction (mechanism 4).
    price: typical price level 1-4.
    order_share: share of completed visits logged as `order` rather than `navigate`.
    cvr: own conversion offset (mechanism 6).
    hours: typical (open, close) hour; close > 24 runs past midnight; (0, 24) is round the clock.
    attrs: attribute → probability that a POI of this category has it (others: 0.03).
    n_pois: fixed POI count instead of a share (airports, train stations), or 0.
    words: how queries name it.
    """

    l1: str
    l2: str
    decay_km: float
    popularity: float
    slots: tuple[float, float, float, float, float, float]
    indoor: bool
    price: int
    order_share: float
    cvr: float
    hours: tuple[int, int]
    attrs: dict[str, float] = field(default_factory=dict)
    n_pois: int = 0
    words: tuple[str, ...] = ()


#            night breakfast lunch afternoon dinner evening
_MEALS = (-1.5, -0.3, 0.9, -0.6, 0.9, -0.2)
_BREAKFAST = (-1.5, 1.2, 0.0, 0.1, -0.8, -1.2)
_DAYTIME = (-1.5, 0.0, 0.3, 0.6, 0.0, -0.8)
_NIGHTLIFE = (0.6, -2.0, -1.2, -0.6, 0.3, 1.2)
_EVENING = (-0.5, -1.5, -0.5, 0.2, 0.5, 0.9)
_ANYTIME = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
_WORKOUT = (-1.5, 0.8, -0.2, 0.1, 0.6, -0.2)
_SHOPPING = (-1.5, -0.5, 0.2, 0.7, 0.5, -0.4)

CATEGORIES: tuple[Category, ...] = (
    Category("Food", "Noodles", 1.5, 1.0, _MEALS, True, 1, 0.7, 0.5, (10, 22),
             {"spicy": 0.5, "vegetarian": 0.25, "wifi": 0.2, "outdoor_seating": 0.1}, words=("noodles", "noodle bar")),
    Category("Food", "Hotpot", 3.0, 0.7, (-0.8, -2.0, 0.2, -0.8, 1.2, 0.6), True, 3, 0.6, 0.0, (11, 25),
             {"spicy": 0.8, "vegetarian": 0.15, "parking": 0.3, "smoking": 0.2}, words=("hotpot",)),
    Category("Food", "Fast food", 1.2, 1.2, (0.0, 0.4, 0.8, -0.2, 0.4, 0.2), True, 1, 0.8, 0.8, (7, 23),
             {"spicy": 0.2, "wifi": 0.6, "kids_friendly": 0.7, "parking": 0.2}, words=("fast food", "burgers")),
    Category("Food", "Sushi", 3.0, 0.5, _MEALS, True, 3, 0.6, 0.0, (11, 22),
             {"spicy": 0.1, "vegetarian": 0.1, "parking": 0.2}, words=("sushi",)),
    Category("Food", "Bakery", 1.2, 0.7, _BREAKFAST, True, 2, 0.7, 0.6, (6, 19),
             {"vegetarian": 0.5, "wifi": 0.3, "outdoor_seating": 0.2}, words=("bakery", "pastries")),
    Category("Food", "Juice bar", 1.5, 0.4, _DAYTIME, True, 2, 0.7, 0.4, (8, 20),
             {"vegetarian": 0.8, "outdoor_seating": 0.3, "wifi": 0.3}, words=("juice bar", "smoothies")),
    Category("Food", "Restaurant", 3.0, 0.9, _MEALS, True, 3, 0.6, -0.2, (11, 23),
             {"spicy": 0.3, "vegetarian": 0.3, "parking": 0.3, "view": 0.15, "outdoor_seating": 0.3,
              "kids_friendly": 0.4, "live_music": 0.1, "wifi": 0.4}, words=("restaurant", "dinner place")),
    Category("Food", "Dessert", 2.0, 0.4, (-1.0, -1.0, 0.0, 0.8, 0.2, 0.5), True, 2, 0.7, 0.3, (11, 23),
             {"vegetarian": 0.4, "kids_friendly": 0.6, "outdoor_seating": 0.3}, words=("dessert", "ice cream")),
    Category("Drinks", "Café", 1.5, 1.1, (-1.5, 1.0, 0.2, 0.8, -0.6, -0.8), True, 2, 0.7, 0.5, (7, 20),
             {"wifi": 0.9, "vegetarian": 0.4, "pet_friendly": 0.3, "outdoor_seating": 0.4, "live_music": 0.1},
             words=("café", "coffee")),
    Category("Drinks", "Bar", 2.5, 0.6, _NIGHTLIFE, True, 3, 0.5, -0.1, (18, 26),
             {"live_music": 0.5, "smoking": 0.4, "outdoor_seating": 0.4, "view": 0.2, "pet_friendly": 0.2},
             words=("bar", "pub")),
    Category("Drinks", "Tea house", 2.0, 0.4, (-1.5, 0.2, 0.3, 0.9, -0.3, -0.8), True, 2, 0.6, 0.2, (9, 21),
             {"wifi": 0.6, "smoking": 0.2, "vegetarian": 0.5}, words=("tea house",)),
    Category("Lodging", "Hotel", 8.0, 0.35, (0.6, -0.8, -0.6, 0.0, 0.3, 1.0), True, 3, 0.4, -0.8, (0, 24),
             {"parking": 0.7, "wifi": 0.95, "view": 0.3, "pet_friendly": 0.3, "ev_charging": 0.2,
              "kids_friendly": 0.4}, words=("hotel",)),
    Category("Lodging", "Hostel", 6.0, 0.15, (0.6, -0.8, -0.6, 0.0, 0.3, 1.0), True, 1, 0.4, -0.3, (0, 24),
             {"wifi": 0.9, "pet_friendly": 0.1}, words=("hostel",)),
    Category("Transport", "Airport", 40.0, 0.12, _ANYTIME, True, 3, 0.1, -0.5, (0, 24),
             {"parking": 0.95, "wifi": 0.95, "ev_charging": 0.6}, n_pois=1, words=("airport",)),
    Category("Transport", "Train station", 20.0, 0.15, (-1.0, 0.6, 0.0, 0.0, 0.3, -0.3), True, 2, 0.1, -0.5,
             (5, 24), {"parking": 0.8, "wifi": 0.7}, n_pois=3, words=("train station",)),
    Category("Transport", "Parking", 1.0, 0.5, _ANYTIME, False, 2, 0.3, 0.6, (0, 24),
             {"ev_charging": 0.3}, words=("parking", "car park")),
    Category("Transport", "Charging station", 2.5, 0.3, _ANYTIME, False, 2, 0.5, 0.6, (0, 24),
             {"ev_charging": 1.0, "parking": 0.5}, words=("charging station", "EV charger")),
    Category("Transport", "Gas station", 2.0, 0.4, _ANYTIME, False, 2, 0.6, 0.8, (6, 23),
             {"ev_charging": 0.3, "parking": 0.3}, words=("gas station", "petrol station")),
    Category("Fitness", "Gym", 2.5, 0.6, _WORKOUT, True, 2, 0.6, 0.2, (6, 22),
             {"parking": 0.4, "wifi": 0.3}, words=("gym", "fitness club")),
    Category("Fitness", "Yoga studio", 2.5, 0.3, _WORKOUT, True, 3, 0.6, 0.0, (7, 21),
             {"wifi": 0.2}, words=("yoga studio", "yoga class")),
    Category("Fitness", "Swimming pool", 3.5, 0.25, _WORKOUT, True, 2, 0.5, 0.1, (6, 21),
             {"parking": 0.5, "kids_friendly": 0.7}, words=("swimming pool", "pool")),
    Category("Entertainment", "Cinema", 4.0, 0.5, _EVENING, True, 2, 0.8, 0.0, (10, 25),
             {"parking": 0.5, "kids_friendly": 0.6}, words=("cinema", "movie theater")),
    Category("Entertainment", "KTV", 4.0, 0.3, _NIGHTLIFE, True, 3, 0.7, -0.2, (14, 28),
             {"smoking": 0.5, "parking": 0.3}, words=("KTV", "karaoke")),
    Category("Entertainment", "Arcade", 3.5, 0.25, _EVENING, True, 2, 0.5, 0.0, (10, 23),
             {"kids_friendly": 0.8}, words=("arcade",)),
    Category("Scenic", "Park", 5.0, 0.5, (-1.5, 0.5, 0.0, 0.9, 0.2, -0.8), False, 1, 0.05, 0.0, (0, 24),
             {"pet_friendly": 0.9, "kids_friendly": 0.8, "view": 0.4, "parking": 0.5}, words=("park",)),
    Category("Scenic", "Viewpoint", 8.0, 0.25, (-0.8, 0.0, -0.3, 0.6, 0.8, 0.3), False, 1, 0.05, 0.0, (0, 24),
             {"view": 0.95, "parking": 0.4}, words=("viewpoint", "lookout")),
    Category("Scenic", "Museum", 7.0, 0.25, (-2.0, -0.8, 0.4, 0.9, -0.8, -2.0), True, 2, 0.5, 0.0, (9, 17),
             {"kids_friendly": 0.8, "parking": 0.4, "wifi": 0.4}, words=("museum",)),
    Category("Shopping", "Supermarket", 2.0, 0.8, _SHOPPING, True, 2, 0.7, 0.9, (8, 22),
             {"parking": 0.7, "ev_charging": 0.2}, words=("supermarket", "grocery store")),
    Category("Shopping", "Mall", 5.0, 0.5, _SHOPPING, True, 3, 0.4, 0.2, (10, 22),
             {"parking": 0.9, "kids_friendly": 0.8, "ev_charging": 0.4, "wifi": 0.7}, words=("mall",)),
    Category("Shopping", "Convenience store", 0.8, 0.8, (0.5, 0.3, 0.2, 0.0, 0.2, 0.6), True, 1, 0.8, 1.0, (0, 24),
             {}, words=("convenience store",)),
)

CAT_L2 = tuple(c.l2 for c in CATEGORIES)
CAT_L1 = tuple(dict.fromkeys(c.l1 for c in CATEGORIES))
L2_INDEX = {name: i for i, name in enumerate(CAT_L2)}
#: Arrays indexed by category_l2 index (ids in the data are index + 1).
L1_OF_L2 = np.array([CAT_L1.index(c.l1) for c in CATEGORIES], dtype=np.int64)
DECAY_KM = np.array([c.decay_km for c in CATEGORIES])
CAT_POPULARITY = np.array([c.popularity for c in CATEGORIES])
SLOT_AFFINITY = np.array([c.slots for c in CATEGORIES]).T  # [slot, category]
INDOOR = np.array([c.indoor for c in CATEGORIES], dtype=np.float64)
ORDER_SHARE = np.array([c.order_share for c in CATEGORIES])
CVR_OFFSET = np.array([c.cvr for c in CATEGORIES])

#: Share of POIs open round the clock in categories whose usual hours are not (0, 24); `24h` is read from hours.
ROUND_THE_CLOCK = {"Gym": 0.15, "Fast food": 0.15, "Noodles": 0.1, "Gas station": 0.3, "Café": 0.05, "Bar": 0.05}

#: Complementary chains (mechanisms 3 and 5): after a visit to the key, the session's next intent is one of
#: these categories with these weights. They also decide where partner POIs are placed (next to the key).
CHAINS: dict[str, dict[str, float]] = {
    "Airport": {"Hotel": 0.8, "Train station": 0.2},
    "Train station": {"Hotel": 0.6, "Noodles": 0.4},
    "Hotel": {"Parking": 0.6, "Restaurant": 0.4},
    "Gym": {"Juice bar": 0.7, "Café": 0.3},
    "Yoga studio": {"Juice bar": 0.6, "Café": 0.4},
    "Swimming pool": {"Juice bar": 1.0},
    "Cinema": {"Restaurant": 0.6, "Dessert": 0.4},
    "Restaurant": {"Bar": 0.5, "Cinema": 0.5},
    "Hotpot": {"KTV": 0.7, "Bar": 0.3},
    "Mall": {"Cinema": 0.5, "Fast food": 0.5},
    "Charging station": {"Café": 0.7, "Convenience store": 0.3},
    "Park": {"Café": 0.6, "Dessert": 0.4},
    "Museum": {"Café": 1.0},
    "Viewpoint": {"Restaurant": 1.0},
}
#: CHAIN_MATRIX[a, b] = P(next intent b | completed visit in a); rows of categories without chains are zero.
CHAIN_MATRIX = np.zeros((len(CATEGORIES), len(CATEGORIES)))
for _src, _partners in CHAINS.items():
    for _dst, _w in _partners.items():
        CHAIN_MATRIX[L2_INDEX[_src], L2_INDEX[_dst]] = _w

BRANDS: tuple[tuple[str, str, int], ...] = (  # (name, category_l2, price level)
    ("Lumen Coffee", "Café", 3), ("Daily Grind", "Café", 2), ("Kopi House", "Café", 1),
    ("Burger Baron", "Fast food", 1), ("Crispy Hen", "Fast food", 1), ("Taco Loco", "Fast food", 2),
    ("Red Lantern Noodles", "Noodles", 2), ("Slurp Street", "Noodles", 1),
    ("Grand Meridian", "Hotel", 4), ("Stayzy Inn", "Hotel", 2), ("Harbor Suites", "Hotel", 3),
    ("Petromax", "Gas station", 2), ("BlueFlame", "Gas station", 2),
    ("VoltHub", "Charging station", 2), ("ChargeNow", "Charging station", 3),
    ("FreshMart", "Supermarket", 2), ("ValueCart", "Supermarket", 1),
    ("QuickStop", "Convenience store", 1), ("7-Days", "Convenience store", 1),
    ("IronWorks Gym", "Gym", 3), ("FitLab", "Gym", 2),
    ("Starlight Cinemas", "Cinema", 3), ("ReelTime", "Cinema", 2),
    ("Squeeze", "Juice bar", 2), ("Golden Crust", "Bakery", 2), ("ParkEasy", "Parking", 2),
    ("Sushi Zen", "Sushi", 4), ("Dragon Pot", "Hotpot", 3), ("Sing Star", "KTV", 3),
)
#: Share of a branded category's POIs that belong to a chain brand.
BRANDED_SHARE = 0.5

DISTRICTS = ("Old Town", "Riverside", "Harbor", "Financial District", "University Park", "Greenfield", "Airport",
             "Hillcrest", "Lakeside", "Chinatown", "Station Square", "Westgate", "Eastbank", "Northpoint",
             "Southbay", "Midtown", "Maple Heights", "Ironworks", "Sunset Cliffs", "Garden Row", "Bayview",
             "Clocktower", "Silver Lake", "Market Street")
AIRPORT_DISTRICT = DISTRICTS.index("Airport")

#: Name parts for independent (unbranded) POIs.
NAME_ADJECTIVES = ("Golden", "Blue", "Red", "Little", "Happy", "Old", "Silver", "Green", "Lucky", "Quiet",
                   "Sunny", "Royal", "Hidden", "Urban", "Jade", "Copper", "Lotus", "Maple", "Velvet", "Harbor")
NAME_NOUNS = ("Dragon", "Door", "Lantern", "Bamboo", "Crane", "Garden", "Bridge", "River", "Moon", "Tiger",
              "Leaf", "Corner", "Stone", "Cloud", "Pine", "Fox", "Bell", "Willow", "Peak", "Anchor")

#: Knowledge queries (mechanism 9): phrases that reach a category (and maybe an attribute) only through world
#: knowledge: none of them contains the category's own words.
KNOWLEDGE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("somewhere to charge my car", "Charging station", ()),
    ("where can I watch the sunset", "Viewpoint", ("view",)),
    ("need a caffeine fix", "Café", ()),
    ("a place to crash for the night", "Hotel", ()),
    ("a cheap bed for backpackers", "Hostel", ()),
    ("leave my car for a few hours", "Parking", ()),
    ("catch a flight", "Airport", ()),
    ("catch a train out of town", "Train station", ()),
    ("fill up the tank", "Gas station", ()),
    ("work off some calories", "Gym", ()),
    ("stretch and breathe", "Yoga studio", ()),
    ("do some laps", "Swimming pool", ()),
    ("a fresh smoothie", "Juice bar", ()),
    ("sing my heart out with friends", "KTV", ()),
    ("see the latest blockbuster", "Cinema", ()),
    ("grab groceries for the week", "Supermarket", ()),
    ("a late-night snack at 3am", "Convenience store", ("24h",)),
    ("a romantic dinner with a view", "Restaurant", ("view",)),
    ("something warming and spicy on a cold evening", "Hotpot", ("spicy",)),
    ("somewhere the kids can run around outside", "Park", ("kids_friendly",)),
    ("learn about the city's history", "Museum", ()),
    ("a pint after work", "Bar", ()),
    ("fresh croissants in the morning", "Bakery", ()),
    ("raw fish on rice", "Sushi", ()),
    ("a bowl of ramen", "Noodles", ()),
    ("a calm cup of oolong", "Tea house", ()),
    ("retro video games", "Arcade", ()),
    ("a sweet treat", "Dessert", ()),
    ("all the shops under one roof", "Mall", ()),
    ("a quick bite between meetings", "Fast food", ()),
)


def is_open(open_hour: np.ndarray, close_hour: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """Whether a place with these hours is open at `hour` (close > 24 runs past midnight)."""
    wrapped = close_hour > 24
    inside = (hour >= open_hour) & (hour < close_hour)
    return np.where(wrapped, (hour >= open_hour) | (hour < close_hour - 24), inside)
