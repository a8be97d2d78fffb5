"""A CGM trained here, by the project's CGM loss, does at inference what it was trained to do.

Tiny 2D images, half of them empty. The failure the CGM exists for (UNet 3+: false positives on
organ-free slices) is made certain: the segmenter is trained on the images with an object only, so it
marks any bright pixel, and the empty images carry bright specks; the CGM is trained on all images.
At inference the filter must remove the specks' foreground and keep the objects (Dice unchanged).

The loss (a 2-class softmax) is blind to a shift common to both CGM logits, so the trained model with its
CGM biases shifted by ±8 is *the same* trained model to the loss (checked) — and must be the same to
inference. The old filter read ``sigmoid(present logit)`` alone: +8 kept every speck, −8 cut every object.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_ext.losses import CGMLoss
from monai_ext.networks import build_network
from tasks.inference.batch import run_batch
from tests.infer.helpers import plan_for, save_nifti, settings

SIZE = 16


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (even: a 7×7 object, odd: empty but for 2-3 bright 3×3 specks) and their labels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.05, (count, SIZE, SIZE)).astype(np.float32)
    labels = np.zeros((count, SIZE, SIZE), np.int64)
    for i in range(count):
        if i % 2 == 0:
            y, x = rng.integers(1, SIZE - 8, 2)
            images[i, y:y + 7, x:x + 7] += 1.0
            labels[i, y:y + 7, x:x + 7] = 1
        else:
            for _ in range(rng.integers(2, 4)):
                y, x = rng.integers(0, SIZE - 3, 2)
                images[i, y:y + 3, x:x + 3] += 1.0
    return images, labels


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny U-Net + CGM, a few seconds of Adam: segmentation on the object images, the CGM on all.

    One thread: the same result on any machine (reduction order), and faster than two on a busy CPU.
    """
    torch.manual_seed(0)
    images, labels = make_images(24, seed=1)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)[:, None]
    model = build_network("unet", 2, 1, 2, features=(4, 8, 16), norm=None, cgm=True, cgm_dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    objects = torch.arange(len(x)) % 2 == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(40):
            out = model(x)
            loss = F.cross_entropy(out.logits[objects], y[objects, 0]) + CGMLoss()(out.class_logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x, y


def _shifted(model: torch.nn.Module, shift: float) -> torch.nn.Module:
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.cgm_head.conv.bias += shift
    return shifted


def _dice(mask: np.ndarray, label: np.ndarray) -> float:
    return 2.0 * float((mask * label).sum()) / float(mask.sum() + label.sum())


@pytest.mark.parametrize("shift", [0.0, 8.0, -8.0])
def test_trained_cgm_filters_empty_images_and_keeps_objects(tmp_path: Path, trained: tuple, shift: float) -> None:
    model, x, y = trained
    model = _shifted(model, shift)
    with torch.no_grad():  # the loss cannot tell the shifted model from the trained one
        loss = CGMLoss()(model.forward_with_class(x)[1], y)
        assert loss.item() == pytest.approx(CGMLoss()(trained[0].forward_with_class(x)[1], y).item(), abs=1e-5)
        assert loss.item() < 0.2  # and it did learn
    images, labels = make_images(8, seed=7)
    for i, image in enumerate(images):
        save_nifti(image, tmp_path / "in" / f"img{i}.nii.gz")
    masks = {}
    for cgm_filter in (False, True):
        out = tmp_path / f"out-{cgm_filter}"
        outcomes = run_batch(tmp_path / "in", out, settings(cgm_filter=cgm_filter), model, plan_for(2, [SIZE, SIZE]))
        assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]
        masks[cgm_filter] = [np.asanyarray(nib.load(str(out / f"img{i}.nii.gz")).dataobj) for i in range(len(images))]
    empty = range(1, len(images), 2)
    assert sum(int(masks[False][i].sum()) for i in empty) > 0, "no false positives: the test would prove nothing"
    for i in empty:
        assert not masks[True][i].any(), f"shift {shift}: empty image {i} kept {int(masks[True][i].sum())} voxels"
    for i in range(0, len(images), 2):
        assert _dice(masks[False][i], labels[i]) > 0.8
        assert _dice(masks[True][i], labels[i]) == _dice(masks[False][i], labels[i]), f"shift {shift}: image {i}"
