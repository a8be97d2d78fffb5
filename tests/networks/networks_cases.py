"""Shared test base for every network (like segmentation_models_pytorch's tests/models/base.py).

Tiny widths/sizes so the whole matrix (variant x 2D/3D x deep_supervision x cgm) runs in seconds on CPU.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from monai_ext.networks import NetworkOutput, build_network

TINY: dict[str, dict[str, Any]] = {
    "unet": {"features": (4, 8, 16, 32)},
    "unetpp": {"features": (4, 8, 16, 32)},
    "unet3p": {"features": (4, 8, 16, 32), "cat_channels": 4},
    "res_unet": {"features": (4, 8, 16, 32)},
    "res_unet_monai": {"features": (4, 8, 16, 32)},
    "mobile_unet": {"features": (4, 8, 16, 32)},
    "eff_unet": {"features": (4, 4, 8, 8, 16)},  # decoder widths; b0 encoder is fixed (~4M params)
}
NAMES = sorted(TINY)
DIMS = (2, 3)
IN_CH, OUT_CH, BATCH = 1, 3, 2


def spatial(name: str, dims: int) -> tuple[int, ...]:
    """Smallest size every level can use (eff_unet halves 5 times, so 32; 3D U-Nets use 16)."""
    return (32,) * dims if dims == 2 or name == "eff_unet" else (16,) * dims


def cases() -> list[tuple[str, int, bool, bool]]:
    """Full matrix, except eff_unet 3D (the slowest) gets only the two extreme combinations."""
    out = []
    for name, dims, ds, cgm in itertools.product(NAMES, DIMS, (False, True), (False, True)):
        if name == "eff_unet" and dims == 3 and ds != cgm:
            continue
        out.append((name, dims, ds, cgm))
    return out


def case_id(case: tuple[str, int, bool, bool]) -> str:
    name, dims, ds, cgm = case
    return f"{name}-{dims}d" + ("-ds" if ds else "") + ("-cgm" if cgm else "")


def make(
    name: str, dims: int, ds: bool = False, cgm: bool = False, seed: int = 0, **extra: Any
) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(name, dims, IN_CH, OUT_CH, deep_supervision=ds, cgm=cgm, **{**TINY[name], **extra})


def all_outputs(out: torch.Tensor | NetworkOutput) -> list[torch.Tensor]:
    if isinstance(out, NetworkOutput):
        return [out.logits, *out.aux_logits] + ([out.class_logits] if out.class_logits is not None else [])
    return [out]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
