"""The pipeline on real MRI: the MNI152 T1 template with its grey/white-matter segmentation.

Not synthetic blobs: a real brain scan (shipped at 2 mm in ``tests/data/mni152``, see its
``make_fixture.py``). Axial slices become 2D cases of a 3-class problem (background, grey matter,
white matter); the full volume is ingested as a 3D case to check geometry against SimpleITK.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from tasks.config import load_params

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "mni152"
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}


def write_dataset_json(raw: Path, cases: int) -> None:
    """The nnU-Net v2 description the inbox needs: the three tissue classes and the one MR channel."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "MR"},
                                                  "file_ending": ".nii.gz", "numTraining": cases}))


def write_axial_slices(raw: Path, slices: range) -> None:
    write_dataset_json(raw, len(slices))
    t1 = nib.load(str(FIXTURE / "t1_2mm.nii.gz"))
    tissue = nib.load(str(FIXTURE / "tissue_2mm.nii.gz"))
    image, label = np.asarray(t1.dataobj), np.asarray(tissue.dataobj)
    for z in slices:
        affine = t1.affine.copy()
        affine[:3, 3] = t1.affine[:3, :3] @ np.array([0, 0, z]) + t1.affine[:3, 3]
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            (raw / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data[:, :, z:z + 1], affine), str(raw / folder / f"mni_z{z:03d}.nii.gz"))


@pytest.mark.slow
def test_grey_and_white_matter_are_learned_from_real_mri(tmp_path: Path, prefect_harness) -> None:
    from flows.ingest import ingest_flow
    from flows.preprocess import preprocess_flow
    from tasks.evaluation.evaluate import evaluate_model
    from tasks.training.trainer import train_model

    root = tmp_path / "mni"
    write_axial_slices(root / "data", range(24, 72, 2))
    settings = {
        "data": {"val_fraction": 0.15, "test_fraction": 0.2},  # label_names: auto, from dataset.json
        "preprocess": {"weight_maps": False},
        "model": {"features": [8, 16, 32, 64]},
        "train": {"epochs": 25, "batch_size": 4, "loss": "ce_dice", "learning_rate": 0.01, "overlay_every": 0,
                  "augment": {"enabled": False}},
        "tracking": {"system_metrics": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    params = load_params(root / "params.yaml")
    assert ingest_flow(root=str(root))["accepted"] == 24
    preprocess_flow(root=str(root))
    plan = json.loads((root / "outputs" / "preprocessed" / "plan.json").read_text())
    assert plan["spatial_dims"] == 2 and plan["num_classes"] == 3
    train_model(params, root)
    result = evaluate_model(params, root)
    per_class = {c: np.mean([row[f"dice_{c}"] for row in result.cases]) for c in (1, 2)}
    # A tiny network, 25 short epochs on CPU: far from state of the art, far above chance.
    assert per_class[1] > 0.6 and per_class[2] > 0.7, per_class


def test_real_volume_ingests_with_the_geometry_simpleitk_reads(tmp_path: Path) -> None:
    from tasks.ingest.batch import ingest_dataset

    raw = tmp_path / "data"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    shutil.copy(FIXTURE / "t1_2mm.nii.gz", raw / "imagesTr" / "mni.nii.gz")
    shutil.copy(FIXTURE / "tissue_2mm.nii.gz", raw / "labelsTr" / "mni.nii.gz")
    write_dataset_json(raw, 1)
    # explicit names and modality: they must (and do) agree with dataset.json
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"label_names": LABELS, "modality": "MR"}}))
    params = load_params(tmp_path / "params.yaml")
    out = tmp_path / params.data.dataset_dir
    manifest, _ = ingest_dataset(raw, out, params.data)
    (case,) = manifest["cases"]
    written = sitk.ReadImage(str(out / case["files"]["image"]))
    source = sitk.ReadImage(str(FIXTURE / "t1_2mm.nii.gz"))
    assert np.allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-4)
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
    label = np.asarray(nib.load(str(out / case["files"]["label"])).dataobj)
    assert sorted(np.unique(label).tolist()) == [0, 1, 2]
