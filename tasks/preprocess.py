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


def channels_last(image: np.ndarray) -> np.ndarray:
    """X×Y×Z → X×Y×Z×1, so every image is handled per channel the same way."""
    if image.ndim not in (3, 4):
        raise ValueError(f"expected an X×Y×Z[×C] image, got shape {image.shape}")
    return image[..., None] if image.ndim == 3 else image


def foreground_intensities(image: np.ndarray, label: np.ndarray, max_samples: int = 10000,
                           seed: int = 0) -> np.ndarray:
    """Up to ``max_samples`` foreground voxels of one case, ``[n, C]`` (all of them when fewer).

    nnU-Net samples foreground voxels per case rather than concatenating whole images, so the memory
    of the statistics pass does not grow with the dataset; a case without foreground gives none.
    """
    image = channels_last(image)
    mask = label.reshape(image.shape[:3]) > 0
    values = image[mask]  # [n, C]
    if len(values) > max_samples:
        values = values[np.sort(np.random.default_rng(seed).choice(len(values), max_samples, replace=False))]
    return values.astype(np.float64, copy=False)


def intensity_statistics(samples: list[np.ndarray]) -> list[dict[str, float | None]]:
    """Per-channel foreground statistics from the cases' samples (``[n, C]`` each; training cases only).

    Returns one dict per channel: ``fg_mean``, ``fg_std``, ``fg_p00_5``, ``fg_p99_5`` and ``n`` (the
    number of samples). With no foreground anywhere the statistics are ``None`` (JSON-safe): only the
    ``ct`` scheme needs them and it refuses to plan from nothing.
    """
    channels = max((s.shape[1] for s in samples if s.ndim == 2), default=1)
    values = np.concatenate([s.reshape(-1, channels) for s in samples]) if samples else np.zeros((0, channels))
    stats = []
    for c in range(channels):
        column = values[:, c]
        if column.size == 0:
            stats.append({"fg_mean": None, "fg_std": None, "fg_p00_5": None, "fg_p99_5": None, "n": 0})
            continue
        stats.append({"fg_mean": float(column.mean()), "fg_std": float(column.std()),
                      "fg_p00_5": float(np.percentile(column, 0.5)),
                      "fg_p99_5": float(np.percentile(column, 99.5)), "n": int(column.size)})
    return stats


def _channel_modalities(modality: str | list[str] | dict[str, str] | None, channels: int) -> list[str]:
    """The manifest's modality as one name per channel (a single name applies to all channels)."""
    if isinstance(modality, dict):  # nnU-Net's channel_names {"0": "CT", "1": "T2"}
        return [str(modality.get(str(c), "")) for c in range(channels)]
    if isinstance(modality, list):
        if len(modality) != channels:
            raise ValueError(f"{len(modality)} modalities for {channels} channels")
        return [str(m) for m in modality]
    return [str(modality or "")] * channels


def normalization_from(stats: list[dict[str, float | None]], scheme: str,
                       modality: str | list[str] | dict[str, str] | None) -> dict[str, Any]:
    """nnU-Net's choice, per channel: CT is clipped to foreground percentiles then z-scored with
    foreground stats (fixed numbers from the training set, because Hounsfield units are absolute);
    every other modality is z-scored per image (its intensities have no absolute meaning)."""
    channels = []
    for stat, name in zip(stats, _channel_modalities(modality, len(stats)), strict=True):
        chosen = ("ct" if name.upper() == "CT" else "zscore") if scheme == "auto" else scheme
        if chosen == "ct":
            if not stat.get("n"):
                raise ValueError("CT normalisation needs foreground voxels in the training cases; none found")
            channels.append({"scheme": "ct", "clip": [stat["fg_p00_5"], stat["fg_p99_5"]],
                             "mean": stat["fg_mean"], "std": max(stat["fg_std"], 1e-8)})
        else:
            channels.append({"scheme": chosen})
    return {"channels": channels}


def _normalize_channel(channel: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    scheme = spec["scheme"]
    if scheme == "ct":
        low, high = spec["clip"]
        return (np.clip(channel, low, high) - spec["mean"]) / spec["std"]
    if scheme == "zscore":
        return (channel - channel.mean()) / max(float(channel.std()), 1e-8)
    if scheme == "none":
        return channel
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


def normalize(image: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """Apply the plan's normalisation per channel to X×Y×Z[×C]; shared by training, evaluation and
    inference. A plan of the older single-scheme form (``{"scheme": ...}``) applies to every channel."""
    image = image.astype(np.float32, copy=False)
    data = channels_last(image)
    specs = normalization.get("channels") or [normalization] * data.shape[-1]
    if len(specs) != data.shape[-1]:
        raise ValueError(f"image has {data.shape[-1]} channels, the plan normalises {len(specs)}")
    out = np.stack([_normalize_channel(data[..., c], spec) for c, spec in enumerate(specs)], axis=-1)
    return out.astype(np.float32).reshape(image.shape)


def choose_patch_size(shapes: list[tuple[int, ...]], depth: int, requested: tuple[int, ...] | None,
                      cap: int = 128) -> list[int]:
    """The median case shape, capped and rounded down to a multiple of 2**(depth-1)."""
    if requested:
        return list(requested)
    factor = 2 ** (depth - 1)
    median = np.median(np.array(shapes), axis=0)
    return [max(factor, int(min(m, cap)) // factor * factor) for m in median]


WEIGHT_MAP_VERSION = 1  # bump when unet_weight_map's output changes, so stale cache entries are not reused


def weight_map_key(label_sha256: str, config: PreprocessConfig, spacing: list[float],
                   labels_are_instances: bool = True) -> str:
    """Cache key: the label's hash and exactly the parameters the map depends on, nothing else —
    so normalisation, training or model settings never invalidate the (expensive) weight maps."""
    payload = json.dumps({"label": label_sha256, "w0": config.w0, "sigma": config.sigma,
                          "class_weights": config.class_weights, "spacing": spacing,
                          "instances": labels_are_instances, "version": WEIGHT_MAP_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_weight_map(instances: np.ndarray, label_sha256: str, spacing: list[float],
                      config: PreprocessConfig, cache_dir: Path, spatial_dims: int,
                      labels_are_instances: bool = True) -> tuple[np.ndarray, bool]:
    """The case's weight map from the cache, or computed and stored; returns (map, was_cached).

    ``labels_are_instances=False`` (semantic labels, no instance file) splits each class into connected
    components, so touching objects of one class are only separated where the label shows a gap.
    """
    from monai_ext.transforms.weight_maps import unet_weight_map

    path = cache_dir / f"{weight_map_key(label_sha256, config, spacing, labels_are_instances)}.npy"
    if path.exists():
        try:
            cached = np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            cached = None
        if cached is not None and cached.shape == instances.shape[:3]:
            return cached, True
    squeezed = instances[..., 0] if spatial_dims == 2 else instances
    weights = unet_weight_map(
        squeezed, w0=config.w0, sigma=config.sigma,
        class_weights=None if config.class_weights == "none" else config.class_weights,
        spacing=spacing[:spatial_dims], labels_are_instances=labels_are_instances,
    ).astype(np.float32)
    weights = weights[..., None] if spatial_dims == 2 else weights
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, weights)
    return weights, False


def plan_split(manifest: dict, data: DataConfig) -> Split:
    """The train/val/test split of the manifest's cases, decided before any statistics are taken."""
    return split_cases([c["case_id"] for c in manifest["cases"]], data.val_fraction, data.test_fraction,
                       data.split_seed)


def training_cases(manifest: dict, split: Split) -> list[dict]:
    """The manifest records of the training cases: the only ones intensity statistics may look at."""
    train = set(split.train)
    return [case for case in manifest["cases"] if case["case_id"] in train]


def case_intensity_sample(dataset_dir: Path, case: dict, max_samples: int) -> np.ndarray:
    """One training case's foreground sample (a task of its own, so the flow maps it in parallel)."""
    image, label, _ = load_case_arrays(dataset_dir, case)
    seed = int(case["sha256"]["image"][:8], 16)  # reproducible, and different per case
    return foreground_intensities(image, label, max_samples, seed)


def make_plan(manifest: dict, data: DataConfig, preprocess: PreprocessConfig, model: ModelConfig,
              train: TrainConfig, stats: list[dict[str, float | None]], split: Split | None = None) -> dict[str, Any]:
    """Everything downstream executes this; ``stats`` must come from ``split.train`` only, so the
    normalisation never sees validation or test intensities."""
    shapes = [tuple(c["shape"][:3]) for c in manifest["cases"]]
    flat = all(s[2] == 1 for s in shapes)
    spatial_dims = model.spatial_dims if model.spatial_dims != "auto" else (2 if flat else 3)
    if spatial_dims == 2 and not flat:
        raise ValueError("model.spatial_dims=2 on volumes is not supported yet: use 3 or 2D images")
    split = split or plan_split(manifest, data)
    return {
        "spatial_dims": spatial_dims,
        "in_channels": int(manifest["cases"][0]["channels"]),
        "num_classes": len(manifest["labels"]),
        "label_names": manifest["labels"],
        "normalization": normalization_from(stats, preprocess.normalization, manifest.get("modality", "")),
        "intensity_statistics": {"cases": split.train, "channels": stats},
        "patch_size": choose_patch_size([s[:spatial_dims] for s in shapes], len(model.features),
                                        train.patch_size),
        "weight_maps": preprocess.weight_maps,
        "split": {"train": split.train, "val": split.val, "test": split.test},
        "network": {"name": model.name, "features": list(model.features), "norm": model.norm,
                    **model.options},
    }


def load_case_arrays(dataset_dir: Path, case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image X×Y×Z[×C] float32, class label X×Y×Z uint8, instance label or None) of a canonical case."""
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
            "instances", ""), case["spacing"], config, cache_dir, dims, labels_are_instances=instances is not None)
        arrays["weight"] = to_channel_first(weights, dims)
    target = output_dir / "cases" / f"{case['case_id']}.npz"
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return {"case_id": case["case_id"], "weight_map_cached": cached}


def write_plan(output_dir: Path, plan: dict) -> None:
    write_json(output_dir / "plan.json", plan)
