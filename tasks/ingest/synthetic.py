"""A small deterministic dataset of touching "cells", so the demo and the tests need no download.

Each image holds blob-shaped cells (randomly stretched and rotated ellipses) packed so that many
of them touch — exactly the situation the U-Net paper's border weights are for — with a smooth
background gradient, cell texture and Gaussian noise. Labels are *instance* labels (0 background,
1..N cells); the pipeline turns them into classes and weight maps itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.common.atomic import atomic_path


@dataclass(frozen=True)
class SyntheticSpec:
    n_train: int = 24
    n_test: int = 4
    size: int = 96
    cells: tuple[int, int] = (8, 16)
    radius: tuple[float, float] = (6.0, 11.0)
    noise: float = 0.25
    seed: int = 0


def cell_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """One 2D image (float32) and its instance labels (uint16)."""
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.zeros((size, size), dtype=np.uint16)
    image = np.zeros((size, size), dtype=np.float32)
    n_cells = int(rng.integers(spec.cells[0], spec.cells[1] + 1))
    placed = 0
    for _ in range(n_cells * 20):
        if placed == n_cells:
            break
        cy, cx = rng.uniform(4, size - 4, size=2)
        a, b = rng.uniform(*spec.radius, size=2)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        overlap = (labels[inside] > 0).mean() if inside.any() else 1.0
        # Cells may touch and overlap a little (new cells are painted under the old ones), never hide.
        if overlap > 0.3:
            continue
        free = inside & (labels == 0)
        placed += 1
        labels[free] = placed
        brightness = rng.uniform(0.7, 1.0)
        image[free] = brightness * (1.0 - 0.35 * ((u[free] / a) ** 2 + (v[free] / b) ** 2))
    gradient = 0.15 * (xx / size) + 0.1 * (yy / size)
    image = image + gradient + rng.normal(0.0, spec.noise, size=image.shape).astype(np.float32)
    return image.astype(np.float32), labels


def _write_nifti(array: np.ndarray, path: Path) -> None:
    # 2D images are stored as X×Y×1 volumes with a 1 mm grid, the form the ingest stage expects.
    image = nib.Nifti1Image(array[:, :, None], affine=np.eye(4))
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def write_synthetic_dataset(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write ``imagesTr``/``labelsTr`` (training pool) and ``imagesTs`` (unlabelled, for inference).

    Deterministic for a given ``spec``: the same bytes every time (nibabel's gzip has no timestamp),
    so the DVC hash of the demo inbox does not change when it is written again.
    """
    rng = np.random.default_rng(spec.seed)
    counts = {"train": 0, "test": 0}
    for split, n, with_labels in (("Tr", spec.n_train, True), ("Ts", spec.n_test, False)):
        for index in range(n):
            image, labels = cell_image(rng, spec)
            case = f"cells_{split.lower()}_{index:03d}"
            _write_nifti(image, root / f"images{split}" / f"{case}.nii.gz")
            if with_labels:
                _write_nifti(labels, root / "labelsTr" / f"{case}.nii.gz")
            counts["train" if with_labels else "test"] += 1
    return counts
