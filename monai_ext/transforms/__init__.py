"""Transforms the U-Net papers rely on that MONAI lacks: paper weight maps, elastic deformation, border-core targets."""

from .border_core import border_core_labels, core_instances, fold_border, object_rims
from .elastic import RandUNetElasticd, coarse_to_dense_displacement, interpolation_order, warp
from .weight_maps import (
    UNetWeightMapd,
    border_cutoff_distance,
    class_weight_map,
    split_objects,
    two_nearest_object_distances,
    unet_weight_map,
)

__all__ = [
    "border_core_labels",
    "core_instances",
    "fold_border",
    "object_rims",
    "RandUNetElasticd",
    "UNetWeightMapd",
    "border_cutoff_distance",
    "class_weight_map",
    "coarse_to_dense_displacement",
    "interpolation_order",
    "split_objects",
    "two_nearest_object_distances",
    "unet_weight_map",
    "warp",
]
