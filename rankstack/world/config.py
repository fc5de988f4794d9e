"""`WorldConfig`: the size of the synthetic city and the strength of every planted mechanism (world.md §4).

A strength of 0 turns its mechanism off, 1 is the default, and values above 1 exaggerate it. Sizes are presets
(`WorldConfig.preset("small", realtime_intent=0.0)`); any field can be overridden, and unknown keys or wrong
types are `ConfigError`s that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankstack.config import from_dict
from rankstack.errors import ConfigError
from rankstack.world.city import DISTRICTS


@dataclass(frozen=True)
class WorldConfig:
    """One synthetic city.

    Size (presets `tiny`, `small`, `medium`, `large`):
        size: the preset this config started from (informational).
        n_pois: points of interest (default 2000).
        n_users: users (default 2000).
        n_districts: districts, clustered 2-D Gaussians in a 20 × 20 km city (at most 24; default 12).
        days: days of behaviour (default 90). Requests are sampled after `warmup_days` (default 45), so every
            request has a history; the last `test_days` (default 7) are the test split and the `valid_days`
            (default 7) before them the validation split.
        sessions_per_user: mean sessions of a user over `days` (log-normal across users; default 50).
        requests_per_user: mean ranking requests of a user after the warm-up (default 10).
        candidates_per_request: impressions shown per request, positions 1..N (default 10).
        search_share: share of requests that are searches (their query reveals the intent; default 0.2).
        n_queries: queries in the query bank, each with relevance pairs (default 1000).
        pairs_per_query: candidate POIs judged per query (default 12).
        chunk_users: users generated and written together; bounds memory. The output does not depend on it
            (all randomness is keyed by user, session and event, not drawn in chunk order; default 1024).

    Mechanisms (world.md §2; 0 turns one off):
        distance_decay: 1. visit/click utility falls with travel distance, faster for everyday categories.
        longterm_interest: 2. stable user preferences over categories, brands and price levels.
        realtime_intent: 3. click boost when the candidate matches the session's current intent.
        covisit_chains: 3./5. complementary chains (airport → hotel → parking) and partner POIs placed
            next to each other; scales the chance that a session continues along a chain, the share of partners
            placed next door and the extra per-km cost of a chain's later steps (users walk next door).
        interaction_order: 4. hour × category, weather × indoor, distance × price × income, loyalty × brand,
            rating × price and opening hours × hour.
        conversion: 6. order-given-click uses its own weights (price sensitivity, rating, distance); at 0 the
            CVR logit is a rescaled copy of the click logit, so CTR and CVR are the same task (in [0, 1]).
        position_bias: 7. displayed position lowers the click logit by 0.3·log2(position) at strength 1.
        noise_feature_count: 8. pure-noise feature fields in the ranking dataset (default 6).
        costly_feature_signal: 8. informativeness of the costly cross fields (distance and the user's history
            statistics on the candidate): at 1 they are exact, at s < 1 each value describes a random POI
            instead of the candidate with probability 1 − s (in [0, 1]).
        hard_query_share: 9. share of negation, alternative, question and knowledge queries (default 0.3).
    """

    size: str = "small"
    n_pois: int = 2000
    n_users: int = 2000
    n_districts: int = 12
    days: int = 90
    warmup_days: int = 45
    valid_days: int = 7
    test_days: int = 7
    sessions_per_user: float = 50.0
    requests_per_user: float = 10.0
    candidates_per_request: int = 10
    search_share: float = 0.2
    n_queries: int = 1000
    pairs_per_query: int = 12
    chunk_users: int = 1024

    distance_decay: float = 1.0
    longterm_interest: float = 1.0
    realtime_intent: float = 1.0
    covisit_chains: float = 1.0
    interaction_order: float = 1.0
    conversion: float = 1.0
    position_bias: float = 1.0
    noise_feature_count: int = 6
    costly_feature_signal: float = 1.0
    hard_query_share: float = 0.3

    def __post_init__(self) -> None:
        for name in ("n_pois", "n_users", "days", "candidates_per_request", "n_queries", "pairs_per_query",
                     "chunk_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.n_districts <= len(DISTRICTS):
            raise ValueError(f"`n_districts` must be between 1 and {len(DISTRICTS)}, got {self.n_districts}")
        if self.n_pois < 100:
            raise ValueError(f"`n_pois` must be at least 100 so every category has places, got {self.n_pois}")
        if self.valid_days < 1 or self.test_days < 1:
            raise ValueError("`valid_days` and `test_days` must be at least 1")
        if self.days > 190:
            raise ValueError(f"`days` must be at most 190 (timestamps are seconds below 2^24), got {self.days}")
        if self.chunk_users * self.n_pois >= 1 << 38:
            raise ValueError("`chunk_users` × `n_pois` must stay below 2^38 (history keys); lower `chunk_users`")
        if self.warmup_days + self.valid_days + self.test_days >= self.days:
            raise ValueError(f"`warmup_days` + `valid_days` + `test_days` ({self.warmup_days} + {self.valid_days} + "
                             f"{self.test_days}) must be below `days` ({self.days}) to leave training days")
        for name in ("sessions_per_user", "requests_per_user"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}")
        for name in ("distance_decay", "longterm_interest", "realtime_intent", "covisit_chains",
                     "interaction_order", "conversion", "position_bias"):
            if getattr(self, name) < 0:
                raise ValueError(f"mechanism strength `{name}` must be >= 0 (0 turns it off), got {getattr(self, name)}")
        for name in ("search_share", "hard_query_share", "costly_feature_signal", "conversion"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be between 0 and 1, got {getattr(self, name)}")
        if self.noise_feature_count < 0:
            raise ValueError(f"`noise_feature_count` must be >= 0, got {self.noise_feature_count}")

    @classmethod
    def preset(cls, size: str = "small", **overrides: Any) -> WorldConfig:
        """The preset `size` (tiny, small, medium, large) with `overrides` applied and validated."""
        if size not in PRESETS:
            raise ConfigError(f"unknown world size `{size}`; choose one of {', '.join(PRESETS)}.")
        return from_dict(cls, {"size": size, **PRESETS[size], **overrides}, where=f"world preset `{size}`")

    @property
    def train_end_s(self) -> int:
        return (self.days - self.valid_days - self.test_days) * 86400

    @property
    def valid_end_s(self) -> int:
        return (self.days - self.test_days) * 86400


#: tiny: tests (< 5 s); small: the demo (< 1 min); medium: CPU benchmarks; large: GPU benchmarks (streamed).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_pois": 300, "n_users": 300, "n_districts": 8, "requests_per_user": 7.0, "n_queries": 150,
             "chunk_users": 512},
    "small": {"n_pois": 2000, "n_users": 2000, "n_districts": 12, "requests_per_user": 10.0, "n_queries": 1000},
    "medium": {"n_pois": 5000, "n_users": 20000, "n_districts": 16, "requests_per_user": 6.0, "n_queries": 3000},
    "large": {"n_pois": 50000, "n_users": 200000, "n_districts": 24, "requests_per_user": 6.0,
              "n_queries": 20000, "chunk_users": 256},
}
