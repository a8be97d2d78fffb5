"""Resampling as nnU-Net v2 does it: shapes, identity, anisotropy, centre alignment, labels, probabilities.

skimage is not installed here, so centre alignment is checked against what ``skimage.transform.resize``
(``mode="edge"``, ``anti_aliasing=False``) runs internally — ``scipy.ndimage.zoom(grid_mode=True,
mode="nearest")`` clipped to the input range — and analytically on a linear ramp.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tasks.imaging import resampling
from tasks.imaging.resampling import (
    needs_resampling,
    resample_image,
    resample_instances,
    resample_labels,
    resample_probabilities,
    resampled_shape,
    separate_axis,
)

ANISO = (0.7, 0.7, 5.0)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def skimage_resize(x: np.ndarray, shape: tuple[int, ...], order: int, clip_to: np.ndarray | None = None) -> np.ndarray:
    """``skimage.transform.resize(x, shape, order, mode="edge", anti_aliasing=False)`` (its own code path),
    clipped to the range of ``clip_to`` (the whole channel) instead of ``x`` when given."""
    out = ndimage.zoom(x.astype(np.float64), np.divide(shape, x.shape), order=order, mode="nearest", grid_mode=True)
    assert out.shape == shape
    clip_to = x if clip_to is None else clip_to
    return np.clip(out, clip_to.min(), clip_to.max())


# --- shapes and identity -------------------------------------------------------------------------------

def test_resampled_shape_rounds_like_nnunet_and_keeps_at_least_one_voxel():
    assert resampled_shape((100, 100, 20), ANISO, (1.0, 1.0, 2.5)) == (70, 70, 40)
    assert resampled_shape((10, 10), (1.0, 1.0), (0.3, 3.0)) == (33, 3)
    assert resampled_shape((5, 7), (1.0, 1.0), (2.0, 2.0)) == (2, 4)  # 2.5 → 2, 3.5 → 4: Python's round
    assert resampled_shape((2, 2, 2), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)
    with pytest.raises(ValueError):
        resampled_shape((2, 2, 2), (1.0, 1.0), (1.0, 1.0, 1.0))


def test_needs_resampling_only_when_shape_or_spacing_really_changes():
    assert not needs_resampling((64, 64, 20), ANISO, ANISO)
    assert not needs_resampling((64, 64, 20), ANISO, (0.70001, 0.69999, 5.0))  # header rounding
    assert needs_resampling((64, 64, 20), ANISO, (0.7, 0.7, 2.5))
    assert needs_resampling((4, 4), (1.0, 1.0), (1.05, 1.0))  # same shape, spacing really differs


def test_same_spacing_is_a_bit_exact_copy_without_interpolation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("interpolated although nothing changes")

    for name in ("_spline", "_linear_axis", "_nearest_axis", "_resize", "_separable"):
        monkeypatch.setattr(resampling, name, refuse)
    image = rng().normal(size=(2, 9, 7, 5)).astype(np.float32)
    out = resample_image(image, ANISO, ANISO)
    assert out.dtype == np.float32 and out is not image
    assert np.array_equal(out.view(np.uint32), image.view(np.uint32))
    probabilities = softmax(rng().normal(size=(3, 9, 7, 5)))
    assert np.array_equal(resample_probabilities(probabilities, ANISO, ANISO, (9, 7, 5)), probabilities)
    label = rng().integers(0, 4, size=(1, 9, 7, 5)).astype(np.uint8)
    assert np.array_equal(resample_labels(label, ANISO, ANISO)[0], label)
    assert resample_labels(label, ANISO, ANISO)[1] == []


def test_every_function_honours_an_explicit_new_shape():
    # native 12×10×9 at ANISO-like spacing → model grid 8×8×18 → back: rounding would give 11×11×9
    native, native_spacing, model_spacing = (12, 10, 9), (0.7, 0.75, 4.0), (1.0, 1.0, 2.0)
    model = resampled_shape(native, native_spacing, model_spacing)
    assert model == (8, 8, 18) and resampled_shape(model, model_spacing, native_spacing) != native
    image = rng().normal(size=(2, *model)).astype(np.float32)
    label = rng().integers(0, 3, size=(1, *model)).astype(np.uint8)
    assert resample_image(image, model_spacing, native_spacing, native).shape == (2, *native)
    assert resample_labels(label, model_spacing, native_spacing, native)[0].shape == (1, *native)
    assert resample_instances(label, model_spacing, native_spacing, native).shape == (1, *native)
    assert resample_probabilities(softmax(image), model_spacing, native_spacing, native).shape == (2, *native)


# --- anisotropy ----------------------------------------------------------------------------------------

def test_separate_axis_follows_nnunet():
    assert separate_axis(ANISO, (0.7, 0.7, 2.5)) == 2
    assert separate_axis((4.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0  # current spacing decides first
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # else the target spacing
    assert separate_axis((1.0, 1.0, 3.0), (1.0, 1.0, 3.0)) is None  # ratio 3 is not above the threshold
    assert separate_axis((1.0, 1.0, 2.9), (1.0, 1.0, 1.0)) is None
    assert separate_axis((5.0, 5.0, 1.0), (5.0, 5.0, 1.0)) is None  # two thickest axes: ambiguous
    assert separate_axis((0.5, 3.0), (0.5, 1.5)) == 1


def test_thick_axis_is_nearest_neighbour_and_in_plane_untouched():
    image = rng().normal(size=(2, 6, 5, 4)).astype(np.float32)
    out = resample_image(image, ANISO, (0.7, 0.7, 2.5))
    assert out.shape == (2, 6, 5, 8)
    for z in range(8):  # each output slice is exactly one input slice, in order
        assert np.array_equal(out[..., z], image[..., z // 2])


def test_anisotropic_in_plane_spline_never_mixes_thick_slices():
    image = np.broadcast_to(np.arange(4, dtype=np.float32) * 10, (1, 12, 10, 4)).copy()
    image[0, 3:7, 2:5, :] += 1.0  # in-plane structure, the same in every slice
    out = resample_image(image, ANISO, (1.05, 1.05, 2.5))
    assert out.shape == (1, 8, 7, 8)
    for z in range(8):
        expected = skimage_resize(image[0, :, :, z // 2], (8, 7), order=3, clip_to=image[0])
        np.testing.assert_allclose(out[0, :, :, z], expected, atol=1e-5)


def test_thick_axis_linear_when_asked():
    image = np.broadcast_to(np.array([0.0, 4.0], np.float32), (1, 3, 3, 2)).copy()
    out = resample_image(image, ANISO, (0.7, 0.7, 2.5), order_separate=1)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, 3.0, 4.0])
    with pytest.raises(ValueError):
        resample_image(image, ANISO, (0.7, 0.7, 2.5), order_separate=3)


# --- centre alignment ----------------------------------------------------------------------------------

def test_linear_ramp_stays_a_ramp_at_voxel_centres():
    ramp = np.arange(8, dtype=np.float32)[None, :, None] * np.ones((1, 1, 3), np.float32)
    down = resample_image(ramp, (1.0, 1.0), (2.0, 1.0), order=1)  # centres of voxel pairs
    np.testing.assert_allclose(down[0, :, 0], [0.5, 2.5, 4.5, 6.5])
    up = resample_image(ramp[:, :4], (1.0, 1.0), (0.5, 1.0), order=1)  # edge value repeated outside
    np.testing.assert_allclose(up[0, :, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shape", [(9, 7, 5), (15, 11, 10), (6, 13)])
def test_matches_skimage_resize(order, shape):
    image = rng().normal(size=(1, 10, 8, 6)[: 1 + len(shape)]).astype(np.float32)
    spacing = (1.0,) * len(shape)
    target = tuple(n / m for n, m in zip(image.shape[1:], shape, strict=True))
    out = resample_image(image, spacing, target, new_shape=shape, order=order)
    assert out.dtype == np.float32 and out.shape == (1, *shape)
    np.testing.assert_allclose(out[0], skimage_resize(image[0], shape, order), atol=1e-5)


def test_spline_is_clipped_to_the_input_range():
    step = np.zeros((1, 8, 8), np.float32)
    step[0, 4:] = 1.0
    assert skimage_resize(step[0], (20, 20), 3).max() <= 1.0
    assert ndimage.zoom(step[0], 2.5, order=3, mode="nearest", grid_mode=True).max() > 1.01  # would overshoot
    out = resample_image(step, (1.0, 1.0), (0.4, 0.4), order=3)
    assert out.min() >= 0.0 and out.max() <= 1.0


# --- labels and instances ------------------------------------------------------------------------------

def test_labels_keep_every_class_and_make_up_none_when_down_sampled_4x():
    label = np.zeros((1, 16, 16, 8), np.uint8)
    label[0, 8:16, 0:12, :] = 3
    label[0, 0:6, 12:16, 4:] = 1  # 1 next to 3, never 2
    label[0, 6, 9, 5] = 7  # single voxel, membership 1/8 at output (1, 2, 1)
    label[0, 5, 9, 5] = 8  # single voxel with the same best output voxel as class 7
    label[0, 12, 4, 7] = 9  # single voxel that linear down-sampling steps over (membership 0 everywhere)
    out, restored = resample_labels(label, (1.0, 1.0, 1.0), (4.0, 4.0, 4.0))
    assert out.shape == (1, 4, 4, 2) and out.dtype == np.uint8
    assert set(np.unique(out)) == set(np.unique(label))
    assert sorted(restored) == [7, 8, 9]
    assert out[0, 1, 2, 1] == 7  # highest membership of 7 (1/8); 8 would want it too but may not take it
    (where_8,) = np.argwhere(out[0] == 8)
    assert np.abs(where_8 - (1, 2, 1)).sum() == 1  # so 8 goes next door
    assert out[0, 3, 1, 1] == 9  # the output voxel that holds its centre


def test_vanished_class_goes_where_its_membership_is_highest():
    # 8×8 → 2×2: output voxel o samples input coordinate 4·o + 1.5, so only input rows/columns 1, 2, 5, 6 count
    label = np.zeros((1, 8, 8), np.uint8)
    label[0, 2, 2] = 4  # membership 1/4 at output (0, 0)
    label[0, [4, 4, 7, 7], [4, 7, 4, 7]] = 4  # most of the class, but at zero-weight positions of output (1, 1)
    out, restored = resample_labels(label, (1.0, 1.0), (4.0, 4.0))
    assert restored == [4]
    assert out[0, 0, 0] == 4 and (out == 4).sum() == 1


def test_labels_never_invent_values_between_neighbours():
    label = np.zeros((1, 9, 7, 5), np.int16)
    label[0, :5] = 1
    label[0, 5:] = 3
    label[0, :, 4:, 2:] = -2
    for target, shape in (((0.6, 0.6, 0.6), None), ((1.7, 1.3, 2.0), None), ((1.0, 1.0, 1.0), (13, 4, 6))):
        out, restored = resample_labels(label, (1.0, 1.0, 1.0), target, shape)
        assert out.dtype == np.int16
        assert set(np.unique(out)) == {-2, 1, 3} and restored == []


def test_labels_on_anisotropic_and_2d_data():
    label = np.zeros((1, 12, 12, 4), np.uint8)
    label[0, 2:10, 2:10, 1:3] = 2
    out, _ = resample_labels(label, ANISO, (0.7, 0.7, 2.5))
    for z in range(8):  # thick axis: nearest, slices copied
        assert np.array_equal(out[0, :, :, z], label[0, :, :, z // 2])
    flat = np.zeros((1, 10, 10), np.uint8)
    flat[0, 3:7, 3:7] = 1
    flat[0, 9, 9] = 5
    out2d, restored = resample_labels(flat, (1.0, 1.0), (2.5, 2.5))
    assert out2d.shape == (1, 4, 4) and set(np.unique(out2d)) == {0, 1, 5} and restored == [5]


def test_instances_keep_their_ids_exactly():
    instances = rng().integers(0, 60000, size=(1, 9, 8, 4)).astype(np.uint16)
    for target in ((0.45, 0.6, 1.0), (2.0, 3.0, 1.5)):
        out = resample_instances(instances, (1.0, 1.0, 1.0), target)
        assert out.dtype == np.uint16
        assert set(np.unique(out)) <= set(np.unique(instances))
    out = resample_instances(instances, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))  # up 2×: each id is a 2×2×2 block
    assert np.array_equal(out[0, ::2, ::2, ::2], instances[0]) and np.array_equal(out[0, 1::2, 1::2, 1::2],
                                                                                  instances[0])
    assert resample_instances(instances[:, :, :, 0], (1.0, 1.0), (0.5, 2.0)).shape == (1, 18, 4)


# --- probabilities -------------------------------------------------------------------------------------

@pytest.mark.parametrize("native_spacing", [(0.7, 0.75, 4.0), (0.8, 0.9, 1.1), (0.7, 0.75)])
def test_probabilities_round_trip_to_the_exact_native_grid(native_spacing):
    native = (12, 10, 9)[: len(native_spacing)]
    model_spacing = (1.0, 1.0, 2.0)[: len(native_spacing)]
    model = resampled_shape(native, native_spacing, model_spacing)
    logits = rng().normal(scale=4.0, size=(4, *model))
    probabilities = softmax(logits)
    out = resample_probabilities(probabilities, model_spacing, native_spacing, native)
    assert out.shape == (4, *native) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
