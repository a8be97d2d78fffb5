"""Deep supervision from end to end: the model's heads, the loss term that trains them, UNet++'s inference modes.

Why one place: these settings live in three sections of ``params.yaml`` and contradict each other in
silence. A network built with ``deep_supervision: true`` and trained by a loss without the term keeps
untrained aux heads, and a UNet++ pruned to such a head (``prune_level``) serves noise. So:

* ``model.options.deep_supervision: true`` gets the loss term by default: ``train.loss_options.deep_supervision``
  left out becomes the network's own weighting (``deep_supervision_weights`` on its class: ``equal`` for
  UNet++ and UNet 3+, whose papers weight every head alike, nnU-Net's ``halving`` for heads at falling
  resolution). The resolved value is what the run records.
* A term on one side only is refused, naming both keys, as is a weighting that gives a head weight 0 on a
  network whose heads all count (``halving`` on UNet++/UNet 3+, or a 0 in a weight list).
* ``infer.prune_level`` / ``infer.unetpp_heads`` apply to a UNet++ trained with deep supervision only: the
  schema refuses them against ``model`` (when inference uses this project's model, ``infer.model_uri``
  null), and inference checks the loaded model's own plan again (:func:`check_unetpp_inference`).

Plain functions on plain values, so the schema (:mod:`tasks.config`) and inference share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from monai_ext.losses.deep_supervision import check_deep_supervision, gives_a_head_zero
from monai_ext.networks import NETWORKS

MODEL_KEY = "model.options.deep_supervision"
LOSS_KEY = "train.loss_options.deep_supervision"


class _Model(Protocol):
    name: str
    features: tuple[int, ...]
    options: dict[str, Any]


class _Train(Protocol):
    loss_options: dict[str, Any]


class _Infer(Protocol):
    model_uri: str | None
    prune_level: int | None
    unetpp_heads: str


class _Params(Protocol):
    model: _Model
    train: _Train
    infer: _Infer


ParamsT = TypeVar("ParamsT", bound=_Params)


def agree_on_deep_supervision(params: ParamsT) -> ParamsT:
    """The ``Params`` validator: the loss trains the heads the model has, UNet++ inference modes need them.

    Why in the schema: only it sees model, loss and infer together, before any work starts. The resolved
    weighting is written into ``train.loss_options``, so every logged copy of the params shows what the run
    used. (Plain values and protocols here: :mod:`tasks.config` imports this module, not the other way.)
    """
    model, infer = params.model, params.infer
    params.train.loss_options.update(resolve_loss_supervision(model.name, model.options, params.train.loss_options))
    check_one_unetpp_mode(infer.prune_level, infer.unetpp_heads)
    if infer.model_uri is None:  # this project's model; any model is checked against its own plan at inference
        check_unetpp_inference(model.name, model.features, model.options, infer.prune_level, infer.unetpp_heads)
    return params


def network_weighting(network: str) -> str:
    """The deep-supervision weighting that fits ``network``'s heads (its class declares it)."""
    return NETWORKS[network].deep_supervision_weights


def resolve_loss_supervision(network: str, model_options: Mapping[str, Any],
                             loss_options: Mapping[str, Any]) -> dict[str, Any]:
    """``loss_options`` with the deep-supervision term the model needs; ValueError naming both keys.

    Left out, the term follows the model (the network's weighting when its heads exist, none otherwise);
    given, it must agree with the model.
    """
    on = bool(model_options.get("deep_supervision"))
    if "deep_supervision" not in loss_options:
        return {**loss_options, "deep_supervision": network_weighting(network)} if on else dict(loss_options)
    weights = check_deep_supervision(loss_options["deep_supervision"])
    if on and weights is None:
        raise ValueError(f"{MODEL_KEY} is true but {LOSS_KEY} is off: the aux heads would never be trained "
                         f"(leave {LOSS_KEY} out for the network's weighting, or set {MODEL_KEY}: false)")
    if not on and weights is not None:
        raise ValueError(f"{LOSS_KEY} is {weights!r} but {MODEL_KEY} is not true: the network has no aux heads "
                         f"to supervise (set {MODEL_KEY}: true, or remove {LOSS_KEY})")
    if weights is not None and network_weighting(network) == "equal" and gives_a_head_zero(weights):
        raise ValueError(f"{LOSS_KEY} {weights!r} gives a head of model.name {network!r} weight 0, but every "
                         f"head of it counts (UNet++: each is a network prune_level can select; UNet 3+: the "
                         f"paper supervises every scale): use 'equal' or weights above 0")
    return {**loss_options, "deep_supervision": weights}


def check_one_unetpp_mode(prune_level: int | None, heads: str) -> None:
    """Fast mode (``infer.prune_level``) or accurate mode (``infer.unetpp_heads: mean``), not both at once."""
    if prune_level is not None and heads != "last":
        raise ValueError("infer.prune_level and infer.unetpp_heads: mean exclude each other (mean averages the "
                         "full network's heads): set one of them")


def check_unetpp_inference(network: str, features: Sequence[int], options: Mapping[str, Any],
                           prune_level: int | None, heads: str, source: str = "model") -> None:
    """Refuse ``infer.prune_level`` / ``infer.unetpp_heads`` a model cannot serve; ValueError naming the keys.

    ``source`` says where ``network``/``options`` come from in messages (``model`` in params, or the loaded
    model's plan). Pruning to level L, or averaging heads, needs heads L1..L{n-1}, which only a UNet++
    built and trained with deep supervision has.
    """
    if prune_level is None and heads == "last":
        return
    check_one_unetpp_mode(prune_level, heads)
    key = "infer.prune_level" if prune_level is not None else "infer.unetpp_heads"
    if network != "unetpp":
        raise ValueError(f"{key} applies to UNet++ only, and {source}.name is {network!r}")
    if not options.get("deep_supervision"):
        raise ValueError(f"{key} needs a UNet++ trained with deep supervision ({source}.options.deep_supervision: "
                         "true): without it the heads below the last were never built or trained")
    last = len(features) - 1
    if prune_level is not None and not 1 <= prune_level <= last:
        raise ValueError(f"infer.prune_level must be in 1..{last} for {source}.features {list(features)}, "
                         f"got {prune_level}")
