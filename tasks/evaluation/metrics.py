"""Overlap and distance metrics per foreground class: Dice, IoU and HD95 (in mm when given the spacing).

Used by validation during training and by the test-set evaluation, on label maps predicted through
the same sliding window as batch inference.
"""

from __future__ import annotations

import numpy as np
import torch


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


def hd95_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                   spacing: list[float] | None = None) -> dict[int, float]:
    """95th-percentile Hausdorff distance per foreground class (in mm when ``spacing`` is given).

    0 when both masks are empty; NaN when exactly one is (the distance is undefined, and a number
    would hide a missed or hallucinated structure).
    """
    from monai.metrics import compute_hausdorff_distance

    scores = {}
    for cls in range(1, num_classes):
        p, t = prediction == cls, truth == cls
        if not p.any() and not t.any():
            scores[cls] = 0.0
        elif not p.any() or not t.any():
            scores[cls] = float("nan")
        else:
            pred = torch.from_numpy(np.stack([~p, p]))[None]
            true = torch.from_numpy(np.stack([~t, t]))[None]
            distance = compute_hausdorff_distance(pred, true, include_background=False, percentile=95,
                                                  spacing=spacing)
            scores[cls] = float(distance[0, 0])
    return scores
