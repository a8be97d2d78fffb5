"""Evaluation scores objects when the test cases have instance maps, and changes nothing when they do not.

The network is replaced by a fixed prediction (the class map itself), so the expected values are by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

import tasks.evaluation.evaluate as evaluate

PLAN = SimpleNamespace(spatial_dims=2, normalization=None, num_classes=2, border_core=False)


def _dataset(root: Path, with_instances: bool) -> list[dict]:
    """One 2D case (stored X×Y×1): two touching 2×2 cells of class 1, instance ids 1 and 2."""
    instances = np.zeros((6, 6, 1), dtype=np.int16)
    instances[0:2, 0:2, 0], instances[2:4, 0:2, 0] = 1, 2
    arrays = {"image": instances.astype(np.float32), "label": (instances > 0).astype(np.uint8)}
    if with_instances:
        arrays["instances"] = instances
    files = {}
    for kind, array in arrays.items():
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / f"{kind}.nii.gz"))
        files[kind] = f"{kind}.nii.gz"
    case = {"case_id": "c1", "files": files, "spacing": [1.0, 1.0, 1.0]}
    (root / "dataset.json").write_text(json.dumps({"cases": [case]}))
    return [case]


@pytest.fixture
def perfect_class_map(monkeypatch):
    """The prediction is the true class map: Dice 1, yet the two touching cells are one connected object."""
    monkeypatch.setattr(evaluate, "normalize", lambda image, _: image)
    monkeypatch.setattr(evaluate, "predict_native",
                        lambda model, plan, image, spacing, overlap, device: ((image[0] > 0).astype(np.uint8), None))


def test_cases_with_instance_maps_get_object_scores(tmp_path, perfect_class_map):
    rows = evaluate.score_cases(None, PLAN, tmp_path, _dataset(tmp_path, True), 0.25, "cpu")
    row = rows[0]
    assert row["dice"] == 1.0
    # one component of 8 voxels over two true cells of 4: IoU 0.5 each → F1@0.5 (tie, one matched) = 2/(2+1);
    # PQ needs IoU > 0.5 → 0; AJI = (4 + 4)/(8 + 8) = 0.5; the component holds both cells whole → 1 merge
    assert row["object_f1"] == pytest.approx(2 / 3) and row["pq"] == 0 and row["aji"] == pytest.approx(0.5)
    assert (row["splits"], row["merges"]) == (0, 1)
    summary = evaluate.summarize_objects(rows)
    assert summary["test_object_f1"] == pytest.approx(2 / 3) and summary["test_merges"] == 1
    assert list(summary["test_object_f1_curve"]) == [f"{0.5 + 0.05 * i:.2f}" for i in range(9)]
    flat = evaluate.object_metrics_for_mlflow(summary)
    assert flat["test_pq"] == 0 and flat["test_object_f1_0.50"] == pytest.approx(2 / 3)


def test_cases_without_instance_maps_get_no_object_columns(tmp_path, perfect_class_map):
    rows = evaluate.score_cases(None, PLAN, tmp_path, _dataset(tmp_path, False), 0.25, "cpu")
    assert "object_f1" not in rows[0] and rows[0]["dice"] == 1.0
    assert evaluate.summarize_objects(rows) == {} and evaluate.object_metrics_for_mlflow({}) == {}
