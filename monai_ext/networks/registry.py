"""Registry of architectures and the single entry point :func:`build_network`.

Adding a variant = one new module with a :class:`~monai_ext.networks.base.SegmentationNetwork` subclass
plus one line in :data:`NETWORKS`. Options are validated here against the class signature so a typo in a
config fails at build time with the list of valid options, not deep inside a constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from .base import COMMON_OPTIONS, SegmentationNetwork
from .eff_unet import EffUNet
from .mobile_unet import MobileUNet
from .res_unet import MonaiResUNet, ResUNet
from .unet import UNet
from .unet3p import UNet3Plus
from .unetpp import UNetPlusPlus

NETWORKS: dict[str, type[SegmentationNetwork]] = {
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "unet3p": UNet3Plus,
    "res_unet": ResUNet,
    "res_unet_monai": MonaiResUNet,
    "mobile_unet": MobileUNet,
    "eff_unet": EffUNet,
}

_POSITIONAL = ("self", "spatial_dims", "in_channels", "out_channels")


def available_networks() -> list[str]:
    """Names accepted by :func:`build_network`, sorted."""
    return sorted(NETWORKS)


def network_options(name: str) -> list[str]:
    """Options ``name`` accepts (its own plus :data:`~monai_ext.networks.base.COMMON_OPTIONS`)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters.values()
    own = [p.name for p in params if p.name not in _POSITIONAL and p.kind is not p.VAR_KEYWORD]
    return sorted({*own, *COMMON_OPTIONS})


def check_network_config(name: str, features: Sequence[int] | None = None, **options: Any) -> None:
    """Check settings against ``name``'s own constraints without building anything (for config schemas).

    Why: ``eff_unet`` needs exactly five widths, ``unetpp`` pruning needs deep supervision, ...; a schema
    that asks here refuses such a config before any work starts, instead of a constructor failing after
    ingest and preprocessing. Raises ValueError for an unknown name and
    :class:`~monai_ext.networks.base.NetworkConfigError` (its ``option`` names the setting) otherwise.
    """
    _lookup(name).check_config(features, options)


def network_topology_lengths(name: str, features: Sequence[int] | None = None) -> tuple[int, int]:
    """How many ``strides`` and ``kernel_sizes`` entries ``name`` takes with ``features`` (None: its default).

    Why: a planner choosing per-axis strides and kernels must know how many levels the network has; for
    most that is ``len(features) - 1`` and ``len(features)``, but eff_unet's widths are its decoder's
    (five downsamplings, six resolution levels whatever ``features`` says).
    """
    return _lookup(name).topology_lengths(features)


def _lookup(name: str) -> type[SegmentationNetwork]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(
            f"unknown network {name!r}; known networks: {', '.join(available_networks())}"
        ) from None


def build_network(
    name: str, spatial_dims: int, in_channels: int, out_channels: int, **options: Any
) -> SegmentationNetwork:
    """Build a registered network; ValueError for an unknown name or option (listing the known ones)."""
    cls = _lookup(name)
    known = network_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for network {name!r}; known options: {', '.join(known)}"
        )
    if "features" in options and options["features"] is not None:
        options["features"] = tuple(options["features"])  # YAML/JSON configs give lists
    return cls(spatial_dims, in_channels, out_channels, **options)
