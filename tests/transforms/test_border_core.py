"""Border-core targets: each object's rim an extra class in training, folded back into its class at prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.transforms import border_core_labels, core_instances, fold_border, object_rims


def touching_boxes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4×4 objects side by side, touching along a column, with no background between them."""
    ids = np.zeros((8, 10), np.int32)
    ids[2:6, 1:5] = 1
    ids[2:6, 5:9] = 2
    return (ids > 0).astype(np.uint8), ids


def test_rims_are_drawn_where_an_object_meets_anything_else():
    classes, ids = touching_boxes()
    target = border_core_labels(classes, ids, border_value=2, thickness=1)
    expected = np.zeros((8, 10), np.uint8)
    expected[2:6, 1:9] = 2  # every voxel of the 4×4 objects next to background or the other object ...
    expected[3:5, 2:4] = 1  # ... except each object's 2×2 centre, its core
    expected[3:5, 6:8] = 1
    np.testing.assert_array_equal(target, expected)
    # the cores of the touching objects are apart: two components where the class map has one
    assert len(np.unique(core_instances(ids, target, 2))) == 3


def test_a_thicker_rim_eats_further_in_and_the_image_edge_is_not_a_rim():
    ids = np.zeros((6, 12), np.int32)
    ids[:, :6] = 1  # the two objects fill the image: every side but the shared one is the image's edge
    ids[:, 6:] = 2
    one = object_rims(ids, 1)
    assert one[:, [5, 6]].all() and not one[:, [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]].any()
    two = object_rims(ids, 2)
    assert two[:, [4, 5, 6, 7]].all() and not two[:, [0, 1, 2, 3, 8, 9, 10, 11]].any()


def test_background_stays_background_and_classes_stay_their_class():
    classes = np.array([[0, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 0]] * 5, np.uint8)
    ids = np.array([[0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]] * 5, np.int32)
    target = border_core_labels(classes, ids, border_value=4, thickness=1)
    assert (target[:, 0] == 0).all() and (target[:, -1] == 0).all()
    assert set(np.unique(target[:, 2:5])) == {1} and set(np.unique(target[:, 7:10])) == {3}
    assert (target[:, [1, 5, 6, 10]] == 4).all()


def test_a_thickness_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        object_rims(np.zeros((4, 4), np.int32), 0)


def test_fold_adds_the_rim_to_the_likeliest_foreground_class_and_keeps_a_distribution():
    # 3 classes + rim at 3 voxels: rim-dominated with class 2 ahead of class 1, class-1 voxel, background voxel
    p = torch.tensor([[0.1, 0.1, 0.7],
                      [0.1, 0.6, 0.1],
                      [0.2, 0.1, 0.1],
                      [0.6, 0.2, 0.1]], dtype=torch.float32)
    original = p.clone()
    classes, rim = fold_border(p, num_classes=3)
    torch.testing.assert_close(classes, torch.tensor([[0.1, 0.1, 0.7], [0.1, 0.8, 0.2], [0.8, 0.1, 0.1]]))
    torch.testing.assert_close(classes.sum(0), torch.ones(3))
    assert classes.argmax(0).tolist() == [2, 1, 0]  # the rim voxel is its object's class, not background
    torch.testing.assert_close(rim, p[3:])
    torch.testing.assert_close(p, original)  # the network's output is not changed in place


def test_fold_passes_a_plain_network_through_and_refuses_other_channel_counts():
    p = torch.softmax(torch.randn(2, 5, 5), 0)
    classes, rim = fold_border(p, 2)
    assert classes is p and rim is None
    with pytest.raises(ValueError, match="4 output channels for 2 classes"):
        fold_border(torch.softmax(torch.randn(4, 5, 5), 0), 2)
