"""Multi-class softmax focal loss (Lin et al., 2017) with an optional per-voxel weight map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import check_logits, index_target, reduce_weighted, voxel_weight

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """``-alpha_t (1 - p_t)^gamma log p_t`` averaged over voxels.

    Own implementation rather than ``monai.losses.FocalLoss`` because it must accept the same
    per-voxel weight map as the CE losses (normalised as in
    :class:`~monai_ext.losses.weighted_ce.PixelWeightedCrossEntropyLoss`). ``gamma = 0`` and no
    ``alpha`` reduce it to cross-entropy.

    Args:
        gamma: focusing exponent (UNet 3+ / RetinaNet default 2).
        alpha: optional per-class weights ``alpha_t`` (sequence of length C).
        normalization: ``"voxels"`` or ``"weights"`` when a weight map is given.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | None = None, normalization: str = "voxels"
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.normalization = normalization
        a = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", a, persistent=False)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_logits(logits)
        index = index_target(target, logits).clamp(0, logits.shape[1] - 1)
        logp_t = F.log_softmax(logits, dim=1).gather(1, index.unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        loss = -((1.0 - p_t).clamp_min(0.0) ** self.gamma) * logp_t
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise ValueError(f"alpha has {self.alpha.numel()} entries for {logits.shape[1]} classes")
            loss = loss * self.alpha.to(logits)[index]
        return reduce_weighted(loss, voxel_weight(weight, logits), self.normalization)
