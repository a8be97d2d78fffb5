"""Deterministic networks and real input files for the inference tests.

``ThresholdNet`` is a real :class:`SegmentationNetwork` (same ``forward``/``forward_with_class`` code
path as the registered networks) whose segmenter is a voxel threshold and whose CGM head is a real
``CGMHead`` with hand-set weights: P(foreground present) = sigmoid(gain·(max intensity − level)).
The CGM tests construct the classifier deterministically this way rather than training one.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch

from monai_ext.networks.base import SegmentationNetwork
from tasks.common.plan import Plan
from tasks.inference.segment import InferSettings


class ThresholdNet(SegmentationNetwork):
    """Foreground where channel 0 > ``level``; with ``cgm_level`` a CGM head that says 'present' iff max > it."""

    def __init__(self, spatial_dims: int, level: float, cgm_level: float | None = None, in_channels: int = 1,
                 gain: float = 20.0) -> None:
        super().__init__(spatial_dims, in_channels, 2, cgm=cgm_level is not None, cgm_dropout=0.0)
        self.level = level
        self.seen: list[torch.Tensor] = []
        self.register_buffer("scale", torch.tensor(50.0))  # a weight, so model_identity has something to hash
        self._init_cgm(1)
        if self.cgm_head is not None:
            with torch.no_grad():
                self.cgm_head.conv.weight.zero_()
                self.cgm_head.conv.weight[1].fill_(gain)
                self.cgm_head.conv.bias.copy_(torch.tensor([0.0, -gain * cgm_level]))

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        self.seen.append(x.detach().clone())
        score = self.scale * (x[:, :1] - self.level)
        return torch.cat([-score, score], dim=1), [], x[:, :1]


def plan_for(spatial_dims: int, patch: list[int], in_channels: int = 1, normalization: str = "none") -> Plan:
    return Plan.model_validate({
        "spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": 2,
        "label_names": {"background": 0, "lesion": 1}, "patch_size": patch,
        "normalization": {"channels": [{"scheme": normalization}] * in_channels},
        "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": [4, 8, 16], "norm": "batch"}})


def settings(**changes) -> InferSettings:
    return InferSettings(**{"device": "cpu", "model_id": "test", **changes})


def oblique_affine(spacing=(0.7, 1.3, 3.1), origin=(12.0, -30.5, 7.25)) -> np.ndarray:
    """A rotation about a skew axis, anisotropic voxels and a flipped axis (so reorientation matters)."""
    axis = np.array([1.0, 0.4, 0.3])
    axis /= np.linalg.norm(axis)
    angle = 0.5
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing) @ np.diag([-1, 1, -1])[:, [1, 0, 2]]
    affine[:3, 3] = origin
    return affine


def blobs(shape: tuple[int, ...], seed: int = 0, count: int = 3, radius: float = 2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = [rng.uniform(r * 0.2, r * 0.8) for r in shape]
        distance = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        out[distance <= radius ** 2] = 1.0
    return out


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def drop_frame_of_reference(datasets: list[pydicom.Dataset]) -> None:
    """Rewrite a written series' files without FrameOfReferenceUID, as older exports and ITK-written series come."""
    for ds in datasets:
        del ds.FrameOfReferenceUID
        ds.save_as(ds.filename, enforce_file_format=True)
