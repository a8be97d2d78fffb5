"""Predicting one array with the plan's sliding window: shared by validation, evaluation and infer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn


def roi_size_for(plan: dict[str, Any], roi_size: tuple[int, ...] | None = None) -> tuple[int, ...]:
    return tuple(roi_size) if roi_size else tuple(plan["patch_size"])


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: np.ndarray | torch.Tensor, roi_size: tuple[int, ...],
                          overlap: float = 0.25, sw_batch_size: int = 4,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """Softmax probabilities C×… for a channel-first image, windows blended with a Gaussian.

    The stitched volume lives on the CPU (``sw_device`` on the model's device, ``device`` CPU), so a
    large volume never needs a full-size buffer per class on the GPU.
    """
    tensor = torch.as_tensor(image, dtype=torch.float32)[None]
    model.eval()
    logits = sliding_window_inference(
        tensor, roi_size=roi_size, sw_batch_size=sw_batch_size, predictor=model, overlap=overlap,
        mode="gaussian", padding_mode="constant", sw_device=device, device="cpu")
    return torch.softmax(logits[0].float(), dim=0)


def predict_labels(model: nn.Module, image: np.ndarray | torch.Tensor, roi_size: tuple[int, ...],
                   overlap: float = 0.25, sw_batch_size: int = 4,
                   device: torch.device | str = "cpu") -> np.ndarray:
    probabilities = predict_probabilities(model, image, roi_size, overlap, sw_batch_size, device)
    return probabilities.argmax(0).to(torch.uint8).numpy()


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice for each foreground class; 1.0 when both are empty (nothing to find, nothing found)."""
    scores = {}
    for cls in range(1, num_classes):
        p, t = prediction == cls, truth == cls
        denominator = p.sum() + t.sum()
        scores[cls] = 1.0 if denominator == 0 else float(2.0 * np.logical_and(p, t).sum() / denominator)
    return scores


def iou_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    scores = {}
    for cls in range(1, num_classes):
        p, t = prediction == cls, truth == cls
        union = np.logical_or(p, t).sum()
        scores[cls] = 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)
    return scores
