"""Predicting on the plan's grid and answering on the input's: resample in, windows, probabilities back.

The network was trained on cases resampled to the plan's ``target_spacing``, so an input is resampled to it
too (third order, as preprocessing did); the blended class probabilities (and a CGM network's presence
map) are resampled back to the input's own grid — its exact shape — *before* the argmax, as nnU-Net does,
so the mask lies on the input's voxels and no class boundary is blocky from a nearest-neighbour label
resize. An input already on the plan's grid (or a plan from before resampling) skips both steps: nothing
is interpolated.

Validation during training scores the preprocessed (resampled) cases; evaluation and ``unetflow infer``
come through here, so test metrics are measured on the native grid, on what a user receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nibabel.orientations import io_orientation
from torch import nn

from tasks.common.plan import Plan
from tasks.imaging.resampling import resample_image, resample_probabilities, resampling_target
from tasks.inference.sliding_window import WindowedPrediction, WindowSettings, predict_windows


def model_space_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each axis of the closest-RAS reordering (what ingest's spacing records)."""
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(io_orientation(affine)):
        spacing[int(target)] = float(zooms[axis])
    return spacing[0], spacing[1], spacing[2]


def predict_on_native_grid(model: nn.Module, plan: Plan, image: np.ndarray, spacing: Sequence[float] | None,
                           settings: WindowSettings, device: torch.device | str,
                           with_class: bool = True) -> WindowedPrediction:
    """Windowed prediction of a normalised ``C×…`` image of voxel size ``spacing`` (mm, per spatial axis),
    returned on the image's own grid (see the module docstring)."""
    native_shape = tuple(int(s) for s in image.shape[1:])
    target = resampling_target(native_shape, spacing, plan.target_spacing)
    if target is None:
        return predict_windows(model, image, settings, device, with_class, num_classes=plan.num_classes)
    assert spacing is not None
    native = tuple(float(s) for s in spacing[:len(native_shape)])
    prediction = predict_windows(model, resample_image(image, native, target), settings, device, with_class,
                                 num_classes=plan.num_classes)

    def back(volume: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(resample_probabilities(volume.float().cpu().numpy(), target, native, native_shape))

    return WindowedPrediction(probabilities=back(prediction.probabilities),
                              presence=None if prediction.presence is None else back(prediction.presence),
                              window_probabilities=prediction.window_probabilities,
                              border=None if prediction.border is None else back(prediction.border))


def predict_native(model: nn.Module, plan: Plan, image: np.ndarray, spacing: Sequence[float] | None,
                   overlap: float = 0.25, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """The argmax label map on the image's own grid, through the windows batch inference uses (no TTA, no
    CGM gate): what evaluation scores, so test metrics are those of ``unetflow infer``'s masks; and a
    border-core network's rim probability there (else None), for the instances inference would write."""
    settings = WindowSettings(roi_size=tuple(plan.patch_size), overlap=overlap, amp=False, stitch_device="cpu")
    prediction = predict_on_native_grid(model, plan, image, spacing, settings, device, with_class=False)
    border = None if prediction.border is None else prediction.border[0].numpy()
    return prediction.probabilities.argmax(0).to(torch.uint8).numpy(), border


def predict_native_labels(model: nn.Module, plan: Plan, image: np.ndarray, spacing: Sequence[float] | None,
                          overlap: float = 0.25, device: torch.device | str = "cpu") -> np.ndarray:
    """:func:`predict_native`'s label map alone."""
    return predict_native(model, plan, image, spacing, overlap, device)[0]
