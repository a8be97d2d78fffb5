"""Tiny canonical datasets (real NIfTI files and a ``dataset.json`` as the ingest stage writes them) and
the preprocess stage run as the plain functions the Prefect flow maps, so these tests need no Prefect
server. The dataset is written here rather than through ``tasks.ingest`` so these tests only depend on
the manifest's contract (``files``, ``sha256``, ``shape``, ``spacing``, ``channels``, ``modality``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.common.hashing import sha256_file
from tasks.common.plan import Plan
from tasks.config import Params, validate_params
from tasks.ingest.synthetic import SyntheticSpec, cell_image
from tasks.preprocess.in_process import preprocess_dataset

TINY = SyntheticSpec(n_train=5, n_test=0, size=32, cells=(3, 5), radius=(4.0, 7.0), noise=0.1, seed=3)


def write_case(dataset: Path, case_id: str, image: np.ndarray, instances: np.ndarray) -> None:
    """One canonical 2D case (X×Y×1 NIfTI: image, class label, instance label)."""
    for folder, array in (("imagesTr", image), ("labelsTr", (instances > 0).astype(np.uint8)),
                          ("instancesTr", instances.astype(np.uint16))):
        (dataset / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array[:, :, None], np.eye(4)), str(dataset / folder / f"{case_id}.nii.gz"))


def write_manifest(dataset: Path, modality: str = "unknown") -> dict:
    """``dataset.json`` for the cases on disk, with each file's sha256 (what the weight-map cache keys on)."""
    cases = []
    for path in sorted((dataset / "imagesTr").glob("*.nii.gz")):
        case_id = path.name.removesuffix(".nii.gz")
        files = {role: f"{folder}/{case_id}.nii.gz"
                 for role, folder in (("image", "imagesTr"), ("label", "labelsTr"), ("instances", "instancesTr"))}
        shape = list(nib.load(str(path)).shape)
        cases.append({"case_id": case_id, "shape": shape, "spacing": [1.0, 1.0, 1.0], "channels": 1,
                      "files": files, "sha256": {role: sha256_file(dataset / rel) for role, rel in files.items()}})
    manifest = {"name": "tiny", "modality": modality, "labels": {"background": 0, "cell": 1},
                "instance_labels": True, "num_cases": len(cases), "cases": cases}
    (dataset / "dataset.json").write_text(json.dumps(manifest))
    return manifest


def preprocess(root: Path, params: Params) -> tuple[Plan, list[dict]]:
    """What ``flows/preprocess.py`` does, sequentially: (plan, per-case results)."""
    return preprocess_dataset(root, params)


def make_params(**sections: dict) -> Params:
    base = {"data": {"label_names": {"background": 0, "cell": 1}, "val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"features": [4, 8]}, "train": {"patch_size": [24, 24]}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return validate_params(base)


@pytest.fixture
def tiny_project(tmp_path: Path) -> Callable[..., tuple[Path, Params]]:
    """A project folder with a canonical dataset of 5 tiny 2D cases of touching cells; (root, params)."""
    def build(**sections: dict) -> tuple[Path, Params]:
        params = make_params(**sections)
        dataset = tmp_path / params.data.dataset_dir
        rng = np.random.default_rng(TINY.seed)
        for index in range(TINY.n_train):
            write_case(dataset, f"cells_{index:03d}", *cell_image(rng, TINY))
        write_manifest(dataset)
        return tmp_path, params
    return build
