"""A small deterministic dataset of touching "cells", so the demo and the tests need no download.

Each image holds blob-shaped cells (randomly stretched and rotated ellipses) packed so that many
of them touch — exactly the situation the U-Net paper's border weights are for — with a smooth
background gradient, cell texture and Gaussian noise. It is written as a proper nnU-Net v2 inbox:
``dataset.json`` (the classes, the channel, ``numTraining``), ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/`` with *class* labels (0 background, 1 cell), ``instancesTr/`` with the instance maps
(0 background, 1..N cells: what the U-Net weight maps separate) and unlabelled ``imagesTs/``, so the
default ``params.yaml`` ingests it as it would any nnU-Net dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.common.atomic import atomic_path, write_text

#: The demo's dataset.json ``name``: a folder holding another dataset.json is not the demo's to overwrite.
DEMO_NAME = "unetflow-demo-cells"
LABELS = {"background": 0, "cell": 1}
#: Not "CT": fluorescence intensities have no absolute scale, so each image is z-scored on its own.
CHANNEL = "fluorescence"
FOLDERS = ("imagesTr", "labelsTr", "instancesTr", "imagesTs")


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
    """Write the nnU-Net v2 inbox (module docstring): the training pool and ``imagesTs`` (for inference).

    Deterministic for a given ``spec``: the same bytes every time (nibabel's gzip has no timestamp,
    ``dataset.json`` has sorted keys), so the DVC hash of the demo inbox does not change when it is
    written again. Demo files of an earlier, larger run are removed (``numTraining`` must match);
    a folder holding another dataset's ``dataset.json`` is refused, not overwritten.
    """
    _refuse_foreign_dataset(root)
    rng = np.random.default_rng(spec.seed)
    counts = {"train": 0, "test": 0}
    written: set[Path] = set()
    for split, n, with_labels in (("Tr", spec.n_train, True), ("Ts", spec.n_test, False)):
        for index in range(n):
            image, labels = cell_image(rng, spec)
            case = f"cells_{split.lower()}_{index:03d}"
            targets = [(image, root / f"images{split}" / f"{case}_0000.nii.gz")]
            if with_labels:
                targets += [((labels > 0).astype(np.uint8), root / "labelsTr" / f"{case}.nii.gz"),
                            (labels, root / "instancesTr" / f"{case}.nii.gz")]
            for array, path in targets:
                _write_nifti(array, path)
                written.add(path)
            counts["train" if with_labels else "test"] += 1
    for folder in FOLDERS:
        for stale in sorted((root / folder).glob("cells_*.nii.gz")):
            if stale not in written:
                stale.unlink()
    description = {"name": DEMO_NAME, "description": "synthetic touching cells (unetflow demo)",
                   "channel_names": {"0": CHANNEL}, "labels": LABELS, "numTraining": counts["train"],
                   "file_ending": ".nii.gz"}
    write_text(root / "dataset.json", json.dumps(description, indent=2, sort_keys=True) + "\n")
    return counts


def _refuse_foreign_dataset(root: Path) -> None:
    """Overwriting a real dataset's ``dataset.json`` would change what its labels mean: refuse instead."""
    path = root / "dataset.json"
    if not path.exists():
        return
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("name")
    except (ValueError, AttributeError, UnicodeDecodeError):
        name = None
    if name != DEMO_NAME:
        raise FileExistsError(f"{path} describes another dataset ({name!r}); the demo writes its own inbox: "
                              f"give it an empty folder (data.raw_dir)")
