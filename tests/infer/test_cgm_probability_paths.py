"""The inference post-filter reads the CGM's logits as the loss trains them, on every path.

Per image, per slice (a 2D model on a volume), per 3D window, and with mirrored TTA: logits (absent 5,
present 3) mean P(present) = 0.12 to the CGM loss (its 2-class softmax) and must be filtered; (−4, −2)
mean 0.88 and must be kept. The old filter read ``sigmoid(present)`` alone and did the opposite in both.
A UNet++ pruned below its last level used to crash on it; now it finishes its encoder alone for the CGM
and filters with the full network's classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.networks import build_network
from tasks.inference.batch import run_batch
from tests.infer.helpers import ThresholdNet, plan_for, save_nifti, settings

#: (absent, present) logits and whether the CGM loss calls that "foreground present"
PAIRS = [((5.0, 3.0), False), ((-4.0, -2.0), True)]


def fixed_cgm_net(spatial_dims: int, pair: tuple[float, float]) -> ThresholdNet:
    """A thresholding segmenter whose real CGM head answers ``pair`` for every window."""
    net = ThresholdNet(spatial_dims, level=0.5, cgm_level=0.8)
    with torch.no_grad():
        net.cgm_head.conv.weight.zero_()
        net.cgm_head.conv.bias.copy_(torch.tensor(pair))
    return net


def loss_probability(pair: tuple[float, float]) -> float:
    """P(present) as the CGM loss trains it (2-class softmax), written out independently of the code."""
    return float(torch.softmax(torch.tensor(pair), 0)[1])


def run(tmp_path: Path, volume: np.ndarray, pair: tuple[float, float], spatial_dims: int,
        patch: list[int], **changes: object) -> tuple[np.ndarray, dict]:
    save_nifti(volume, tmp_path / "in" / "case.nii.gz")
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(**changes),
                           fixed_cgm_net(spatial_dims, pair), plan_for(spatial_dims, patch))
    assert outcome.status == "done", outcome.error
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "case.nii.gz")).dataobj)
    return mask, json.loads((tmp_path / "out" / "case.json").read_text())


def _image() -> np.ndarray:
    image = np.zeros((16, 16), np.float32)
    image[3:9, 4:10] = 1.0
    return image


@pytest.mark.parametrize("mirror_tta", [False, True], ids=["plain", "tta"])
@pytest.mark.parametrize(("pair", "present"), PAIRS)
def test_per_image_filter(tmp_path: Path, pair: tuple[float, float], present: bool, mirror_tta: bool) -> None:
    image = _image()
    mask, report = run(tmp_path, image, pair, 2, [16, 16], mirror_tta=mirror_tta)
    assert report["cgm"]["level"] == "image"
    assert report["cgm"]["probabilities"][0] == pytest.approx(loss_probability(pair), abs=1e-4)
    expected = (image > 0.5).astype(np.uint8) if present else np.zeros_like(image, np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert report["cgm"]["removed_voxels"] == (0 if present else 36)


@pytest.mark.parametrize(("pair", "present"), PAIRS)
def test_per_slice_filter(tmp_path: Path, pair: tuple[float, float], present: bool) -> None:
    volume = np.zeros((16, 16, 3), np.float32)
    volume[2:6, 2:6, 0] = 1.0
    volume[8:12, 8:12, 2] = 1.0
    mask, report = run(tmp_path, volume, pair, 2, [16, 16])
    assert report["cgm"]["level"] == "slice"
    assert report["cgm"]["probabilities"] == pytest.approx([loss_probability(pair)] * 3, abs=1e-4)
    assert int(mask.sum()) == (32 if present else 0)
    assert report["cgm"]["removed_slices"] == ([] if present else [0, 2])


@pytest.mark.parametrize("mirror_tta", [False, True], ids=["plain", "tta"])
@pytest.mark.parametrize(("pair", "present"), PAIRS)
def test_per_window_filter_in_3d(tmp_path: Path, pair: tuple[float, float], present: bool,
                                 mirror_tta: bool) -> None:
    volume = np.zeros((16, 16, 16), np.float32)
    volume[4:8, 4:8, 2:5] = 1.0
    volume[9:11, 9:11, 11:14] = 1.0
    mask, report = run(tmp_path, volume, pair, 3, [16, 16, 8], roi_size=(16, 16, 8), overlap=0.0,
                       mirror_tta=mirror_tta)
    windows = report["cgm"]["windows"]
    assert windows["count"] == 2 and windows["rejected"] == (0 if present else 2)
    assert windows["mean"] == pytest.approx(loss_probability(pair), abs=1e-4)
    assert int(mask.sum()) == (60 if present else 0)
    assert report["cgm"]["removed_voxels"] == (0 if present else 60)


@pytest.mark.parametrize("cgm_filter", [False, True])
def test_pruned_unetpp_with_cgm(tmp_path: Path, cgm_filter: bool) -> None:
    torch.manual_seed(0)
    model = build_network("unetpp", 2, 1, 2, features=(4, 8, 16, 32), deep_supervision=True, cgm=True,
                          prune_level=1).eval()
    save_nifti(np.random.default_rng(0).random((32, 32)).astype(np.float32), tmp_path / "in" / "case.nii.gz")
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(cgm_filter=cgm_filter), model,
                           plan_for(2, [32, 32]))
    assert outcome.status == "done", outcome.error  # before: a RuntimeError from the CGM head
    report = json.loads((tmp_path / "out" / "case.json").read_text())
    if cgm_filter:
        with torch.no_grad():
            _, class_logits = model.for_inference(None).forward_with_class(torch.zeros(1, 1, 32, 32))
        assert len(report["cgm"]["probabilities"]) == 1 and class_logits is not None
