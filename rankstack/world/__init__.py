"""The synthetic city: rankstack's embedded default world (spec: world.md).

    from rankstack.world import WorldConfig, generate
    generate(WorldConfig.preset("small"), seed=0, out="runs/world")

writes a folder of raw tables, latent truth and three rankstack datasets (ranking impressions, search relevance
pairs, next-POI samples); see `rankstack.world.generate` for the layout and `docs/world.md` for the mechanisms.
`rankstack.world.truth.WorldTruth` scores any (request, POI) pair with the true click and order probabilities.
"""

from rankstack.world.config import PRESETS, WorldConfig
from rankstack.world.generate import generate

__all__ = ["PRESETS", "WorldConfig", "generate"]
