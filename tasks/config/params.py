"""The whole ``params.yaml``: its sections, and the rules that tie sections together.

An option that needs a term elsewhere gets it by default (a CGM gets its loss term, deep supervision its
weighting), and an explicit contradiction is refused naming both keys, before any work starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, model_validator

from monai_ext.losses import CGM_DEFAULT_WEIGHT
from tasks.config.deep_supervision import agree_on_deep_supervision
from tasks.config.sections import (
    DataConfig,
    InferConfig,
    ModelConfig,
    PacsConfig,
    PreprocessConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)


class Params(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    pacs: PacsConfig = Field(default_factory=PacsConfig)

    @model_validator(mode="after")
    def _weighted_loss_has_weights(self) -> Params:
        if self.train.loss == "wce" and not self.preprocess.weight_maps:
            raise ValueError("train.loss 'wce' needs preprocess.weight_maps: true")
        return self
    _deep_supervision_agrees = model_validator(mode="after")(agree_on_deep_supervision)  # loss/infer fit the heads

    @model_validator(mode="after")
    def _cgm_is_trained(self) -> Params:
        """A CGM model gets a CGM loss term (``cgm_weight`` CGM_DEFAULT_WEIGHT unless given); contradictions refused.

        Why here: untrained, the classifier still filters at inference (``infer.cgm_filter``); only the schema
        sees model and loss together, and the resolved weight then shows in every logged copy of the params."""
        cgm, weight = bool(self.model.options.get("cgm")), self.train.loss_options.get("cgm_weight")
        if cgm and weight is None:
            self.train.loss_options["cgm_weight"] = CGM_DEFAULT_WEIGHT
        elif cgm != bool(weight):
            fix = "the CGM needs its loss term: omit cgm_weight" if cgm else "no CGM to train: set cgm: true"
            raise ValueError(f"model.options.cgm: {str(cgm).lower()} contradicts train.loss_options.cgm_weight: "
                             f"{weight} ({fix})")
        return self

    def flat(self) -> dict[str, Any]:
        """``{"train.epochs": 30, ...}`` — the form MLflow params and DVC ``params:`` use."""
        return dict(_flatten(self.model_dump(mode="json")))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value
