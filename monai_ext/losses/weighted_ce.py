"""Cross-entropy weighted per voxel by a precomputed map (U-Net paper, Eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import check_logits, index_target, reduce_weighted, voxel_weight

__all__ = ["PixelWeightedCrossEntropyLoss"]


class PixelWeightedCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy where each voxel's term is multiplied by a weight map ``w(x)``.

    The paper's energy is the plain weighted sum ``sum_x w(x) log p(x)``; we divide by a constant so
    the value does not depend on patch size. ``normalization="voxels"`` (default) divides by the number
    of voxels, so the weights keep their absolute meaning (``w = 2`` everywhere gives exactly twice the
    CE, and the border emphasis ``w0`` really adds loss); ``"weights"`` divides by ``sum(w)``, a weighted
    average whose scale is independent of ``w``'s magnitude. Without a weight map it is plain mean CE.

    Args:
        normalization: ``"voxels"`` or ``"weights"`` (see above).
        class_weight: optional per-class weights, multiplied in like ``F.cross_entropy(weight=...)``.
        ignore_index: target value whose voxels contribute nothing (and are not counted).
    """

    def __init__(
        self,
        normalization: str = "voxels",
        class_weight: Sequence[float] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if normalization not in ("voxels", "weights"):
            raise ValueError(f"normalization must be 'voxels' or 'weights', got {normalization!r}")
        self.normalization = normalization
        self.ignore_index = ignore_index
        cw = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", cw, persistent=False)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_logits(logits)
        index = index_target(target, logits)
        w = voxel_weight(weight, logits)
        cw = None if self.class_weight is None else self.class_weight.to(logits)
        ce = F.cross_entropy(logits, index.clamp(0, logits.shape[1] - 1), weight=cw, reduction="none")
        if self.ignore_index is None:
            return reduce_weighted(ce, w, self.normalization)
        keep = index != self.ignore_index
        w = keep.to(ce.dtype) if w is None else w * keep
        total = (ce * w).sum()
        denom = keep.sum() if self.normalization == "voxels" or weight is None else w.sum()
        return total / denom.clamp_min(1e-12)
