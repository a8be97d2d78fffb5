"""The one configuration of a unetflow project: ``params.yaml`` validated by a pydantic schema.

Every section forbids unknown keys, so a typo (``train.epoch``) is refused before any work starts,
with a message that names the key, instead of being silently ignored. Command-line overrides
(``--set train.epochs=3``) are applied to the raw mapping before validation, so they pass through
exactly the same checks.

The schema is split by concern (``sections``, ``params`` with the cross-section rules, ``loading``,
``deep_supervision``); everything is imported from here: ``from tasks.config import Params, load_params``.
"""

from tasks.config.loading import apply_overrides, load_params, parse_override, validate_params
from tasks.config.params import Params
from tasks.config.sections import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    InferConfig,
    ModelConfig,
    PacsConfig,
    PreprocessConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = ["AugmentConfig", "ConfigError", "DataConfig", "InferConfig", "ModelConfig", "PacsConfig", "Params",
           "PreprocessConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "load_params", "parse_override",
           "validate_params"]
