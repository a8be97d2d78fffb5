"""UNet++ at inference: pruned to level L (fast mode) or the mean of its heads (accurate mode).

The UNet++ paper's trade-off: head L of a deeply supervised UNet++ only needs the nodes X^{i,j} with
i + j <= L, so "UNet++ L1" runs a fraction of the network; averaging every head's probabilities costs
the full network and is the most accurate. ``infer.prune_level`` / ``infer.unetpp_heads`` choose, and
``unetflow evaluate`` measures every level (:func:`unetpp_levels`).

The mode is applied to a *view* of the loaded model (:meth:`~monai_ext.networks.unetpp.UNetPlusPlus.for_inference`,
shared weights), never to the model itself: threads share one cached model. It is refused, naming the
key, for a model whose plan is not a UNet++ trained with deep supervision, whose heads below the last
were never built or trained (:func:`tasks.config.deep_supervision.check_unetpp_inference`).
"""

from __future__ import annotations

from torch import nn

from monai_ext.networks.unetpp import UNetPlusPlus
from tasks.common.plan import Plan
from tasks.config.deep_supervision import check_unetpp_inference


def model_for_mode(model: nn.Module, plan: Plan, prune_level: int | None = None, heads: str = "last") -> nn.Module:
    """``model`` as inference should run it: itself (defaults), or a pruned / head-averaging UNet++ view."""
    if prune_level is None and heads == "last":
        return model
    spec = plan.network
    check_unetpp_inference(spec.name, spec.features, spec.options, prune_level, heads, source="plan.network")
    if not isinstance(model, UNetPlusPlus):
        raise ValueError(f"infer.prune_level/unetpp_heads: the plan says unetpp, the model is a {type(model).__name__}")
    return model.for_inference(prune_level, heads)


def unetpp_levels(plan: Plan) -> list[int]:
    """The levels a deeply supervised UNet++ can be pruned to (1 .. depth-1); empty for any other model."""
    spec = plan.network
    if spec.name != "unetpp" or not spec.options.get("deep_supervision"):
        return []
    return list(range(1, len(spec.features)))
