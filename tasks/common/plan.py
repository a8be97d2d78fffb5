"""The plan: what preprocessing decided from the data, and what everything downstream only executes.

As in nnU-Net, one stage owns it: ``unetflow preprocess`` decides it (``tasks.preprocess.planning``) and
writes ``plan.json``; the trainer, the evaluator and inference read it and never change it. It travels
with every registered model, so inference applies exactly the preprocessing the weights were trained on.

JSON form (``plan.json``, ``Plan.model_dump(mode="json")``)::

    {"version": 2,
     "spatial_dims": 2,                       # 2: X×Y images (Z = 1), 3: volumes
     "in_channels": 1, "num_classes": 2,      # network input channels / output classes (background included)
     "label_names": {"background": 0, "cell": 1},   # what each class means, as ingest resolved it (dataset.json)
     "normalization": {"channels": [{"scheme": "zscore"}]},   # per channel: zscore | none | ct (+ clip/mean/std)
     "intensity_statistics": {"cases": [...], "channels": [{"fg_mean": …, "fg_std": …, …}]},
     "patch_size": [224, 224, 40],            # training patch and default sliding-window size, voxels at the target
                                              # spacing: the median case (in mm) shrunk to fit train.memory_budget_gb
                                              # (a valid-padding network's input tile, e.g. [188, 188])
     "output_size": null,                     # valid-padding networks only: the output tile the network gives
                                              # for patch_size, e.g. [100, 100] (smaller by 2 × the margin on
                                              # each axis; labels and weight maps are cropped to it in training,
                                              # inference runs overlap-tile); null: output = input (same padding)
     "batch_size": 2,                         # what fits the budget beside the patch; ≤ 5% of the data, ≥ 2
     "memory": {"budget_gb": 8.0, "method": "estimated (activation sizes)" | "measured (cuda)",
                "fits": true, "gb_at_batch_size": 7.6, "gb_per_sample": 3.8},
     "weight_maps": true,                     # cases carry the U-Net weight map
     "weight_map_objects": "instances",       # what the border term separates: "instances" (given instance maps:
                                              # instancesTr/ or data.instance_labels) | "connected_components"
                                              # (none given: each class split into its connected components,
                                              # so touching objects of one class count as one) | null (no maps)
     "border_core": true, "border_thickness": 1,   # instance maps given: trained on a border-core target (each
                                              # object's rim, this many voxels, an extra output channel that
                                              # inference folds back into its class and floods the watershed
                                              # with; monai_ext.transforms.border_core) | false: the classes
     "target_spacing": [0.7, 0.7, 4.25],     # mm, dataset (RAS) axis order: nnU-Net v2's rule (per-axis median;
                                              # an anisotropic coarse axis at its 10th percentile) or the
                                              # preprocess.target_spacing override; every case is resampled to it
                                              # and inference resamples back; null: no case spacings
     "fingerprint": {"num_cases": 40,         # what target_spacing and the patch were chosen from
                     "spacing": {"median": [...], "min": [...], "max": [...]},   # per axis, mm
                     "median_shape": [512, 512, 42],              # per axis, voxels, as stored
                     "median_nonzero_shape": [430, 470, 42],      # the non-zero bounding boxes (training cases)
                     "median_shape_resampled": [460, 500, 45]},   # … at the target spacing: what the patch follows
     "split": {"train": [...], "val": [...], "test": [...]},
     "network": {"name": "unet", "features": [16, 32, 64, 128], "norm": "batch", "options": {},
                 "strides": [[2, 2, 1], [2, 2, 1], [2, 2, 2]],            # per downsampling, per axis
                 "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]}}   # per level, per axis

Older plans (before ``version``) wrote the network options flat next to ``name`` and could hold a
single-scheme normalisation (``{"scheme": "zscore"}``); both still load, into this form. Plans from before
``target_spacing`` and ``fingerprint`` load with both null, and version 1 (which recorded a target spacing
but never resampled to it) loads with ``target_spacing`` null, so its models see inputs as they trained.
Without ``strides``/``kernel_sizes`` the network is the isotropic default, and without ``batch_size`` the
trainer uses ``train.batch_size`` (or 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

PLAN_FILE = "plan.json"
PLAN_VERSION = 2  # 2: cases are resampled to target_spacing (version 1 recorded it only)

_NETWORK_KEYS = ("name", "features", "norm", "options")
_TOPOLOGY_KEYS = ("strides", "kernel_sizes")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(_Frozen):
    """Which network the plan trains: a ``monai_ext.networks`` name, its widths, norm and options."""

    name: str
    features: tuple[int, ...]
    norm: str | None = "batch"
    options: dict[str, Any] = Field(default_factory=dict)
    strides: tuple[tuple[int, ...], ...] | None = None  # per downsampling, per axis (None: 2 everywhere)
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None  # per level, per axis (None: 3 everywhere)

    def same_model(self, other: NetworkSpec) -> bool:
        """Whether ``other`` asks for this network, whatever topology the plan gave it (params.yaml has none)."""
        return all(getattr(self, key) == getattr(other, key) for key in _NETWORK_KEYS)

    @model_validator(mode="before")
    @classmethod
    def _flat_options(cls, data: Any) -> Any:
        """Older plans kept options flat (``{"name": "unet", "padding": "valid"}``)."""
        known = (*_NETWORK_KEYS, *_TOPOLOGY_KEYS)
        if isinstance(data, dict) and set(data) - set(known):
            extra = {k: v for k, v in data.items() if k not in known}
            data = {**{k: v for k, v in data.items() if k in known},
                    "options": {**data.get("options", {}), **extra}}
        if isinstance(data, dict) and "cgm_threshold" in data.get("options", {}):  # renamed: the network's own gate
            options = dict(data["options"])
            options["cgm_gate_threshold"] = options.pop("cgm_threshold")
            data = {**data, "options": options}
        return data


class ChannelNormalization(_Frozen):
    """One channel's intensity normalisation; ``ct`` carries the training foreground's clip range and stats."""

    scheme: Literal["zscore", "ct", "none"]
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _ct_has_numbers(self) -> ChannelNormalization:
        if self.scheme == "ct" and (self.clip is None or self.mean is None or self.std is None):
            raise ValueError("a 'ct' channel needs clip, mean and std")
        return self


class Normalization(_Frozen):
    channels: tuple[ChannelNormalization, ...]


class Split(_Frozen):
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


class IntensityStatistics(_Frozen):
    """Which cases the statistics came from (training cases only) and the per-channel figures."""

    cases: tuple[str, ...]
    channels: tuple[dict[str, float | int | None], ...]


class Plan(_Frozen):
    version: int = PLAN_VERSION
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(gt=0)
    #: each input channel's modality as the dataset named it (a DICOM Modality such as CT or MR, or
    #: dataset.json's channel names); empty in plans from before it was recorded. ``pacs-sync`` segments only
    #: series of this modality.
    channel_modalities: tuple[str, ...] = ()
    num_classes: int = Field(gt=1)
    label_names: dict[str, int]
    normalization: Normalization
    intensity_statistics: IntensityStatistics | None = None
    patch_size: tuple[int, ...]
    output_size: tuple[int, ...] | None = None
    batch_size: int | None = Field(None, gt=0)
    memory: dict[str, Any] | None = None
    weight_maps: bool = False
    weight_map_objects: Literal["instances", "connected_components"] | None = None
    border_core: bool = False
    border_thickness: int = Field(1, ge=1)
    target_spacing: tuple[float, ...] | None = None
    fingerprint: dict[str, Any] | None = None
    split: Split
    network: NetworkSpec

    @model_validator(mode="before")
    @classmethod
    def _older_forms(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if int(data.get("version", PLAN_VERSION)) < 2 and data.get("target_spacing") is not None:
                # Version 1 recorded a target spacing but trained on the cases' own grids: its models must not
                # be handed resampled images.
                data = {**data, "target_spacing": None}
            norm = data.get("normalization")
            if isinstance(norm, dict) and "scheme" in norm and "channels" not in norm:
                data = {**data, "normalization": {"channels": [norm] * int(data.get("in_channels", 1))}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {list(self.patch_size)} does not have {self.spatial_dims} axes")
        self._tiles_consistent()
        if len(self.normalization.channels) != self.in_channels:
            raise ValueError(f"normalization has {len(self.normalization.channels)} channels, "
                             f"in_channels is {self.in_channels}")
        if self.weight_map_objects is not None and not self.weight_maps:
            raise ValueError(f"weight_map_objects is {self.weight_map_objects!r} but weight_maps is false")
        if sorted(self.label_names.values()) != list(range(self.num_classes)):
            raise ValueError(f"label_names {self.label_names} do not number the {self.num_classes} classes 0..N-1")
        return self

    def _tiles_consistent(self) -> None:
        """A valid-padding network needs its output tile planned (training crops labels to it); the margin
        must be whole on each side, since the output is the input's centre."""
        valid = self.network.options.get("padding") == "valid"
        if valid and self.output_size is None:
            raise ValueError("network padding 'valid' needs output_size (the output tile): run preprocess again")
        if self.output_size is None:
            return
        if not valid:
            raise ValueError("output_size is only planned for a network with padding 'valid'")
        pairs = list(zip(self.patch_size, self.output_size, strict=False))
        if len(self.output_size) != self.spatial_dims or any(o < 1 or o > p or (p - o) % 2 for p, o in pairs):
            raise ValueError(f"output_size {list(self.output_size)} is not a centred output tile of "
                             f"patch_size {list(self.patch_size)}")

    @property
    def output_channels(self) -> int:
        """The network's output channels: the classes, plus the border class of a border-core target
        (``monai_ext.transforms.border_core``; folded back into the classes at prediction)."""
        return self.num_classes + int(self.border_core)

    @property
    def valid_margin(self) -> tuple[int, ...] | None:
        """Voxels per side a valid-padding network loses (input tile − output tile) / 2; None: same padding."""
        if self.output_size is None:
            return None
        return tuple((p - o) // 2 for p, o in zip(self.patch_size, self.output_size, strict=True))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def write(self, path: Path) -> None:
        from tasks.common.atomic import write_json

        write_json(path, self.to_json())

    def with_network(self, network: NetworkSpec) -> Plan:
        """The same data plan for another network (``compare`` trains several on one preprocessing).

        Validated, so a valid-padding variant on a plan without valid tiles is refused here, not mid-training;
        a same-padding variant drops the output tile (its output is its input's size)."""
        update: dict[str, Any] = {"network": network.model_dump()}
        if network.options.get("padding") != "valid":
            update["output_size"] = None
        return Plan.model_validate({**self.model_dump(), **update})


def build_model(plan: Plan) -> nn.Module:
    """The plan's network, untrained, through the one ``monai_ext.networks.build_network`` factory."""
    from monai_ext.networks import build_network

    spec = plan.network
    topology = {"strides": spec.strides, "kernel_sizes": spec.kernel_sizes} if spec.strides is not None else {}
    return build_network(spec.name, plan.spatial_dims, plan.in_channels, plan.output_channels,
                         features=spec.features, norm=spec.norm, **topology, **spec.options)
