"""The LightningModules: `LitMAE` (pretraining), `LitLinearProbe` and `LitFineTune` (evaluation),
on one shared base (`lit_mae.systems.base.LitSystem`)."""

from lit_mae.systems.classification import LitFineTune, LitLinearProbe
from lit_mae.systems.feature_cache import CachedFeatures
from lit_mae.systems.pretraining import LitMAE

__all__ = ["LitMAE", "LitLinearProbe", "LitFineTune", "CachedFeatures"]
