"""Applying a plan's intensity normalisation and array layout: shared by preprocessing, evaluation and inference.

The *decision* (which scheme, which statistics) is made by preprocess from the training cases; this
module only executes it, so the model sees the same intensities in training and in the hospital batch.
"""

from __future__ import annotations

import numpy as np

from tasks.common.plan import ChannelNormalization, Normalization


def channels_last(image: np.ndarray) -> np.ndarray:
    """X×Y×Z → X×Y×Z×1, so every image is handled per channel the same way."""
    if image.ndim not in (3, 4):
        raise ValueError(f"expected an X×Y×Z[×C] image, got shape {image.shape}")
    return image[..., None] if image.ndim == 3 else image


def _normalize_channel(channel: np.ndarray, spec: ChannelNormalization) -> np.ndarray:
    scheme = spec.scheme
    if scheme == "ct":
        low, high = spec.clip
        return (np.clip(channel, low, high) - spec.mean) / spec.std
    if scheme == "zscore":
        return (channel - channel.mean()) / max(float(channel.std()), 1e-8)
    if scheme == "none":
        return channel
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


def normalize(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Apply the plan's normalisation per channel to X×Y×Z[×C]; shared by training, evaluation and inference."""
    image = image.astype(np.float32, copy=False)
    data = channels_last(image)
    specs = normalization.channels
    if len(specs) != data.shape[-1]:
        raise ValueError(f"image has {data.shape[-1]} channels, the plan normalises {len(specs)}")
    out = np.stack([_normalize_channel(data[..., c], spec) for c, spec in enumerate(specs)], axis=-1)
    return out.astype(np.float32).reshape(image.shape)


def to_channel_first(image: np.ndarray, spatial_dims: int) -> np.ndarray:
    """X×Y×Z[×C] → C×X×Y[×Z] (2D plans drop the singleton Z)."""
    if image.ndim == 3:
        image = image[..., None]
    image = np.moveaxis(image, -1, 0)
    return image[..., 0] if spatial_dims == 2 else image
