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


@pytest.mark.parametrize(("extent", "window", "offset"),
                         [((60, 80), (20, 30), (17, 41)), ((30, 26, 22), (9, 8, 7), (4, 18, 0))])
def test_window_of_the_whole_image_field_is_its_crop(extent, window, offset) -> None:
    """The paper's grid laid over the whole image, evaluated on a patch only, is the whole field cropped."""
    coarse = np.random.default_rng(1).normal(0.0, 10.0, size=(len(extent), *([3] * len(extent))))
    full = coarse_to_dense_displacement(coarse, extent)
    # the separable spline is the cubic zoom the field always was (corner aligned, mirror boundary)
    zoom = [ndimage.zoom(c, [e / 3 for e in extent], order=3, mode="mirror", grid_mode=False) for c in coarse]
    np.testing.assert_allclose(full, np.stack(zoom), atol=1e-9)
    part = coarse_to_dense_displacement(coarse, window, extent=extent, offset=offset)
    crop = (slice(None), *(slice(o, o + w) for o, w in zip(offset, window, strict=True)))
    np.testing.assert_allclose(part, full[crop], atol=1e-9)


def test_grid_spans_the_stored_extent_and_the_key_never_leaves() -> None:
    """A patch cut from a larger image: the field is the image's, at a window the transform draws."""
    from monai_ext.transforms.elastic import StoreSpatialShaped, warp

    rng = np.random.default_rng(2)
    whole = {"image": rng.random((1, 96, 80)).astype(np.float32), "label": rng.random((1, 96, 80)) > 0.5}
    sample = StoreSpatialShaped("image", "extent")(whole)
    assert sample["extent"] == (96, 80)
    sample = {**sample, "image": whole["image"][:, 30:54, 7:27], "label": whole["label"][:, 30:54, 7:27]}
    t = RandUNetElasticd(("image", "label"), prob=1.0, mode=("bilinear", "nearest"), extent_key="extent")
    out = t.set_random_state(4)(sample)
    assert "extent" not in out and "extent" in sample  # removed from the output only
    assert t._offset is not None
    assert all(0 <= o <= e - s for o, e, s in zip(t._offset, (96, 80), (24, 20), strict=True))
    field = coarse_to_dense_displacement(t._coarse, (24, 20), extent=(96, 80), offset=t._offset)
    np.testing.assert_allclose(out["image"], warp(sample["image"], field, order=1), atol=1e-6)
    skipped = RandUNetElasticd(("image",), prob=0.0, extent_key="extent")(sample)
    assert "extent" not in skipped and skipped["image"] is sample["image"]


def test_anisotropic_spacing_scales_node_displacements_to_the_finest_axis() -> None:
    """sigma_px is in voxels of the finest axis: a 5x coarser slice axis moves 5x fewer slices."""
    iso = RandUNetElasticd(("image",), prob=1.0, sigma_px=10.0).set_random_state(0)
    aniso = RandUNetElasticd(("image",), prob=1.0, sigma_px=10.0, spacing=(5.0, 1.0, 1.0)).set_random_state(0)
    iso.randomize((8, 32, 32))
    aniso.randomize((8, 32, 32))
    np.testing.assert_allclose(aniso._coarse[0], iso._coarse[0] / 5.0)
    np.testing.assert_allclose(aniso._coarse[1:], iso._coarse[1:])
    with pytest.raises(ValueError, match="spacing"):
        RandUNetElasticd(("image",), spacing=(0.0, 1.0))
