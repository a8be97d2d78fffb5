"""Instance maps: touching objects split by the watershed, ids unique across classes, the map on the input's grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from tasks.inference.batch import run_batch
from tasks.inference.instances import instances_from_labels
from tests.infer.helpers import ThresholdNet, oblique_affine, plan_for, save_nifti, settings


def balls(shape: tuple[int, ...], centres, radii, spacing=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """A binary map of (possibly touching) discs/balls in physical units, and each one's own mask."""
    spacing = spacing or (1.0,) * len(shape)
    grid = [g * s for g, s in zip(np.indices(shape).astype(float), spacing, strict=True)]
    parts = [sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r ** 2
             for centre, r in zip(centres, radii, strict=True)]
    return np.logical_or.reduce(parts).astype(np.uint8), parts


def assert_two_objects_split(labels: np.ndarray, parts: list[np.ndarray], spacing=None) -> None:
    assert ndi.label(labels, structure=np.ones((3,) * labels.ndim))[1] == 1  # the binary mask joins them

    joined = instances_from_labels(labels, "components", spacing=spacing)
    assert list(joined.classes) == [0, 1] and set(np.unique(joined.ids)) == {0, 1}

    split = instances_from_labels(labels, "watershed", spacing=spacing)
    assert list(split.classes) == [0, 1, 1] and split.ids.dtype == np.int32
    assert (split.ids[labels == 0] == 0).all() and (split.ids[labels > 0] > 0).all()
    mains = set()
    for part in parts:  # each object is (almost all) one id, of about its own size
        ids, counts = np.unique(split.ids[part], return_counts=True)
        mains.add(int(ids[counts.argmax()]))
        assert counts.max() >= 0.95 * part.sum()
        assert abs((split.ids == ids[counts.argmax()]).sum() - part.sum()) <= 0.05 * part.sum()
    assert mains == {1, 2}


def test_touching_discs_2d():
    labels, parts = balls((60, 60), [(25, 15), (25, 33)], [10, 10])
    assert_two_objects_split(labels, parts)


def test_touching_unequal_discs_2d():
    labels, parts = balls((60, 60), [(25, 15), (25, 35)], [12, 9])
    assert_two_objects_split(labels, parts)


def test_touching_balls_3d_anisotropic():
    spacing = (1.0, 1.0, 2.5)
    labels, parts = balls((40, 48, 20), [(20, 14.5, 25), (20, 31.5, 25)], [9, 9], spacing)
    assert_two_objects_split(labels, parts, spacing)


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_ids_unique_across_classes(method):
    labels = np.zeros((50, 50), np.uint8)
    blob, _ = balls((50, 50), [(12, 12), (12, 38), (38, 25)], [6, 6, 8])
    labels[blob > 0] = 1
    labels[30:, :] = np.where(blob[30:, :] > 0, 2, 0)  # the lower ball is class 2
    labels[0:4, 0:4] = 3
    labels[46:, 46:] = 3
    found = instances_from_labels(labels, method)
    assert list(found.classes) == [0, 1, 1, 2, 3, 3]
    for i in range(1, len(found.classes)):
        assert set(np.unique(labels[found.ids == i])) == {found.classes[i]}  # one class per id
    assert (found.ids[labels == 0] == 0).all()
    assert set(np.unique(found.ids)) == set(range(len(found.classes)))


def world_balls(shape, affine, centres, radius) -> np.ndarray:
    """Balls (mm) on an oblique grid: ``affine`` maps voxel indices to the world."""
    index = np.indices(shape).reshape(3, -1).T
    world = index @ affine[:3, :3].T + affine[:3, 3]
    inside = np.zeros(len(world), bool)
    for centre in centres:
        inside |= ((world - centre) ** 2).sum(1) <= radius ** 2
    return inside.reshape(shape)


@pytest.mark.parametrize("method,count", [("components", 1), ("watershed", 2)])
def test_segment_case_writes_instances_on_the_input_grid(tmp_path, method, count):
    shape = (44, 26, 12)
    affine = oblique_affine()
    centre = affine[:3, :3] @ (np.array(shape) / 2 - 0.5) + affine[:3, 3]
    axis = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    inside = world_balls(shape, affine, [centre - 6.8 * axis, centre + 6.8 * axis], 7.0)
    source = save_nifti((inside * 100 + 5).astype(np.int16), tmp_path / "in" / "case.nii.gz", affine)
    plan = plan_for(3, list(nib.as_closest_canonical(nib.load(str(source))).shape))
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(instances=method), ThresholdNet(3, 50.0), plan)
    assert outcome.status == "done", outcome.error

    written = nib.load(str(tmp_path / "out" / "case_instances.nii.gz"))
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "case.nii.gz")).dataobj)
    ids = np.asanyarray(written.dataobj)
    assert written.shape == shape and np.allclose(written.affine, affine, atol=1e-6)
    assert np.issubdtype(written.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(ids > 0, mask > 0)
    np.testing.assert_array_equal(mask > 0, inside)

    report = json.loads((tmp_path / "out" / "case.json").read_text())
    entry = report["instances"]
    assert report["outputs"]["instances"].endswith("case_instances.nii.gz")
    assert entry["method"] == method and entry["count"] == count == len(np.unique(ids)) - 1
    assert entry["per_class"] == {"lesion": count} and entry["objects_truncated"] is False
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    for obj in entry["objects"]:
        assert obj["class"] == "lesion" and obj["voxels"] == int((ids == obj["id"]).sum())
        assert obj["volume_ml"] == pytest.approx(obj["voxels"] * voxel_ml, rel=1e-5)
    assert sum(o["voxels"] for o in entry["objects"]) == int(inside.sum())


def test_2d_image_reports_areas(tmp_path):
    labels, _ = balls((40, 60), [(10, 4.4), (10, 11.0)], [3.4, 3.4], (0.5, 0.25))  # mm
    affine = np.diag([0.5, 0.25, 1.0, 1.0])
    save_nifti((labels * 100 + 5).astype(np.int16), tmp_path / "in" / "slide.nii.gz", affine)
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(instances="watershed"),
                           ThresholdNet(2, 50.0), plan_for(2, [40, 60]))
    assert outcome.status == "done", outcome.error
    written = nib.load(str(tmp_path / "out" / "slide_instances.nii.gz"))
    assert written.shape == (40, 60) and np.allclose(written.affine, affine)
    entry = json.loads((tmp_path / "out" / "slide.json").read_text())["instances"]
    assert entry["count"] == 2
    assert [o["area_mm2"] for o in entry["objects"]] == [pytest.approx(o["voxels"] * 0.125) for o in entry["objects"]]


def test_default_none_writes_nothing_more_and_keeps_the_key(tmp_path):
    save_nifti(np.full((8, 8, 4), 100, np.int16), tmp_path / "in" / "a.nii.gz")
    plan = plan_for(3, [8, 8, 4])
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(instances="none"), ThresholdNet(3, 50.0), plan)
    report = json.loads((tmp_path / "out" / "a.json").read_text())
    assert outcome.status == "done" and "instances" not in report and "instances" not in report["outputs"]
    assert not (tmp_path / "out" / "a_instances.nii.gz").exists()
    (again,) = run_batch(tmp_path / "in", tmp_path / "out", settings(), ThresholdNet(3, 50.0), plan)
    assert again.status == "skipped"  # the default is the key from before the option
    (changed,) = run_batch(tmp_path / "in", tmp_path / "out", settings(instances="components"),
                           ThresholdNet(3, 50.0), plan)
    assert changed.status == "done" and (tmp_path / "out" / "a_instances.nii.gz").exists()


# ------------------------------------------------------------------------------- border-core networks' rims
def rim_probability(parts: list[np.ndarray], thickness: int = 1) -> np.ndarray:
    """What a perfect border-core network says: 1 on each object's rim (the training target's), 0 inside."""
    from monai_ext.transforms import object_rims

    ids = np.zeros(parts[0].shape, np.int32)
    for k, part in enumerate(parts, start=1):
        ids[part & (ids == 0)] = k
    return object_rims(ids, thickness).astype(np.float32)


def test_rims_split_touching_objects_the_distance_map_cannot():
    # two squares side by side: one rectangle, no neck, so the distance map has one core and no split
    labels = np.zeros((30, 40), np.uint8)
    labels[5:25, 5:35] = 1
    left, right = np.zeros_like(labels, bool), np.zeros_like(labels, bool)
    left[5:25, 5:20], right[5:25, 20:35] = True, True
    assert instances_from_labels(labels, "watershed").ids.max() == 1
    split = instances_from_labels(labels, "watershed", border_probability=rim_probability([left, right]))
    assert list(split.classes) == [0, 1, 1]
    assert (split.ids[labels > 0] > 0).all() and (split.ids[labels == 0] == 0).all()
    assert {int(np.unique(split.ids[left])[0]), int(np.unique(split.ids[right])[0])} == {1, 2}
    assert len(np.unique(split.ids[left])) == 1 and len(np.unique(split.ids[right])) == 1  # split on the seam
    # components ignore the rims: they are what the class map alone says
    assert instances_from_labels(labels, "components", border_probability=rim_probability([left, right])).ids.max() == 1


def test_a_speck_of_core_is_no_seed_and_a_speck_of_rim_no_object():
    labels, parts = balls((60, 60), [(25, 15), (25, 33)], [10, 10])
    rims = rim_probability(parts)
    rims[12, 15] = 1.0  # a rim voxel inside the first disc ...
    rims[10:15, 14:17] = np.where(rims[10:15, 14:17] > 0.5, 1.0, 0.9)  # ... cuts a few core voxels off as a speck
    rims[11, 15] = 0.2
    labels[50:53, 50:53] = 1  # and a 3×3 speck of class that the network saw only as rim
    rims[50:53, 50:53] = 0.9
    found = instances_from_labels(labels, "watershed", border_probability=rims)
    assert found.ids.max() == 2  # two discs: the 1-voxel core seeds nothing, the rim speck is no object
    assert (found.ids[50:53, 50:53] == 0).all()


def test_a_large_object_all_rim_is_still_an_object():
    labels, parts = balls((60, 60), [(20, 20), (45, 45)], [9, 9])
    rims = rim_probability(parts)
    rims[parts[1]] = 0.8  # the network saw no core in the second disc, as large as the first
    found = instances_from_labels(labels, "watershed", border_probability=rims)
    assert found.ids.max() == 2 and len(np.unique(found.ids[parts[1]])) == 1
