"""Predicting one array with the plan's sliding window: shared by validation, evaluation and infer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from monai_ext.networks import cgm_probability
from monai_ext.transforms.border_core import fold_border
from tasks.common.plan import Plan
from tasks.inference.overlap_tile import output_tile, overlap_tile_inference


def roi_size_for(plan: Plan, roi_size: tuple[int, ...] | None = None) -> tuple[int, ...]:
    return tuple(roi_size) if roi_size else plan.patch_size


@dataclass(frozen=True)
class WindowSettings:
    """How batch inference runs the windows (a plain value, cheap to send to any worker)."""

    roi_size: tuple[int, ...]
    overlap: float = 0.25
    sw_batch_size: int = 4
    mirror: bool = False
    amp: bool = True
    stitch_device: str = "auto"  # "auto" | "cpu" | "device"


@dataclass
class WindowedPrediction:
    """Blended softmax ``C×…`` (on the CPU) and, for CGM networks, what the classifier said.

    ``presence`` is the Gaussian blend of the windows' "foreground present" probabilities, ``1×…``
    (so a voxel's gate follows the windows that cover it, weighted like its segmentation);
    ``window_probabilities`` lists each window's probability in the order MONAI ran them.
    ``border`` (``1×…``): a border-core network's rim probability, already folded into ``probabilities``
    (:func:`monai_ext.transforms.fold_border`), kept for the watershed that splits touching objects.
    """

    probabilities: torch.Tensor
    presence: torch.Tensor | None = None
    window_probabilities: list[float] = field(default_factory=list)
    border: torch.Tensor | None = None


def has_cgm(model: nn.Module) -> bool:
    return getattr(model, "cgm_head", None) is not None and hasattr(model, "forward_with_class")


def _flip_sets(spatial_dims: int, mirror: bool) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes (nnU-Net's mirroring TTA), or just no flip."""
    axes = list(range(2, 2 + spatial_dims))
    return [tuple(a for i, a in enumerate(axes) if mask >> i & 1) for mask in range(2 ** len(axes if mirror else []))]


def _stitch_device(device: torch.device, channels: int, spatial: tuple[int, ...], choice: str) -> torch.device:
    """Keep the blended volume on the GPU only when it (twice: buffer + weights) takes < 25% of free memory."""
    if device.type != "cuda" or choice == "cpu":
        return torch.device("cpu")
    if choice == "device":
        return device
    needed = 2 * (channels + 2) * int(np.prod(spatial)) * 4
    free, _total = torch.cuda.mem_get_info(device)
    return device if needed < 0.25 * free else torch.device("cpu")


@torch.no_grad()
def predict_windows(model: nn.Module, image: np.ndarray | torch.Tensor, settings: WindowSettings,
                    device: torch.device | str = "cpu", with_class: bool = True, *,
                    num_classes: int) -> WindowedPrediction:
    """Sliding windows (MONAI, Gaussian blending, ``sw_batch_size`` windows per pass) over ``C×…``.

    Windows run on ``device``; the blended volume lives where :func:`_stitch_device` puts it (the CPU
    unless it fits easily on the GPU), so a large volume never needs a full-size buffer per class on
    the GPU. Windows are blended as softmax probabilities, so mirrored passes and the CGM gate combine
    as probabilities. ``with_class`` (and a CGM head) also blends the presence probability.
    A valid-padding network (output smaller than its window) runs overlap-tile instead
    (:mod:`tasks.inference.overlap_tile`): ``roi_size`` is then its input tile, the image is mirrored by
    the margin and each window's output tile lands in its place, so the result still has the image's size.
    ``num_classes`` (the plan's, required): a network with one channel more is a border-core one, its rim folded
    back; were it optional, a caller forgetting it would get the rim as an extra class in the argmax, silently.
    """
    device = torch.device(device)
    tensor = torch.as_tensor(image, dtype=torch.float32)[None]
    spatial_dims = tensor.dim() - 2
    cgm = with_class and has_cgm(model)
    flips = _flip_sets(spatial_dims, settings.mirror)
    autocast = settings.amp and device.type == "cuda"
    window_probabilities: list[float] = []
    model.eval()

    def predictor(windows: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        probabilities, presence = None, None
        for axes in flips:
            batch = torch.flip(windows, axes) if axes else windows
            with torch.autocast(device.type, enabled=autocast):
                if cgm:
                    logits, class_logits = model.forward_with_class(batch)  # type: ignore[operator]
                else:
                    logits, class_logits = model(batch), None
            soft = torch.softmax(logits.float(), dim=1)
            soft = torch.flip(soft, axes) if axes else soft
            probabilities = soft if probabilities is None else probabilities + soft
            if class_logits is not None:
                present = cgm_probability(class_logits)  # what the CGM loss trains, not sigmoid(column 1)
                presence = present if presence is None else presence + present
        assert probabilities is not None
        probabilities = probabilities / len(flips)
        if presence is None:
            return probabilities
        presence = presence / len(flips)
        window_probabilities.extend(float(p) for p in presence.cpu())
        shape = (windows.shape[0], 1, *probabilities.shape[2:])  # a valid-padding output tile is smaller
        return probabilities, presence.view(-1, *([1] * (spatial_dims + 1))).expand(shape).contiguous()

    channels = int(getattr(model, "out_channels", 2))
    stitch = _stitch_device(device, channels, tuple(tensor.shape[2:]), settings.stitch_device)
    out_tile = output_tile(model, settings.roi_size)
    if out_tile is None:
        output = sliding_window_inference(
            tensor, roi_size=settings.roi_size, sw_batch_size=settings.sw_batch_size, predictor=predictor,
            overlap=settings.overlap, mode="gaussian", padding_mode="constant", sw_device=device, device=stitch)
    else:  # valid padding: output tiles smaller than the windows, the image mirrored by the margin
        output = overlap_tile_inference(tensor, settings.roi_size, out_tile, predictor, settings.overlap,
                                        settings.sw_batch_size, device, stitch)
    presence = None
    if isinstance(output, tuple):
        output, presence = output[0], output[1][0].float().cpu()
    probabilities, border = fold_border(output[0].float().cpu(), num_classes)  # raises on a channel mismatch
    return WindowedPrediction(probabilities, presence, window_probabilities, border)


def predict_labels(model: nn.Module, image: np.ndarray | torch.Tensor, roi_size: tuple[int, ...],
                   overlap: float = 0.25, sw_batch_size: int = 4,
                   device: torch.device | str = "cpu", *, num_classes: int) -> np.ndarray:
    """The argmax label map through the same windows as batch inference (no TTA, no CGM gate).

    Validation and test metrics are thereby measured on exactly what ``unetflow infer`` produces.
    """
    settings = WindowSettings(roi_size=tuple(roi_size), overlap=overlap, sw_batch_size=sw_batch_size, amp=False,
                              stitch_device="cpu")
    return predict_windows(model, image, settings, device, False, num_classes=num_classes).probabilities.argmax(
        0).to(torch.uint8).numpy()
