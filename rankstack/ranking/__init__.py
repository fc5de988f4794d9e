"""Stage 3, ranking: models that score every candidate of a request for click and conversion.

`MODELS` maps a config name to (model class, its config dataclass); `build_model` makes one for a dataset.
"""

from __future__ import annotations

from typing import Any

from rankstack.config import from_dict
from rankstack.errors import ConfigError
from rankstack.nn.features import FieldLayout
from rankstack.ranking.base import RankingModel
from rankstack.ranking.dcnv2 import DCNv2, DCNv2Config
from rankstack.ranking.din import DIN, DINConfig
from rankstack.ranking.dlrm import DLRM, DLRMConfig
from rankstack.ranking.hemix import HeMix, HeMixConfig
from rankstack.ranking.rankmixer import RankMixer, RankMixerConfig
from rankstack.ranking.transformer import TransformerRanker, TransformerRankerConfig

MODELS: dict[str, tuple[type[RankingModel], type]] = {
    "dlrm": (DLRM, DLRMConfig),
    "dcnv2": (DCNv2, DCNv2Config),
    "din": (DIN, DINConfig),
    "rankmixer": (RankMixer, RankMixerConfig),
    "transformer": (TransformerRanker, TransformerRankerConfig),
    "hemix": (HeMix, HeMixConfig),
}


def build_model(name: str, args: dict[str, Any], layout: FieldLayout, where: str = "config") -> RankingModel:
    """Instantiate ranking model `name` with hyper-parameters `args` (validated against its config class)."""
    if name not in MODELS:
        raise ConfigError(f"{where}: unknown ranking model `{name}`; choose one of {', '.join(sorted(MODELS))}.")
    model_cls, config_cls = MODELS[name]
    return model_cls(layout, from_dict(config_cls, args, where=where, prefix="model.args."))
