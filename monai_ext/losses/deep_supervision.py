"""Deep supervision: the same loss on every decoder head, each against a resized target.

nnU-Net's scheme (Isensee et al., 2021): head ``i`` (0 = full resolution) gets weight ``1 / 2**i``,
the lowest-resolution head gets 0 because it is too coarse to be useful, and the weights are
normalised to sum to 1 - so adding heads does not change the loss scale. Targets and weight maps are
downsampled with nearest-neighbour interpolation, which keeps class indices valid (no blending).

Halving fits heads at *falling* resolution only, where the coarsest is a by-product too coarse to use.
Where every head matters it leaves one untrained: UNet++'s heads are all full resolution and each is a
sub-network inference can prune to (halving would never train X^{0,1}, the L1 network), and UNet 3+
supervises every scale, its bottleneck (En5) included, with the same weight. Those papers weight the
heads equally (``"equal"``). The loss cannot see which network it trains, so the rule is the network's:
each declares it (``deep_supervision_weights`` on the ``monai_ext.networks`` class) and a pipeline uses
that default and refuses a weighting that gives such a network's head 0 (:func:`gives_a_head_zero`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeepSupervisionLoss",
    "check_deep_supervision",
    "deep_supervision_weights",
    "gives_a_head_zero",
    "resize_nearest",
]

BaseLoss = Callable[..., torch.Tensor]
Weighting = str | list[float]


def check_deep_supervision(value: object) -> Weighting | None:
    """A ``deep_supervision`` loss option in its one form: None (off), ``"equal"``, ``"halving"`` or floats.

    ``False`` means off (YAML users write it); ``True`` is refused because it does not say which weighting
    (a pipeline leaves the key out to get the network's own). A sequence needs non-negative numbers, at
    least one of them positive, so a typo cannot turn the loss into zero.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str):
        if value in ("equal", "halving"):
            return value
    elif isinstance(value, Sequence) and value and all(
        isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w < float("inf") for w in value
    ) and any(w > 0 for w in value):
        return [float(w) for w in value]
    raise ValueError(
        f"deep_supervision must be null, 'equal', 'halving' or non-negative head weights (one > 0), got {value!r}"
    )


def gives_a_head_zero(weights: Weighting) -> bool:
    """Whether ``weights`` leaves some head untrained (halving always does with more than one head)."""
    return weights == "halving" or (not isinstance(weights, str) and any(w == 0 for w in weights))


def deep_supervision_weights(n_heads: int, weights: str | Sequence[float] = "halving") -> list[float]:
    """Per-head weights, highest resolution first.

    ``"halving"``: ``1, 1/2, 1/4, ...`` with the lowest-resolution head set to 0 (when there is more
    than one head), normalised to sum 1 - e.g. 4 heads -> ``[0.571, 0.286, 0.143, 0]``.
    ``"equal"``: ``1/n`` each. A sequence is used as given (no renormalisation, the caller decides).
    """
    if n_heads < 1:
        raise ValueError("need at least one head")
    if isinstance(weights, str):
        if weights == "equal":
            return [1.0 / n_heads] * n_heads
        if weights == "halving":
            raw = [0.5**i for i in range(n_heads)]
            if n_heads > 1:
                raw[-1] = 0.0
            total = sum(raw)
            return [r / total for r in raw]
        raise ValueError(f"weights must be 'equal', 'halving' or a sequence, got {weights!r}")
    out = [float(w) for w in weights]
    if len(out) != n_heads:
        raise ValueError(f"got {len(out)} deep supervision weights for {n_heads} heads")
    return out


def resize_nearest(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[B, C, *spatial]`` (any dtype) to ``spatial_shape``."""
    if tuple(x.shape[2:]) == tuple(spatial_shape):
        return x
    if any(h > t for h, t in zip(spatial_shape, x.shape[2:], strict=True)):
        raise ValueError(f"head {tuple(spatial_shape)} is larger than the target {tuple(x.shape[2:])}")
    resized = F.interpolate(x.float(), size=tuple(int(s) for s in spatial_shape), mode="nearest")
    return resized.to(x.dtype)


def _channel_first(t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return t if t.ndim == logits.ndim else t.unsqueeze(1)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base_loss`` over heads ``[main, aux1, aux2, ...]`` (high -> low resolution).

    Heads may come at their native lower resolution (target and weight map are then resized with
    nearest interpolation) or already upsampled to full resolution. ``base_loss`` is called as
    ``base_loss(logits, target)`` or, when a weight map is given, ``base_loss(logits, target, weight)``.
    Heads with weight 0 are not evaluated.
    """

    def __init__(self, base_loss: BaseLoss, weights: str | Sequence[float] = "halving") -> None:
        super().__init__()
        self.base_loss = base_loss
        checked = check_deep_supervision(weights)
        if checked is None:
            raise ValueError("DeepSupervisionLoss needs weights: 'equal', 'halving' or a sequence")
        self.weights = checked

    def forward(
        self, heads: Sequence[torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if isinstance(heads, torch.Tensor):
            heads = [heads]
        if len(heads) == 0:
            raise ValueError("no heads given")
        head_weights = deep_supervision_weights(len(heads), self.weights)
        total: torch.Tensor | None = None
        for logits, hw in zip(heads, head_weights, strict=True):
            if hw == 0:
                continue
            size = logits.shape[2:]
            t = resize_nearest(_channel_first(target, logits), size)
            if weight is None:
                term = self.base_loss(logits, t)
            else:
                term = self.base_loss(logits, t, resize_nearest(_channel_first(weight, logits), size))
            total = hw * term if total is None else total + hw * term
        if total is None:
            return heads[0].sum() * 0.0
        return total
