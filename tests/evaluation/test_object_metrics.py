"""Object metrics on tiny hand-drawn maps: every expected value is worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.object_metrics import (
    THRESHOLDS,
    case_object_row,
    class_object_scores,
    connected_instances,
    object_scores,
    overlap_table,
)


def grid(shape: tuple[int, ...] = (6, 6)) -> np.ndarray:
    return np.zeros(shape, dtype=np.int32)


def check(scores, f1, aji, pq, sq, rq, splits, merges):
    assert scores.f1 == pytest.approx(f1)
    assert scores.aji == pytest.approx(aji)
    assert scores.pq == pytest.approx(pq)
    assert scores.sq == pytest.approx(sq)
    assert scores.rq == pytest.approx(rq)
    assert (scores.splits, scores.merges) == (splits, merges)


def test_a_perfect_match_scores_one_whatever_the_ids():
    true, pred = grid(), grid()
    true[0:2, 0:2], true[3:6, 3:6] = 7, 42
    pred[0:2, 0:2], pred[3:6, 3:6] = 2, 1  # same objects, other ids
    # 2 matches of IoU 1: F1 = 2·2/(2+2) = 1; AJI = (4+9)/(4+9) = 1; SQ = 1, RQ = 2/(2+0+0) = 1, PQ = 1
    scores = object_scores(pred, true)
    check(scores, 1, 1, 1, 1, 1, 0, 0)
    assert set(scores.f1_curve) == set(THRESHOLDS) and all(v == 1 for v in scores.f1_curve.values())


def test_one_split():
    true, pred = grid(), grid()
    true[0:4, 0:4] = 1  # 16 voxels
    pred[0:3, 0:4], pred[3, 0:4] = 1, 2  # pieces of 12 and 4 voxels
    # IoU(1) = 12/16 = 0.75, IoU(2) = 4/16 = 0.25: TP 1, FP 1, FN 0 → F1 = 2/(1+2) = 2/3
    # AJI: true's best is piece 1 (I 12, U 16), piece 2 unused (4) → 12/(16+4) = 0.6
    # SQ = 0.75, RQ = 1/(1 + 1/2) = 2/3, PQ = 0.5; piece 2 holds 4/16 = 25 % ≥ 10 % → 1 split
    scores = object_scores(pred, true)
    check(scores, 2 / 3, 0.6, 0.5, 0.75, 2 / 3, 1, 0)
    assert scores.f1_curve[0.75] == pytest.approx(2 / 3) and scores.f1_curve[0.8] == 0  # the match is 0.75


def test_one_merge():
    true, pred = grid(), grid()
    true[0:3, 0:4], true[3, 0:4] = 1, 2  # touching cells of 12 and 4 voxels
    pred[0:4, 0:4] = 5  # one blob of 16
    # IoU(1) = 12/16 = 0.75, IoU(2) = 4/16 = 0.25: TP 1, FP 0, FN 1 → F1 = 2/3
    # AJI: both pick the blob: (12 + 4)/(16 + 16) = 0.5; SQ 0.75, RQ 2/3, PQ 0.5; blob holds 100 % of both → 1 merge
    check(object_scores(pred, true), 2 / 3, 0.5, 0.5, 0.75, 2 / 3, 0, 1)


def test_one_missed_object():
    true, pred = grid(), grid()
    true[0:2, 0:2], true[4:6, 4:6] = 1, 2
    pred[0:2, 0:2] = 1
    # TP 1, FN 1 → F1 = 2/3; AJI = 4/(4 + 4) = 0.5 (the missed one adds its area to the union); SQ 1, PQ 2/3
    check(object_scores(pred, true), 2 / 3, 0.5, 2 / 3, 1, 2 / 3, 0, 0)


def test_one_false_positive():
    true, pred = grid(), grid()
    true[0:2, 0:2] = 1
    pred[0:2, 0:2], pred[4:6, 4:6] = 1, 2
    # TP 1, FP 1 → F1 = 2/3; AJI = 4/(4 + unused 4) = 0.5; SQ 1, RQ 2/3, PQ 2/3
    check(object_scores(pred, true), 2 / 3, 0.5, 2 / 3, 1, 2 / 3, 0, 0)


def test_iou_of_exactly_one_half_matches_for_f1_but_not_for_pq():
    true, pred = grid((1, 4)), grid((1, 4))
    true[0, :] = 1
    pred[0, :2], pred[0, 2:] = 1, 2  # two halves, IoU 2/4 = 0.5 each: a tie, one of them matched
    # F1@0.5: TP 1, FP 1 → 2/3; PQ needs IoU > 0.5: TP 0 → RQ 0, SQ 0, PQ 0
    # AJI: best is one half (I 2, U 4), the other unused (2) → 2/6; both halves hold 50 % → 1 split
    check(object_scores(pred, true), 2 / 3, 1 / 3, 0, 0, 0, 1, 0)


def test_3d_maps():
    true, pred = grid((4, 4, 4)), grid((4, 4, 4))
    true[0:2, 0:2, 0:2], true[2:4, 2:4, 2:4] = 1, 2  # two cubes of 8, touching at a corner
    pred[0:2, 0:2, 0:2] = 3
    pred[2:4, 2:4, 2:4] = 4
    pred[2:4, 2:4, 2] = 5  # the second cube cut into two slabs of 4: IoU 4/8 = 0.5 each
    # F1@0.5: matches cube 1 (IoU 1) and one slab (tie at 0.5): TP 2, FP 1, FN 0 → 4/5
    # PQ: only cube 1 (> 0.5): TP 1, FP 2 (both slabs), FN 1 (cube 2): SQ 1, RQ = 1/(1 + 2/2 + 1/2) = 0.4, PQ 0.4
    # AJI: (8 + 4)/(8 + 8 + unused slab 4) = 12/20 = 0.6; cube 2 in two 50 % slabs → 1 split
    check(object_scores(pred, true), 0.8, 0.6, 0.4, 1, 0.4, 1, 0)


@pytest.mark.parametrize("shape", [(5, 5), (3, 3, 3)])
def test_empty_maps_never_divide_by_zero(shape):
    empty, one = grid(shape), grid(shape)
    one[(0,) * len(shape)] = 1
    check(object_scores(empty, empty), 1, 1, 1, 1, 1, 0, 0)  # nothing to find, nothing wrongly found
    check(object_scores(empty, one), 0, 0, 0, 0, 0, 0, 0)  # missed everything
    check(object_scores(one, empty), 0, 0, 0, 0, 0, 0, 0)  # found only what is not there


def test_the_overlap_table_counts_intersections_and_areas():
    true, pred = grid((1, 6)), grid((1, 6))
    true[0, :4], true[0, 4:] = 1, 2
    pred[0, 1:5] = 9
    table = overlap_table(pred, true)
    assert table.true_area.tolist() == [4, 2] and table.pred_area.tolist() == [4]
    assert sorted(zip(table.pair_true.tolist(), table.intersection.tolist(), strict=True)) == [(0, 3.0), (1, 1.0)]


def test_connected_components_use_full_connectivity():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 0] = True  # touching diagonally only
    assert connected_instances(mask).max() == 1
    cube = np.zeros((3, 3, 3), dtype=bool)
    cube[0, 0, 0] = cube[1, 1, 1] = True
    assert connected_instances(cube).max() == 1


def test_per_class_uses_the_instances_of_that_class_and_components_of_the_prediction():
    labels, instances = grid(), grid()
    labels[0:2, 0:2], labels[4:6, 4:6] = 1, 2
    instances[0:2, 0:2], instances[4:6, 4:6] = 1, 2
    predicted = labels.copy()
    predicted[4:6, 4:6] = 1  # the class-2 cell predicted as class 1
    scores = class_object_scores(predicted, labels, instances, num_classes=3)
    # class 1: true {cell 1}, predicted components {cell 1, the other cell} → TP 1, FP 1: F1 2/3
    # class 2: true {cell 2}, nothing predicted → F1 0
    assert scores[1].f1 == pytest.approx(2 / 3) and scores[2].f1 == 0
    row = case_object_row(scores)
    assert row["object_f1"] == pytest.approx(1 / 3) and row["splits"] == 0
    given = class_object_scores(labels, labels, instances, 3, pred_instances=instances)
    assert all(s.f1 == 1 for s in given.values())


def test_a_case_with_no_objects_of_any_class_scores_one():
    nothing = grid()
    row = case_object_row(class_object_scores(nothing, nothing, nothing, num_classes=2))
    assert row["object_f1"] == 1 and row["aji"] == 1 and row["pq"] == 1
