"""The one configuration of a unetflow project: ``params.yaml`` validated by a pydantic schema.

Every section forbids unknown keys, so a typo (``train.epoch``) is refused before any work starts,
with a message that names the key, instead of being silently ignored. Command-line overrides
(``--set train.epochs=3``) are applied to the raw mapping before validation, so they pass through
exactly the same checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monai_ext.losses import LOSS_REGISTRY, build_loss
from monai_ext.networks import available_networks, network_options


class ConfigError(ValueError):
    """A ``params.yaml`` (or an override) that does not fit the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the raw inbox lies and how its cases are split."""

    raw_dir: str = "data"
    images_dir: str = "imagesTr"
    labels_dir: str = "labelsTr"
    test_images_dir: str = "imagesTs"
    dataset_dir: str = "outputs/dataset"
    instance_labels: bool = True
    label_names: dict[str, int] = Field(default_factory=lambda: {"background": 0, "foreground": 1})
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_cases(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave cases to train on (< 0.9)")
        if sorted(self.label_names.values()) != list(range(len(self.label_names))):
            raise ValueError("label_names values must be 0..N-1 (background first)")
        return self


class PreprocessConfig(_Section):
    """U-Net weight maps (w_c + w0·exp(−(d1+d2)²/2σ²)) and intensity normalisation."""

    output_dir: str = "outputs/preprocessed"
    weight_maps: bool = True
    w0: float = Field(10.0, ge=0.0)
    sigma: float = Field(5.0, gt=0.0)
    class_weights: Literal["balanced", "none"] = "balanced"
    normalization: Literal["auto", "zscore", "ct", "none"] = "auto"


class ModelConfig(_Section):
    """Which member of the U-Net family to build (see ``monai_ext.networks.build_network``)."""

    name: str = "unet"
    spatial_dims: Literal["auto", 2, 3] = "auto"
    features: tuple[int, ...] = (16, 32, 64, 128)
    norm: str | None = "batch"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_network(cls, name: str) -> str:
        known = available_networks()
        if name not in known:
            raise ValueError(f"unknown network {name!r}; known: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _known_options(self) -> ModelConfig:
        known = network_options(self.name)
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for network {self.name!r}; known: {', '.join(known)}")
        return self

    @field_validator("features")
    @classmethod
    def _positive_widths(cls, features: tuple[int, ...]) -> tuple[int, ...]:
        if len(features) < 2 or any(f <= 0 for f in features):
            raise ValueError("features needs at least two positive widths, e.g. [16, 32, 64, 128]")
        return features


class TrainConfig(_Section):
    """How the trainer executes the plan."""

    output_dir: str = "outputs/model"
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(8, gt=0)
    patch_size: tuple[int, ...] | None = None
    learning_rate: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    loss: str = "wce"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    val_every: int = Field(1, gt=0)
    augment: bool = True
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _loss_builds(self) -> TrainConfig:
        if self.loss not in LOSS_REGISTRY:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(sorted(LOSS_REGISTRY))}")
        build_loss(self.loss, **self.loss_options)  # refuses unknown options, naming them
        return self


class InferConfig(_Section):
    """Batch segmentation of new studies."""

    input_dir: str = "data/imagesTs"
    output_dir: str = "outputs/predictions"
    model_uri: str | None = None
    roi_size: tuple[int, ...] | None = None
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, gt=0)


class TrackingConfig(_Section):
    """MLflow: a SQLite store in the project folder unless a tracking URI is given."""

    uri: str | None = None
    artifact_root: str | None = None
    experiment: str = "unetflow"
    model_name: str = "unetflow-segmenter"


class Params(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _weighted_loss_has_weights(self) -> Params:
        if self.train.loss == "wce" and not self.preprocess.weight_maps:
            raise ValueError("train.loss 'wce' needs preprocess.weight_maps: true")
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


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"'{key}': {item['msg']}")
    return "invalid params: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` → ``(["train", "epochs"], 3)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r} names no key")
    return path, yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


def validate_params(raw: Mapping[str, Any] | None) -> Params:
    try:
        return Params.model_validate(dict(raw or {}))
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_params(path: str | Path | None = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Read, override and validate ``params.yaml``; a missing file means all defaults."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        raw = loaded or {}
    return validate_params(apply_overrides(raw, overrides))
