"""U-Net weight map: fast truncated implementation vs the straightforward per-object EDT reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.transforms import (
    UNetWeightMapd,
    border_cutoff_distance,
    class_weight_map,
    split_objects,
    unet_weight_map,
)
from monai_ext.transforms._reference import naive_unet_weight_map

W0 = 10.0


def _blobs(shape: tuple[int, ...], n: int, radius: float, seed: int, gap: bool = True) -> np.ndarray:
    """Random Voronoi cells clipped to ``radius``: many touching objects, optional 1-voxel gaps."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    seeds = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, size=(n, len(shape)))
    seeds[tuple(pts.T)] = np.arange(1, n + 1)
    dist, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[tuple(idx)]
    lab[dist > radius] = 0
    if gap:
        edge = np.zeros(shape, bool)
        for ax in range(len(shape)):
            shifted = np.roll(lab, 1, ax)
            edge |= (shifted != lab) & (shifted > 0)
        lab[edge] = 0
    return lab


def _assert_close(labels: np.ndarray, **kw: object) -> None:
    fast = unet_weight_map(labels, w0=W0, **kw)
    ref = naive_unet_weight_map(labels, w0=W0, **kw)
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    assert np.abs(fast - ref).max() <= 1e-3 * W0


@pytest.mark.parametrize("gap", [True, False], ids=["gaps", "touching"])
def test_2d_matches_reference(gap: bool) -> None:
    _assert_close(_blobs((64, 64), 25, 6.0, seed=0, gap=gap), sigma=5.0)


def test_2d_isolated_objects_match_reference() -> None:
    lab = np.zeros((60, 60), np.int32)
    lab[5:12, 5:12] = 1
    lab[40:50, 8:14] = 2
    lab[20:26, 45:55] = 3
    _assert_close(lab, sigma=5.0)


def test_3d_matches_reference_touching() -> None:
    _assert_close(_blobs((24, 28, 20), 20, 4.0, seed=1, gap=False), sigma=3.0)


def test_3d_anisotropic_spacing_matches_reference() -> None:
    lab = _blobs((12, 30, 30), 15, 4.0, seed=2)
    _assert_close(lab, sigma=4.0, spacing=(2.5, 0.8, 0.8))
    # spacing really changes the map
    assert not np.allclose(unet_weight_map(lab, spacing=(2.5, 0.8, 0.8)), unet_weight_map(lab))


def test_exact_mode_equals_reference_tightly() -> None:
    lab = _blobs((40, 40), 12, 5.0, seed=3)
    fast = unet_weight_map(lab, w0=W0, sigma=5.0, tol=0.0)
    np.testing.assert_allclose(fast, naive_unet_weight_map(lab, w0=W0, sigma=5.0), atol=1e-5)


def test_semantic_labels_split_into_components() -> None:
    lab = np.zeros((40, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 17:27] = 1  # same class, separate component, 2-px gap
    lab[20:30, 5:15] = 2
    objects, n = split_objects(lab, labels_are_instances=False)
    assert n == 3 and objects.max() == 3
    _assert_close(lab, labels_are_instances=False, sigma=5.0)
    gap_value = unet_weight_map(lab, w0=W0, sigma=5.0, labels_are_instances=False, class_weights=None)[10, 15]
    assert gap_value > 1 + 0.5 * W0  # the gap between the two class-1 components is emphasised


def test_single_object_has_no_border_term() -> None:
    lab = np.zeros((30, 30), np.int32)
    lab[10:20, 10:20] = 7
    w = unet_weight_map(lab, class_weights="balanced")
    np.testing.assert_array_equal(w, class_weight_map(lab, "balanced"))
    _assert_close(lab)


@pytest.mark.parametrize("shape", [(16, 16), (6, 8, 10)])
def test_empty_label_is_class_weights_only(shape: tuple[int, ...]) -> None:
    lab = np.zeros(shape, np.int32)
    np.testing.assert_array_equal(unet_weight_map(lab), np.ones(shape, np.float32))
    np.testing.assert_array_equal(
        unet_weight_map(lab, class_weights={0: 0.5}), np.full(shape, 0.5, np.float32)
    )


def test_paper_formula_on_known_gap_and_background_only() -> None:
    lab = np.zeros((20, 40), np.int32)
    lab[5:15, 5:19] = 1
    lab[5:15, 20:34] = 2  # one-pixel gap at column 19
    sigma = 5.0
    w = unet_weight_map(lab, w0=W0, sigma=sigma, class_weights=None)
    assert w[10, 19] == pytest.approx(1 + W0 * math.exp(-(2.0**2) / (2 * sigma**2)), rel=1e-5)
    np.testing.assert_array_equal(w[lab > 0], 1.0)  # border term only on background
    assert w[0, 0] < w[4, 19] < w[10, 19]


def test_balanced_class_weights_have_unit_mean_and_inverse_frequency() -> None:
    lab = np.zeros((10, 10), np.int32)
    lab[:2, :] = 3  # 20 % foreground
    wc = class_weight_map(lab, "balanced")
    assert wc.mean() == pytest.approx(1.0)
    assert wc[0, 0] / wc[5, 5] == pytest.approx(80 / 20)
    with pytest.raises(ValueError, match="no entry"):
        class_weight_map(lab, {0: 1.0})
    with pytest.raises(ValueError):
        class_weight_map(lab, "inverse")  # type: ignore[arg-type]


def test_cutoff_distance_bounds_border_term() -> None:
    d = border_cutoff_distance(W0, 5.0, 1e-4 * W0)
    assert W0 * math.exp(-(d**2) / (2 * 25.0)) == pytest.approx(1e-4 * W0)


def test_dict_transform_types_shapes_and_meta_spacing() -> None:
    lab = _blobs((20, 24), 6, 4.0, seed=4)
    expected = unet_weight_map(lab, sigma=3.0, spacing=(2.0, 1.0))
    for value in (lab[None], torch.as_tensor(lab[None])):
        out = UNetWeightMapd("label", sigma=3.0, spacing=(2.0, 1.0))({"label": value})["weight"]
        assert type(out) is type(value) and tuple(out.shape) == (1, 20, 24)
        np.testing.assert_allclose(np.asarray(out)[0], expected)
    meta = MetaTensor(torch.as_tensor(lab[None]), affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))
    out = UNetWeightMapd("label", weight_key="w", sigma=3.0, spacing="meta")({"label": meta})["w"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy()[0], expected)
    with pytest.raises(ValueError, match="one channel"):
        UNetWeightMapd("label")({"label": np.zeros((2, 5, 5))})
