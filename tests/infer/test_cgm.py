"""CGM post-filtering: the classifier's 'absent' removes false-positive foreground and leaves true foreground.

The classifier is constructed deterministically (``ThresholdNet``: a real ``CGMHead`` whose weights are
set so P(present) = sigmoid(20·(max intensity − 0.8))), not trained: the segmenter fires above 0.5, so a
faint 0.6 speck on an empty image is a false positive the classifier rejects, and a 1.0 object is kept.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.networks import build_network
from tasks.inference.batch import run_batch
from tasks.inference.postprocess import keep_largest_component
from tests.infer.helpers import ThresholdNet, plan_for, save_nifti, settings


def test_forward_with_class_on_a_registered_cgm_network():
    net = build_network("unet", 2, 1, 2, features=(4, 8, 16), cgm=True).eval()
    x = torch.randn(3, 1, 20, 28)
    with torch.no_grad():
        logits, class_logits = net.forward_with_class(x)
        assert torch.equal(logits, net(x))  # the same logits eval forward returns
    assert class_logits.shape == (3, 2)
    plain = build_network("unet", 2, 1, 2, features=(4, 8, 16)).eval()
    with torch.no_grad():
        assert plain.forward_with_class(x)[1] is None


def _images(folder):
    true = np.zeros((24, 24), np.float32)
    true[5:12, 6:14] = 1.0  # a real object: the segmenter marks it, the classifier says "present"
    speck = np.zeros((24, 24), np.float32)
    speck[15:18, 3:6] = 0.6  # noise over the segmenter's level, under the classifier's
    save_nifti(true, folder / "with_object.nii.gz")
    save_nifti(speck, folder / "empty_with_speck.nii.gz")
    return true, speck


@pytest.mark.parametrize("cgm_filter", [True, False])
def test_cgm_gate_removes_false_positives_per_image(tmp_path, cgm_filter):
    true, speck = _images(tmp_path / "in")
    model = ThresholdNet(2, level=0.5, cgm_level=0.8)
    outcomes = {o.case_id: o for o in run_batch(tmp_path / "in", tmp_path / "out",
                                                settings(cgm_filter=cgm_filter, cgm_threshold=0.5),
                                                model, plan_for(2, [24, 24]))}
    kept = np.asanyarray(nib.load(str(tmp_path / "out" / "with_object.nii.gz")).dataobj)
    np.testing.assert_array_equal(kept, (true > 0.5).astype(np.uint8))  # true foreground untouched
    fp = np.asanyarray(nib.load(str(tmp_path / "out" / "empty_with_speck.nii.gz")).dataobj)
    report = json.loads((tmp_path / "out" / "empty_with_speck.json").read_text())
    assert report["cgm"]["level"] == "image" and report["cgm"]["probabilities"][0] < 0.05
    assert json.loads((tmp_path / "out" / "with_object.json").read_text())["cgm"]["probabilities"][0] > 0.95
    if cgm_filter:
        assert not fp.any()
        assert report["cgm"]["removed_voxels"] == 9 and report["cgm"]["removed_slices"] == [0]
        assert outcomes["empty_with_speck"].cgm_removed_voxels == 9
        assert outcomes["with_object"].cgm_removed_voxels == 0
    else:
        assert fp.sum() == 9 and report["cgm"]["removed_voxels"] == 0 and report["cgm"]["applied"] is False


def test_cgm_gate_per_slice_for_a_2d_model_on_a_volume(tmp_path):
    volume = np.zeros((16, 16, 4), np.float32)
    volume[2:6, 2:6, 1] = 1.0
    volume[9:11, 9:11, 3] = 0.6
    save_nifti(volume, tmp_path / "in" / "vol.nii.gz")
    run_batch(tmp_path / "in", tmp_path / "out", settings(), ThresholdNet(2, level=0.5, cgm_level=0.8),
              plan_for(2, [16, 16]))
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "vol.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, (volume == 1.0).astype(np.uint8))
    report = json.loads((tmp_path / "out" / "vol.json").read_text())
    assert report["cgm"]["level"] == "slice" and report["cgm"]["removed_slices"] == [3]
    assert report["cgm"]["removed_voxels"] == 4


def test_cgm_gate_per_window_in_3d(tmp_path):
    volume = np.zeros((16, 16, 32), np.float32)
    volume[4:9, 4:9, 2:6] = 1.0  # in the first z-window: the classifier says "present" there
    volume[10:12, 10:12, 26:29] = 0.6  # a false positive alone in the last window
    save_nifti(volume, tmp_path / "in" / "vol.nii.gz")
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(roi_size=(16, 16, 8), overlap=0.0),
                           ThresholdNet(3, level=0.5, cgm_level=0.8), plan_for(3, [16, 16, 8]))
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "vol.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, (volume == 1.0).astype(np.uint8))
    report = json.loads((tmp_path / "out" / "vol.json").read_text())
    assert report["cgm"]["level"] == "window"
    assert report["cgm"]["windows"]["count"] == 4 and report["cgm"]["windows"]["rejected"] == 3
    assert report["cgm"]["removed_voxels"] == 12 == outcome.cgm_removed_voxels


def test_mirroring_tta_and_keep_largest_component(tmp_path):
    volume = np.zeros((16, 16, 8), np.float32)
    volume[2:8, 2:8, 2:6] = 1.0
    volume[12:14, 12:14, 1:3] = 1.0  # a smaller second component
    save_nifti(volume, tmp_path / "in" / "vol.nii.gz")
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out",
                           settings(roi_size=(8, 8, 8), mirror_tta=True, keep_largest_component=True),
                           ThresholdNet(3, level=0.5), plan_for(3, [8, 8, 8]))
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "vol.nii.gz")).dataobj)
    assert mask.sum() == 6 * 6 * 4 and outcome.lcc_removed_voxels == 8


def test_keep_largest_component_per_class():
    labels = np.zeros((10, 10), np.uint8)
    labels[0:3, 0:3] = 1
    labels[6:7, 6:7] = 1
    labels[5:6, 0:2] = 2
    out, report = keep_largest_component(labels)
    assert report.removed_voxels == 1 and out[6, 6] == 0 and (out == 2).sum() == 2
