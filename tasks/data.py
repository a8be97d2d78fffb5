"""Training and validation data from the preprocessed cases, with MONAI transforms.

The deterministic part (normalised image, label, weight map) was done once by the preprocess stage
and is held in memory here (MONAI ``CacheDataset`` semantics); only the random part — patch
sampling, flips, rotations — runs per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    SpatialPadd,
)


def load_cases(preprocessed_dir: Path, case_ids: list[str]) -> list[dict[str, np.ndarray]]:
    items = []
    for case_id in case_ids:
        with np.load(preprocessed_dir / "cases" / f"{case_id}.npz") as arrays:
            item = {key: arrays[key] for key in arrays.files}
        item["case_id"] = case_id
        items.append(item)
    return items


def training_transforms(plan: dict[str, Any], augment: bool) -> Compose:
    keys = ["image", "label", "weight"] if plan.get("weight_maps") else ["image", "label"]
    patch = plan["patch_size"]
    dims = plan["spatial_dims"]
    steps: list[Any] = [
        SpatialPadd(keys, spatial_size=patch),
        # Half the patches centred on foreground, as nnU-Net does, so small objects are seen.
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1,
                               allow_smaller=False),
    ]
    if augment:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
        steps.append(RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)))
    steps.append(EnsureTyped(keys, track_meta=False))
    return Compose(steps)


def training_loader(items: list[dict], plan: dict[str, Any], batch_size: int, augment: bool,
                    num_workers: int = 0) -> DataLoader:
    keys = ["image", "label", "weight"] if plan.get("weight_maps") else ["image", "label"]
    data = [{key: item[key] for key in keys} for item in items]
    dataset = Dataset(data, transform=training_transforms(plan, augment))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      drop_last=len(data) > batch_size, persistent_workers=num_workers > 0)
