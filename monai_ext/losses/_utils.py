"""Shape conventions shared by the losses.

logits ``[B, C, *spatial]`` (C >= 2, softmax over C); target ``[B, 1, *spatial]`` or ``[B, *spatial]``
holding integer class indices; weight map ``[B, 1, *spatial]`` or ``[B, *spatial]``. Normalising once
here keeps every loss 2D/3D-agnostic.
"""

from __future__ import annotations

import torch


def check_logits(logits: torch.Tensor) -> None:
    """Reject tensors that cannot be ``[B, C>=2, *spatial]`` softmax logits."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
        raise ValueError(f"logits must be a tensor [B, C, *spatial], got {getattr(logits, 'shape', logits)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need C >= 2 channels for softmax, got C={logits.shape[1]}")


def index_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target as ``[B, *spatial]`` int64 class indices matching ``logits``' batch and spatial shape."""
    t = torch.as_tensor(target)
    if t.ndim == logits.ndim:
        if t.shape[1] != 1:
            raise ValueError(f"target with a channel axis must have 1 channel, got shape {tuple(t.shape)}")
        t = t[:, 0]
    if t.shape[0] != logits.shape[0] or t.shape[1:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return t.to(device=logits.device).long()


def voxel_weight(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """Weight map as ``[B, *spatial]`` float matching ``logits`` (None passes through)."""
    if weight is None:
        return None
    w = torch.as_tensor(weight)
    if w.ndim == logits.ndim:
        if w.shape[1] != 1:
            raise ValueError(f"weight map with a channel axis must have 1 channel, got {tuple(w.shape)}")
        w = w[:, 0]
    if w.shape[0] != logits.shape[0] or w.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"weight map shape {tuple(weight.shape)} does not match logits {tuple(logits.shape)}"
        )
    return w.to(device=logits.device, dtype=logits.dtype)


def one_hot(index: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, *spatial]`` indices -> ``[B, C, *spatial]`` one-hot (channel-first, unlike F.one_hot)."""
    oh = torch.nn.functional.one_hot(index.clamp(0, num_classes - 1), num_classes)
    return oh.movedim(-1, 1).to(dtype)


def reduce_weighted(per_voxel: torch.Tensor, weight: torch.Tensor | None, normalization: str) -> torch.Tensor:
    """Mean of ``weight * per_voxel`` over all voxels (``"voxels"``) or divided by ``sum(weight)``."""
    if weight is None:
        return per_voxel.mean()
    total = (per_voxel * weight).sum()
    if normalization == "voxels":
        return total / per_voxel.numel()
    if normalization == "weights":
        return total / weight.sum().clamp_min(torch.finfo(per_voxel.dtype).tiny)
    raise ValueError(f"normalization must be 'voxels' or 'weights', got {normalization!r}")
