"""Preprocess: decide the plan from the data, then normalise every case and attach its weight map.

As in nnU-Net, a *plan* is derived from the dataset once (spatial dims, patch size, intensity
statistics, the train/val/test split) and everything downstream — the trainer, the evaluator and
inference — only executes it. The plan travels with the registered model, so inference never
re-derives or hard-codes a preprocessing constant.

Weight maps (the U-Net paper's w_c + w0·exp(−(d1+d2)²/2σ²)) are expensive, so they are cached on
disk under a key made of the label's sha256 and the weight parameters: changing ``w0`` or ``sigma``
recomputes them, nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tasks.atomic import atomic_path, write_json
from tasks.config import DataConfig, ModelConfig, PreprocessConfig, TrainConfig


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]
    test: list[str]


def split_cases(case_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """A deterministic shuffle-and-cut; at least one case in each non-empty fraction."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n_test = max(1, round(test_fraction * len(ids))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(ids))) if val_fraction > 0 else 0
    if len(ids) - n_test - n_val < 1:
        raise ValueError(f"{len(ids)} cases are too few for val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction}")
    return Split(train=sorted(shuffled[n_test + n_val:]), val=sorted(shuffled[n_test:n_test + n_val]),
                 test=sorted(shuffled[:n_test]))


def intensity_statistics(images: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    """Foreground intensity statistics (nnU-Net samples voxels under the labels)."""
    foreground = np.concatenate([img[lab > 0].ravel() for img, lab in zip(images, labels, strict=True)])
    if foreground.size == 0:
        foreground = np.concatenate([img.ravel() for img in images])
    everything = np.concatenate([img.ravel() for img in images])
    return {
        "fg_mean": float(foreground.mean()), "fg_std": float(foreground.std()),
        "fg_p00_5": float(np.percentile(foreground, 0.5)), "fg_p99_5": float(np.percentile(foreground, 99.5)),
        "mean": float(everything.mean()), "std": float(everything.std()),
    }


def normalization_from(stats: dict[str, float], scheme: str, modality: str) -> dict[str, Any]:
    """nnU-Net's choice: CT is clipped to foreground percentiles then z-scored with foreground stats;
    every other modality is z-scored per image."""
    if scheme == "auto":
        scheme = "ct" if modality.upper() == "CT" else "zscore"
    if scheme == "ct":
        return {"scheme": "ct", "clip": [stats["fg_p00_5"], stats["fg_p99_5"]],
                "mean": stats["fg_mean"], "std": max(stats["fg_std"], 1e-8)}
    return {"scheme": scheme}


def normalize(image: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """Apply the plan's normalisation; shared by training, evaluation and inference."""
    image = image.astype(np.float32, copy=False)
    scheme = normalization["scheme"]
    if scheme == "ct":
        low, high = normalization["clip"]
        return ((np.clip(image, low, high) - normalization["mean"]) / normalization["std"]).astype(np.float32)
    if scheme == "zscore":
        return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)
    return image


def choose_patch_size(shapes: list[tuple[int, ...]], depth: int, requested: tuple[int, ...] | None,
                      cap: int = 128) -> list[int]:
    """The median case shape, capped and rounded down to a multiple of 2**(depth-1)."""
    if requested:
        return list(requested)
    factor = 2 ** (depth - 1)
    median = np.median(np.array(shapes), axis=0)
    return [max(factor, int(min(m, cap)) // factor * factor) for m in median]


def weight_map_key(label_sha256: str, config: PreprocessConfig, spacing: list[float]) -> str:
    payload = json.dumps({"label": label_sha256, "w0": config.w0, "sigma": config.sigma,
                          "class_weights": config.class_weights, "spacing": spacing}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_weight_map(instances: np.ndarray, label_sha256: str, spacing: list[float],
                      config: PreprocessConfig, cache_dir: Path, spatial_dims: int) -> tuple[np.ndarray, bool]:
    """The case's weight map from the cache, or computed and stored; returns (map, was_cached)."""
    from monai_ext.transforms.weight_maps import unet_weight_map

    path = cache_dir / f"{weight_map_key(label_sha256, config, spacing)}.npy"
    if path.exists():
        return np.load(path), True
    squeezed = instances[..., 0] if spatial_dims == 2 else instances
    weights = unet_weight_map(
        squeezed, w0=config.w0, sigma=config.sigma,
        class_weights=None if config.class_weights == "none" else config.class_weights,
        spacing=spacing[:spatial_dims],
    ).astype(np.float32)
    weights = weights[..., None] if spatial_dims == 2 else weights
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, weights)
    return weights, False


def make_plan(manifest: dict, data: DataConfig, preprocess: PreprocessConfig, model: ModelConfig,
              train: TrainConfig, stats: dict[str, float]) -> dict[str, Any]:
    shapes = [tuple(c["shape"][:3]) for c in manifest["cases"]]
    flat = all(s[2] == 1 for s in shapes)
    spatial_dims = model.spatial_dims if model.spatial_dims != "auto" else (2 if flat else 3)
    if spatial_dims == 2 and not flat:
        raise ValueError("model.spatial_dims=2 on volumes is not supported yet: use 3 or 2D images")
    split = split_cases([c["case_id"] for c in manifest["cases"]], data.val_fraction,
                        data.test_fraction, data.split_seed)
    return {
        "spatial_dims": spatial_dims,
        "in_channels": int(manifest["cases"][0]["channels"]),
        "num_classes": len(manifest["labels"]),
        "label_names": manifest["labels"],
        "normalization": normalization_from(stats, preprocess.normalization, manifest.get("modality", "")),
        "intensity_statistics": stats,
        "patch_size": choose_patch_size([s[:spatial_dims] for s in shapes], len(model.features),
                                        train.patch_size),
        "weight_maps": preprocess.weight_maps,
        "split": {"train": split.train, "val": split.val, "test": split.test},
        "network": {"name": model.name, "features": list(model.features), "norm": model.norm,
                    **model.options},
    }


def load_case_arrays(dataset_dir: Path, case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = np.asanyarray(nib.load(str(dataset_dir / case["files"]["image"])).dataobj).astype(np.float32)
    label = np.asanyarray(nib.load(str(dataset_dir / case["files"]["label"])).dataobj).astype(np.uint8)
    instances = None
    if "instances" in case["files"]:
        instances = np.asanyarray(nib.load(str(dataset_dir / case["files"]["instances"])).dataobj)
    return image, label, instances


def to_channel_first(image: np.ndarray, spatial_dims: int) -> np.ndarray:
    """X×Y×Z[×C] → C×X×Y[×Z] (2D plans drop the singleton Z)."""
    if image.ndim == 3:
        image = image[..., None]
    image = np.moveaxis(image, -1, 0)
    return image[..., 0] if spatial_dims == 2 else image


def preprocess_case(dataset_dir: Path, case: dict, plan: dict, config: PreprocessConfig,
                    output_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Write ``cases/<id>.npz`` holding image (C×…), label (1×…) and weight (1×…) arrays."""
    dims = plan["spatial_dims"]
    image, label, instances = load_case_arrays(dataset_dir, case)
    arrays = {
        "image": to_channel_first(normalize(image, plan["normalization"]), dims),
        "label": to_channel_first(label, dims),
    }
    cached = None
    if config.weight_maps:
        objects = instances if instances is not None else label
        weights, cached = cached_weight_map(objects, case["sha256"]["label"] + case["sha256"].get(
            "instances", ""), case["spacing"], config, cache_dir, dims)
        arrays["weight"] = to_channel_first(weights, dims)
    target = output_dir / "cases" / f"{case['case_id']}.npz"
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return {"case_id": case["case_id"], "weight_map_cached": cached}


def write_plan(output_dir: Path, plan: dict) -> None:
    write_json(output_dir / "plan.json", plan)
