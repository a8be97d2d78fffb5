"""Border-core targets: touching objects taught apart as a third kind of voxel, then folded back.

A class label says *cell* on both sides of the line where two cells touch, so a semantic U-Net has
nothing to predict there and its mask merges them; the U-Net paper's own data had a line of background
between touching cells, most instance annotations (nuclei, lesions) do not. nnU-Net's answer for
instance data (its "border-core" conversion) is to train on a target where each object's rim — the
voxels within ``thickness`` of anything that is not the same object — is an extra class, ``border``,
and the rest stays its class (the *core*). The cores of touching objects are then apart, and seed one
instance each.

The target is for training only. At inference the border probability is folded back into the
foreground class the network ranks highest at that voxel (:func:`fold_border`), so the class map keeps
its meaning — a rim voxel is a cell voxel — and the border probability is handed on separately, as the
landscape a watershed from the cores floods (``tasks.inference.instances``).

Border voxels carry no class of their own in the target, so with several foreground classes a rim
voxel's class comes from the channels of the classes beside it; with one class (cells, nuclei) the
fold is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["border_core_labels", "core_instances", "fold_border", "object_rims"]


def object_rims(instances: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Voxels of an object with a voxel of anything else (background, another object) within ``thickness``
    (chessboard distance, every axis), as a boolean mask. Image edges are not rims: an object cut by the
    edge of an image or patch continues beyond it."""
    if thickness < 1:
        raise ValueError(f"border thickness must be at least 1 voxel, got {thickness}")
    ids = np.asarray(instances)
    size = 2 * int(thickness) + 1
    high = ndimage.maximum_filter(ids, size=size, mode="nearest")
    low = ndimage.minimum_filter(ids, size=size, mode="nearest")
    return (ids != 0) & ((high != ids) | (low != ids))


def border_core_labels(classes: np.ndarray, instances: np.ndarray, border_value: int, thickness: int = 1
                       ) -> np.ndarray:
    """``classes`` with every object's rim (:func:`object_rims` of ``instances``) set to ``border_value``
    (same shape, uint8). Voxels the class map calls background stay background whatever the instances say."""
    classes = np.asarray(classes)
    if classes.shape != np.asarray(instances).shape:
        raise ValueError(f"classes {classes.shape} and instances {np.asarray(instances).shape} differ in shape")
    target = classes.astype(np.uint8, copy=True)
    target[object_rims(instances, thickness) & (classes != 0)] = border_value
    return target


def core_instances(instances: np.ndarray, target: np.ndarray, border_value: int) -> np.ndarray:
    """The instance map without the rims and background of a border-core ``target``: the objects whose
    distances the U-Net weight map's border term measures (its "cells"; everything else is its background,
    the rims between touching objects included, which is where the paper puts its weight)."""
    target = np.asarray(target)
    return np.where((target == border_value) | (target == 0), 0, np.asarray(instances))


def fold_border(probabilities: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(class probabilities C×…, border probability 1×… or None)`` from a network's softmax.

    ``probabilities`` has ``num_classes`` channels (no border class: returned as is, None) or
    ``num_classes + 1``, the last the border: its probability is added to the foreground class with the
    highest probability at each voxel, so the class map (argmax) calls a rim its object's class, and the
    channels still sum to one."""
    channels = probabilities.shape[0]
    if channels == num_classes:
        return probabilities, None
    if channels != num_classes + 1:
        raise ValueError(f"{channels} output channels for {num_classes} classes (expected {num_classes} "
                         f"or {num_classes + 1} with a border class)")
    border = probabilities[num_classes:]
    classes = probabilities[:num_classes].clone()
    best = probabilities[1:num_classes].argmax(0, keepdim=True) + 1
    classes.scatter_add_(0, best, border)
    return classes, border.clone()
