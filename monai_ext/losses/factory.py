"""Build the training loss from a config name + options (the pipeline's single entry point).

The returned module takes ``(output, target, weight=None)``; ``output`` is either a logits tensor, a
list/tuple ``[main, aux1, ...]`` (high -> low resolution), or any object with attributes ``logits``,
``aux_logits`` (list or None) and ``class_logits`` (tensor or None) - e.g. the networks package's
``NetworkOutput``. Attributes are read by duck typing so the losses do not depend on the networks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .cgm import CGMLoss
from .deep_supervision import DeepSupervisionLoss, check_deep_supervision
from .focal import FocalLoss
from .hybrid import CEDiceLoss, FocalMSSSIMIoULoss
from .region import SoftDiceLoss
from .weighted_ce import PixelWeightedCrossEntropyLoss

__all__ = ["CGM_DEFAULT_WEIGHT", "LOSS_REGISTRY", "SegmentationLoss", "build_loss", "register_loss", "split_output"]


class _PlainCrossEntropyLoss(PixelWeightedCrossEntropyLoss):
    """Unweighted CE that accepts and ignores a weight map, so pipelines can always pass one."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return super().forward(logits, target, None)


class _RequiredWeightCrossEntropyLoss(PixelWeightedCrossEntropyLoss):
    """The U-Net paper's weighted CE; a missing weight map is a configuration error, not a fallback."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if weight is None:
            raise ValueError("loss 'wce' needs a weight map (add UNetWeightMapd to the transforms)")
        return super().forward(logits, target, weight)


LOSS_REGISTRY: dict[str, type[nn.Module]] = {
    "ce": _PlainCrossEntropyLoss,
    "wce": _RequiredWeightCrossEntropyLoss,
    "dice": SoftDiceLoss,
    "ce_dice": CEDiceLoss,
    "focal": FocalLoss,
    "focal_msssim_iou": FocalMSSSIMIoULoss,
}

_WRAPPER_OPTIONS = ("deep_supervision", "cgm_weight", "cgm_background")

#: ``cgm_weight`` a model with a CGM gets when none is given: UNet 3+ adds the CGM's BCE to the
#: segmentation loss unweighted. Resolved by the params schema (``tasks.config``), not here (see below).
CGM_DEFAULT_WEIGHT = 1.0


def register_loss(name: str, cls: type[nn.Module]) -> None:
    """Add a loss class taking ``(logits, target, weight=None)`` to the registry."""
    if name in LOSS_REGISTRY:
        raise ValueError(f"loss {name!r} already registered")
    LOSS_REGISTRY[name] = cls


def split_output(output: Any) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """``(main logits, aux logits high -> low res, class logits or None)`` from any network output."""
    if isinstance(output, torch.Tensor):
        return output, [], None
    if isinstance(output, (list, tuple)):
        if not output or not all(isinstance(o, torch.Tensor) for o in output):
            raise ValueError("a list/tuple output must hold logits tensors [main, aux1, ...]")
        return output[0], list(output[1:]), None
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"cannot find logits in network output of type {type(output).__name__}")
    aux = getattr(output, "aux_logits", None) or []
    return logits, list(aux), getattr(output, "class_logits", None)


class SegmentationLoss(nn.Module):
    """Base loss + optional deep supervision over aux heads + optional weighted CGM term.

    Without ``deep_supervision`` any aux heads are ignored (only the main logits are supervised).
    With ``cgm_weight > 0`` the output must carry ``class_logits``; otherwise the CGM term is skipped.
    The default stays 0 here because a loss cannot see the network: the pipeline's params schema
    (``tasks.config``) resolves it, giving a CGM network a term by default and refusing a weight that
    contradicts the model, so a classifier is never shipped untrained.
    """

    def __init__(
        self,
        base_loss: nn.Module,
        deep_supervision: str | Sequence[float] | None = None,
        cgm_weight: float = 0.0,
        cgm_background: int = 0,
    ) -> None:
        super().__init__()
        self.base_loss = base_loss
        self.deep_supervision = (
            None if deep_supervision is None else DeepSupervisionLoss(base_loss, deep_supervision)
        )
        if cgm_weight < 0:
            raise ValueError(f"cgm_weight must be >= 0, got {cgm_weight}")
        self.cgm_weight = float(cgm_weight)
        self.cgm = CGMLoss(background=cgm_background)

    def forward(self, output: Any, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits, aux, class_logits = split_output(output)
        if self.deep_supervision is not None:
            loss = self.deep_supervision([logits, *aux], target, weight)
        else:
            loss = self.base_loss(logits, target, weight)
        if self.cgm_weight > 0:
            if class_logits is None:
                raise ValueError("cgm_weight > 0 but the network output has no class_logits")
            loss = loss + self.cgm_weight * self.cgm(class_logits, target)
        return loss


def _constructor_options(cls: type[nn.Module]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]


def build_loss(name: str, **options: Any) -> SegmentationLoss:
    """Instantiate a registered loss by name.

    Options are the loss class's constructor arguments plus ``deep_supervision`` (None or False, ``"equal"``,
    ``"halving"`` or a weight sequence; :mod:`.deep_supervision` says which fits which network),
    ``cgm_weight`` (float, default 0) and ``cgm_background``.
    Unknown names or options raise ``ValueError`` listing the valid ones.
    """
    if name not in LOSS_REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSS_REGISTRY)}")
    cls = LOSS_REGISTRY[name]
    allowed = _constructor_options(cls)
    unknown = sorted(set(options) - set(allowed) - set(_WRAPPER_OPTIONS))
    if unknown:
        known = sorted(allowed + list(_WRAPPER_OPTIONS))
        raise ValueError(f"unknown option(s) {unknown} for loss {name!r}; known: {known}")
    wrapper = {k: options.pop(k) for k in _WRAPPER_OPTIONS if k in options}
    if "deep_supervision" in wrapper:  # one form (False = off); which weighting fits is the network's rule
        wrapper["deep_supervision"] = check_deep_supervision(wrapper["deep_supervision"])
    return SegmentationLoss(cls(**options), **wrapper)
