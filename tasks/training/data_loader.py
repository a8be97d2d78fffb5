"""Training and validation data from the preprocessed cases, with MONAI transforms built from params.

Cases are folders of memory-mappable arrays (``tasks.preprocess.case_store``: normalised image, label,
weight map, precomputed class locations). With ``train.augment.loader_cache: mmap`` (the default) the
trainer hands over case records, never arrays: ``PatchDataset`` (``tasks.training.patch_sampler``) cuts
each foreground-biased patch out of the memory maps, so memory does not grow with the number of cases.
``loader_cache: memory`` keeps the former pipeline for small datasets: the deterministic part (reading and
padding each case) is done once and held in memory (MONAI ``CacheDataset``). Either way the random part —
patch sampling, flips, rotations, scaling, elastic deformation, intensity jitter — runs per step, in
``train.augment.loader_workers`` worker processes so a GPU is not left waiting on the CPU.

Every spatial transform moves image, label and weight map with ONE random draw: image and weight
map are interpolated (bilinear), the label by nearest neighbour so it keeps its values. The same
code builds the 2D and the 3D pipeline; only MONAI's elastic class differs by spatial dims.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from monai_ext.transforms import RandUNetElasticd
from monai_ext.transforms.elastic import StoreSpatialShaped
from tasks.common.plan import Plan
from tasks.config import AugmentConfig
from tasks.preprocess.case_store import case_dir, open_case_dir
from tasks.training.patch_sampler import PatchDataset
from tasks.training.valid_padding import valid_padding_steps

# How each key is resampled by spatial transforms: the label must stay in its label set.
INTERPOLATION = {"image": "bilinear", "label": "nearest", "weight": "bilinear"}
# Largest extra context (per side, as a fraction of the patch) cropped around a patch for deformation.
MAX_MARGIN_FRACTION = 0.25
# What validation and overlays read of a case (``iter_cases``): image, true classes, instance map if stored.
CASE_KEYS = ("image", "label", "instances")
# Where the whole image's shape rides past the crop to the paper's elastic (which removes it again).
ELASTIC_EXTENT_KEY = "elastic_extent"


def load_cases(preprocessed_dir: Path, case_ids: list[str]) -> list[dict[str, np.ndarray]]:
    """The preprocessed arrays of these cases, all in memory (evaluation and small datasets only: training
    and validation open one case at a time, see ``case_records`` and ``iter_cases``)."""
    return [{**open_case_dir(case_dir(preprocessed_dir, case_id), mmap=False), "case_id": case_id}
            for case_id in case_ids]


def case_records(preprocessed_dir: Path, case_ids: list[str]) -> list[dict[str, Any]]:
    """``{"case_id", "case_dir"}`` records: what the trainer hands the loader, validation and overlays
    instead of arrays (each opens a case only while it needs it)."""
    return [{"case_id": case_id, "case_dir": str(case_dir(preprocessed_dir, case_id))} for case_id in case_ids]


def iter_cases(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Items with their arrays, opened one at a time: validation and overlays hold a single case, never
    the whole validation set. Read into memory (sliding windows read every voxel anyway, and torch wants
    a writable array); items that already hold arrays pass through. Only ``CASE_KEYS`` are read: what
    ``validate`` and ``log_overlays`` use, not the training target or weight map."""
    for item in items:
        if "image" in item:
            yield item
        else:
            yield {**open_case_dir(Path(item["case_dir"]), mmap=False, keys=CASE_KEYS), "case_id": item["case_id"]}


class LoadPreprocessedd(MapTransform):
    """Read ``keys`` from the record's case folder; a record that already holds the arrays passes through.

    Deterministic, so ``CacheDataset`` (``loader_cache: memory``) runs it once per case.
    """

    def __init__(self, keys: Sequence[str], path_key: str = "case_dir") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = [key for key in self.keys if key not in d]
        if missing and self.path_key in d:
            arrays = open_case_dir(Path(d[self.path_key]), mmap=False, keys=missing)
            for key in missing:
                d[key] = arrays[key]
        return d


def data_keys(plan: Plan) -> list[str]:
    """The arrays a sample carries: the weight map only when the plan made one."""
    return ["image", "label", "weight"] if plan.weight_maps else ["image", "label"]


def stored_keys(plan: Plan) -> list[str]:
    """The case arrays a training sample is read from: a border-core plan trains on the stored ``target``
    (the classes with each object's rim, ``monai_ext.transforms.border_core``), which :class:`TrainOnTargetd`
    hands on as ``label``; the case's ``label`` keeps the true classes for validation."""
    return ["target" if key == "label" and plan.border_core else key for key in data_keys(plan)]


class TrainOnTargetd(MapTransform):
    """``label`` ← the stored border-core ``target`` (computed with the weight map, on the whole image, so the
    rims and the weights on them agree voxel for voxel and a patch's edge never draws a rim)."""

    def __init__(self) -> None:
        super().__init__(["target"], allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if "target" in d:
            d["label"] = d.pop("target")
        return d


def on_target(plan: Plan) -> list[MapTransform]:
    return [TrainOnTargetd()] if plan.border_core else []


def _as_config(augment: AugmentConfig | bool | None) -> AugmentConfig:
    if isinstance(augment, AugmentConfig):
        return augment
    return AugmentConfig(enabled=True if augment is None else bool(augment))


def _deformation_margin(config: AugmentConfig, patch: Sequence[int]) -> list[int]:
    """Context voxels per side to crop beyond the patch, so rotations, scaling and elastic fields pull
    real image content into the patch instead of padding (nnU-Net crops larger, deforms, then centres).
    Capped at ``MAX_MARGIN_FRACTION`` of the patch, which keeps the extra work bounded in 3D."""
    if not config.enabled:
        return [0] * len(patch)
    reach = 0.0
    if config.elastic == "paper" and config.elastic_prob > 0:
        reach += 2.0 * config.sigma_px
    if config.elastic == "monai" and config.elastic_prob > 0:
        reach += 2.0 * config.elastic_magnitude[1]
    margins = []
    for size in patch:
        extra = reach
        if config.affine_prob > 0:
            extra += 0.5 * size * (config.scale_range + math.sin(config.rotate_range))
        margins.append(int(min(math.ceil(extra), MAX_MARGIN_FRACTION * size)))
    return margins


def _smoothed_noise_std(sigma: float, dims: int) -> float:
    """Std of uniform(−1, 1) noise after a unit-sum Gaussian of std ``sigma`` per axis (what MONAI's
    ``Rand3DElastic`` builds): (1/√3)·(2√π·σ)^(−dims/2). Dividing by it makes ``elastic_magnitude``
    a displacement in voxels, the same meaning it has for the 2D control-point field."""
    return (1.0 / math.sqrt(3.0)) * (2.0 * math.sqrt(math.pi) * sigma) ** (-dims / 2.0)


def elastic_transform(plan: Plan, config: AugmentConfig, keys: list[str]) -> MapTransform | None:
    """One elastic transform over all ``keys`` (one field), or None when ``elastic: none``.

    ``monai``: ``Rand2DElasticd`` (Gaussian offsets on control points ``2·elastic_sigma`` apart,
    bicubic-upsampled) or ``Rand3DElasticd`` (dense noise smoothed by a Gaussian of σ = ``elastic_sigma``),
    chosen by the plan's spatial dims. ``paper``: the U-Net paper's coarse grid (``RandUNetElasticd``).
    """
    modes = [INTERPOLATION[key] for key in keys]
    if config.elastic == "none" or config.elastic_prob == 0:
        return None
    if config.elastic == "paper":
        # The grid spans the whole image (its shape stored before the crop by ``elastic_context``), as in the
        # paper, not the patch: nodes a patch apart would strain the patch image/patch times more. Cases are on
        # the plan's target spacing, so sigma_px voxels of the finest axis are the same millimetres along a
        # thick-slice axis (fewer of its voxels): a 5 mm slice is not bent as far as a 0.7 mm pixel.
        spacing = None if plan.target_spacing is None else plan.target_spacing[:plan.spatial_dims]
        return RandUNetElasticd(keys, prob=config.elastic_prob, grid=config.grid, sigma_px=config.sigma_px,
                                mode=modes, padding_mode="reflect", spacing=spacing, extent_key=ELASTIC_EXTENT_KEY)
    dims = plan.spatial_dims
    low, high = config.elastic_magnitude
    common: dict[str, Any] = {"keys": keys, "prob": config.elastic_prob, "mode": modes, "padding_mode": "reflection"}
    if dims == 2:
        return Rand2DElasticd(spacing=2.0 * config.elastic_sigma, magnitude_range=(low, high), **common)
    scale = 1.0 / _smoothed_noise_std(config.elastic_sigma, dims)
    return Rand3DElasticd(sigma_range=(config.elastic_sigma, config.elastic_sigma),
                          magnitude_range=(low * scale, high * scale), **common)


def elastic_context(config: AugmentConfig, keys: list[str]) -> list[MapTransform]:
    """What the paper's elastic needs from before padding and crop: the image's shape, which its grid spans
    (not the padding: a mirrored margin or a pad up to the crop is no part of the paper's image). Empty
    whenever no ``RandUNetElasticd`` runs, so the extra key never reaches a batch."""
    if not config.enabled or config.elastic != "paper" or config.elastic_prob == 0:
        return []
    return [StoreSpatialShaped(keys[0], ELASTIC_EXTENT_KEY)]


def _rotate90_axes(patch: Sequence[int]) -> tuple[int, int] | None:
    """A pair of spatial axes whose patch sizes are equal: rotating any other pair changes the shape."""
    for first in range(len(patch)):
        for second in range(first + 1, len(patch)):
            if patch[first] == patch[second]:
                return first, second
    return None


def augmentation_transforms(plan: Plan, config: AugmentConfig, keys: list[str]) -> list[Any]:
    """The random spatial and intensity transforms (applied after the patch is cropped)."""
    if not config.enabled:
        return []
    dims = plan.spatial_dims
    patch = list(plan.patch_size)
    modes = [INTERPOLATION[key] for key in keys]
    steps: list[Any] = []
    if config.affine_prob > 0:
        steps.append(RandAffined(keys, prob=config.affine_prob, rotate_range=[config.rotate_range] * (1 if dims == 2
                                                                                                   else 3),
                                 scale_range=[config.scale_range] * dims, mode=modes, padding_mode="reflection"))
    elastic = elastic_transform(plan, config, keys)
    if elastic is not None:
        steps.append(elastic)
    if any(_deformation_margin(config, patch)):
        steps.append(CenterSpatialCropd(keys, roi_size=patch))
    if config.flip_prob > 0:
        steps += [RandFlipd(keys, prob=config.flip_prob, spatial_axis=axis) for axis in range(dims)]
    axes = _rotate90_axes(patch)
    if config.rotate90_prob > 0 and axes is not None:
        steps.append(RandRotate90d(keys, prob=config.rotate90_prob, spatial_axes=axes))
    if config.intensity_scale_prob > 0:
        steps.append(RandScaleIntensityd("image", factors=0.1, prob=config.intensity_scale_prob))
    if config.intensity_shift_prob > 0:
        steps.append(RandShiftIntensityd("image", offsets=0.1, prob=config.intensity_shift_prob))
    if config.noise_prob > 0 and config.noise_std > 0:
        steps.append(RandGaussianNoised("image", prob=config.noise_prob, std=config.noise_std))
    return steps


def _crop_size(plan: Plan, config: AugmentConfig) -> list[int]:
    """The box cut before augmentation: the patch plus the deformation margin on each side."""
    patch = list(plan.patch_size)
    return [size + 2 * margin for size, margin in zip(patch, _deformation_margin(config, patch), strict=True)]


def training_transforms(plan: Plan, augment: AugmentConfig | bool = True) -> Compose:
    """Load → pad (deterministic, cacheable) → foreground-biased crop → augmentation → tensors."""
    config = _as_config(augment)
    keys = data_keys(plan)
    crop = _crop_size(plan, config)
    steps: list[Any] = [
        LoadPreprocessedd(stored_keys(plan)),
        *on_target(plan),
        *elastic_context(config, keys),  # the image's own shape, before any padding: what the paper's grid spans
        *valid_padding_steps(plan, keys, crop),  # valid-padding U-Net: mirrored by its margin
        SpatialPadd(keys, spatial_size=crop),
        EnsureTyped(keys, track_meta=False),
        # Half the patches centred on foreground, as nnU-Net does, so small objects are seen.
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=crop, pos=1, neg=1, num_samples=1,
                               allow_smaller=False),
        *augmentation_transforms(plan, config, keys),
        EnsureTyped(keys, track_meta=False),
    ]
    return Compose(steps)


def validation_transforms(plan: Plan) -> Compose:
    """No randomness: the whole preprocessed case as tensors (validation slides a window over it)."""
    keys = data_keys(plan)
    return Compose([LoadPreprocessedd(keys), EnsureTyped(keys, track_meta=False)])


def patch_dataset(records: list[dict[str, Any]], plan: Plan, augment: AugmentConfig | bool = True,
                  foreground_fraction: float | None = None) -> PatchDataset:
    """``loader_cache: mmap``: patches cut from the memory-mapped cases of ``records`` (``case_records``),
    then the same augmentation as the in-memory pipeline."""
    config = _as_config(augment)
    keys = data_keys(plan)
    # tensors in, as the in-memory pipeline hands its crops to the same augmentation
    transform = Compose([*on_target(plan), EnsureTyped(keys, track_meta=False),
                         *augmentation_transforms(plan, config, keys), EnsureTyped(keys, track_meta=False)])
    extent = ELASTIC_EXTENT_KEY if elastic_context(config, keys) else None
    options = {} if foreground_fraction is None else {"foreground_fraction": foreground_fraction}
    return PatchDataset(records, stored_keys(plan), _crop_size(plan, config), transform, plan.valid_margin, extent,
                        **options)


def training_dataset(items: list[dict[str, Any]], plan: Plan,
                     augment: AugmentConfig | bool = True) -> Dataset | PatchDataset:
    """Records (``case_records``) with ``loader_cache: mmap``: a ``PatchDataset`` over the memory maps.
    Otherwise (``memory``, or items already holding arrays, e.g. ``load_cases``) the in-memory pipeline,
    whose deterministic prefix ``CacheDataset`` computes once per case."""
    config = _as_config(augment)
    if config.loader_cache == "mmap" and all("image" not in item for item in items):
        return patch_dataset(items, plan, config)
    data = [{key: item[key] for key in (*stored_keys(plan), "case_dir") if key in item} for item in items]
    return CacheDataset(data, transform=training_transforms(plan, config), progress=False, num_workers=1)


def training_loader(items: list[dict], plan: Plan, batch_size: int,
                    augment: AugmentConfig | bool = True, num_workers: int | None = None) -> DataLoader:
    """Shuffled batches of augmented patches; ``num_workers`` (default ``augment.loader_workers``)
    processes run the random transforms, MONAI seeds them from torch's RNG so runs repeat."""
    config = _as_config(augment)
    workers = config.loader_workers if num_workers is None else num_workers
    dataset = training_dataset(items, plan, config)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=len(dataset) > batch_size, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())
