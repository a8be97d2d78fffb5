"""Per-channel foreground intensity statistics of the training cases, and the normalisation they decide.

Applying the decided normalisation is shared with inference (``tasks.common.normalization``); deciding it
happens here, from training cases only, so validation and test intensities never leak into the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.normalization import channels_last
from tasks.common.plan import ChannelNormalization, Normalization
from tasks.preprocess.cases import load_case_arrays


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
                       modality: str | list[str] | dict[str, str] | None) -> Normalization:
    """nnU-Net's choice, per channel: CT is clipped to foreground percentiles then z-scored with
    foreground stats (fixed numbers from the training set, because Hounsfield units are absolute);
    every other modality is z-scored per image (its intensities have no absolute meaning)."""
    channels = []
    for stat, name in zip(stats, _channel_modalities(modality, len(stats)), strict=True):
        chosen = ("ct" if name.upper() == "CT" else "zscore") if scheme == "auto" else scheme
        if chosen == "ct":
            if not stat.get("n"):
                raise ValueError("CT normalisation needs foreground voxels in the training cases; none found")
            channels.append(ChannelNormalization(scheme="ct", clip=(stat["fg_p00_5"], stat["fg_p99_5"]),
                                                 mean=stat["fg_mean"], std=max(stat["fg_std"], 1e-8)))
        else:
            channels.append(ChannelNormalization(scheme=chosen))
    return Normalization(channels=tuple(channels))


def nonzero_shape(image: np.ndarray) -> list[int]:
    """Shape of the bounding box of the voxels non-zero in any channel (nnU-Net crops cases to it); the
    whole shape when nothing is zero-valued (CT) or everything is (an empty image is not cropped to nothing)."""
    spatial = channels_last(image)
    mask = np.any(spatial != 0, axis=-1)
    if not mask.any():
        return [int(v) for v in mask.shape]
    return [int(np.ptp(np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0])) + 1
            for axis in range(3)]


def case_intensity_sample(dataset_dir: Path, case: dict, max_samples: int) -> dict[str, Any]:
    """One training case's foreground sample (``values``, ``[n, C]``) and the shape of its non-zero region
    (``nonzero_shape``, for the fingerprint); a task of its own, so the flow maps it in parallel."""
    image, label, _ = load_case_arrays(dataset_dir, case)
    seed = int(case["sha256"]["image"][:8], 16)  # reproducible, and different per case
    return {"case_id": case["case_id"], "values": foreground_intensities(image, label, max_samples, seed),
            "nonzero_shape": nonzero_shape(image)}
