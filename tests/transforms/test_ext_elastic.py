"""Paper elastic deformation: one field for image, label and weight map (and MONAI's equivalent usage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Rand2DElasticd
from scipy import ndimage

from monai_ext.transforms import RandUNetElasticd, coarse_to_dense_displacement, unet_weight_map

KEYS = ("image", "label", "weight")
MODES = ("bilinear", "nearest", "bilinear")


def _cells(size: int = 80, radius: int = 9, pitch: int = 20) -> np.ndarray:
    """Grid of disc-shaped instances separated by thin gaps."""
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.ogrid[:size, :size]
    k = 1
    for cy in range(pitch // 2, size, pitch):
        for cx in range(pitch // 2, size, pitch):
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
            k += 1
    return lab


def _sample(lab: np.ndarray) -> dict[str, np.ndarray]:
    weight = unet_weight_map(lab, class_weights=None)  # w_c = 1: object interiors are exactly 1
    return {"image": (lab > 0).astype(np.float32)[None], "label": lab[None], "weight": weight[None]}


def _check_alignment(out: dict[str, np.ndarray], lab: np.ndarray) -> None:
    label, image, weight = (np.asarray(out[k])[0] for k in ("label", "image", "weight"))
    assert set(np.unique(label)) <= set(np.unique(lab))  # nearest keeps the label set
    assert (label != lab).mean() > 0.05  # it did deform
    # marker image (label cast to float) deformed bilinearly agrees with the nearest-deformed label
    assert (np.round(image) == (label > 0)).mean() > 0.97
    interior = ndimage.binary_erosion(label > 0, iterations=3)
    assert np.abs(image[interior] - 1).max() < 1e-4
    # the weight map moved with the label: interiors keep w = 1, the gap ridges follow the new gaps
    assert np.abs(weight[interior] - 1).max() < 1e-3
    recomputed = unet_weight_map(label, class_weights=None)
    assert np.corrcoef(recomputed.ravel(), weight.ravel())[0, 1] > 0.8


def test_paper_elastic_keeps_image_label_weight_aligned() -> None:
    lab = _cells()
    t = RandUNetElasticd(KEYS, prob=1.0, grid=3, sigma_px=10.0, mode=MODES).set_random_state(3)
    out = t(_sample(lab))
    assert out["label"].dtype == lab.dtype and out["weight"].dtype == np.float32
    _check_alignment(out, lab)


def test_monai_rand2delasticd_jointly_keeps_alignment() -> None:
    """The recommended MONAI usage: one Rand2DElasticd over all keys, nearest for the label."""
    lab = _cells()
    t = Rand2DElasticd(
        keys=KEYS,
        spacing=(20, 20),
        magnitude_range=(2.0, 3.0),
        prob=1.0,
        mode=MODES,
        padding_mode="reflection",
    )
    t.set_random_state(5)
    sample = {k: torch.as_tensor(v) for k, v in _sample(lab).items()}
    out = {k: v.numpy() for k, v in t(sample).items()}
    _check_alignment(out, lab)


def test_reproducible_with_random_state_and_prob_zero_is_identity() -> None:
    sample = _sample(_cells(40, 6, 13))
    a = RandUNetElasticd(KEYS, prob=1.0, mode=MODES).set_random_state(7)(sample)
    b = RandUNetElasticd(KEYS, prob=1.0, mode=MODES).set_random_state(7)(sample)
    c = RandUNetElasticd(KEYS, prob=1.0, mode=MODES).set_random_state(8)(sample)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"])
    same = RandUNetElasticd(KEYS, prob=0.0, mode=MODES)(sample)
    for k in KEYS:
        assert same[k] is sample[k]


def test_3d_tensor_input_and_label_set() -> None:
    lab = np.zeros((14, 16, 18), np.int32)
    lab[3:8, 3:9, 3:10] = 1
    lab[8:12, 9:14, 9:16] = 2
    sample = {"image": torch.as_tensor(lab[None].astype(np.float32)), "label": torch.as_tensor(lab[None])}
    t = RandUNetElasticd(("image", "label"), prob=1.0, sigma_px=3.0, mode=("trilinear", "nearest"))
    out = t.set_random_state(0)(sample)
    assert isinstance(out["label"], torch.Tensor) and out["label"].shape == (1, 14, 16, 18)
    assert set(out["label"].unique().tolist()) <= {0, 1, 2}
    assert (out["label"].numpy() != lab).any()
    assert (torch.round(out["image"]) == out["label"]).float().mean() > 0.9


def test_coarse_field_interpolates_nodes_at_corners() -> None:
    coarse = np.random.default_rng(0).normal(size=(2, 3, 3))
    dense = coarse_to_dense_displacement(coarse, (21, 31))
    assert dense.shape == (2, 21, 31)
    np.testing.assert_allclose(dense[:, ::10, ::15], coarse, atol=1e-6)
    with pytest.raises(ValueError):
        RandUNetElasticd(KEYS, mode=("bilinear", "nearest", "sideways"))
