"""Object-level metrics: does the model find each cell as *one* object, not just the right voxels?

The U-Net paper's weight maps exist to separate touching cells; Dice cannot see whether two touching cells
came out as one blob or one cell as two pieces (both keep almost every voxel right). These metrics compare
instance maps (integer arrays, 2D or 3D, 0 = background, any positive id = one object):

* **object F1 at IoU ≥ t**: a predicted and a true object match when their IoU is at least ``t``, each object
  matched at most once; ``F1 = 2·TP / (2·TP + FP + FN)``. Above 0.5 an object can overlap only one other
  by more than half their union, so the matching is unique; at exactly 0.5 ties are possible and are broken
  greedily by descending IoU (pairs in order of IoU, each taken if both objects are still free). The curve
  runs over ``t`` = 0.50, 0.55 .. 0.90.
* **AJI** (aggregated Jaccard index, Kumar et al. 2017): each true object is paired with the predicted object
  of largest IoU with it (none: intersection 0, union = its area); AJI = Σ intersections / (Σ unions + area of
  every predicted object no true object picked).
* **PQ = SQ × RQ** (panoptic quality, Kirillov et al. 2019): matches at IoU > 0.5 (strictly); SQ = mean IoU of
  the matches, RQ = TP / (TP + FP/2 + FN/2).
* **splits**: true objects of which at least two predicted objects each hold ≥ ``part`` (10 %) of its area.
  **merges**: predicted objects that hold ≥ ``part`` (10 %) of the area of each of at least two true objects.
  Both fractions are of the *true* object's area, so a small cell swallowed by a large blob counts as merged
  and a sliver shaved off a cell does not count as a split.

Empty maps never divide by zero: both empty → every score 1 (nothing to find, nothing wrongly found); one
empty → F1, AJI, SQ, RQ, PQ 0. SQ is 0 whenever there is no match.

The overlap table is built once per pair of maps from the voxels where either map has an object
(``np.unique`` over paired ids), so the work is in numpy; Python loops only over overlapping object pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.50 .. 0.90
PART = 0.1  # the share of a true object a piece must hold to count towards a split or a merge


@dataclass(frozen=True)
class Overlap:
    """The contingency table in sparse form: object areas, and one entry per overlapping (true, pred) pair."""

    true_area: np.ndarray  # (T,) voxels of each true object
    pred_area: np.ndarray  # (P,) voxels of each predicted object
    pair_true: np.ndarray  # (K,) index into true_area
    pair_pred: np.ndarray  # (K,) index into pred_area
    intersection: np.ndarray  # (K,) shared voxels

    @property
    def iou(self) -> np.ndarray:
        union = self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.intersection
        return self.intersection / union


@dataclass(frozen=True)
class ObjectScores:
    f1: float  # at IoU ≥ 0.5
    f1_curve: dict[float, float]  # threshold → F1
    aji: float
    pq: float
    sq: float
    rq: float
    splits: int
    merges: int
    true_objects: int
    pred_objects: int

    def as_row(self) -> dict[str, float | int]:
        """Flat values for a CSV row / MLflow metrics (the curve as ``object_f1_0.75`` ...)."""
        return {"object_f1": self.f1, "aji": self.aji, "pq": self.pq, "sq": self.sq, "rq": self.rq,
                "splits": self.splits, "merges": self.merges,
                **{f"object_f1_{t:.2f}": v for t, v in self.f1_curve.items()}}


def overlap_table(pred: np.ndarray, true: np.ndarray) -> Overlap:
    """Areas and pairwise intersections of the objects of two instance maps of the same shape."""
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    true_ids, true_area = np.unique(true[true > 0], return_counts=True)
    pred_ids, pred_area = np.unique(pred[pred > 0], return_counts=True)
    both = (true > 0) & (pred > 0)
    t_index = np.searchsorted(true_ids, true[both])
    p_index = np.searchsorted(pred_ids, pred[both])
    width = max(len(pred_ids), 1)
    codes, counts = np.unique(t_index.astype(np.int64) * width + p_index, return_counts=True)
    return Overlap(true_area.astype(np.float64), pred_area.astype(np.float64), codes // width, codes % width,
                   counts.astype(np.float64))


def match(table: Overlap, threshold: float, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matched pairs (indices into the table's pairs) at IoU ≥ ``threshold`` (> when ``strict``),
    and their IoUs. Greedy by descending IoU: the unique matching above 0.5, a maximal-IoU one at 0.5."""
    iou = table.iou
    keep = iou > threshold if strict else iou >= threshold
    candidates = np.flatnonzero(keep)
    candidates = candidates[np.argsort(-iou[candidates], kind="stable")]
    used_true, used_pred, chosen = set(), set(), []
    for k in candidates.tolist():  # over overlapping object pairs, never voxels
        t, p = int(table.pair_true[k]), int(table.pair_pred[k])
        if t not in used_true and p not in used_pred:
            used_true.add(t)
            used_pred.add(p)
            chosen.append(k)
    chosen_array = np.asarray(chosen, dtype=np.int64)
    return chosen_array, iou[chosen_array]


def _f1(tp: int, n_true: int, n_pred: int) -> float:
    if n_true == 0 and n_pred == 0:
        return 1.0
    return 2.0 * tp / (n_true + n_pred)  # = 2TP / (2TP + FP + FN)


def aji(table: Overlap) -> float:
    """Kumar et al.'s aggregated Jaccard index (see the module docstring)."""
    n_true, n_pred = len(table.true_area), len(table.pred_area)
    if n_true == 0 and n_pred == 0:
        return 1.0
    iou = table.iou
    order = np.lexsort((iou, table.pair_true))  # by true object, then ascending IoU: the last of each is its best
    by_true = table.pair_true[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = by_true[1:] != by_true[:-1]
    best = order[last]
    intersection = float(table.intersection[best].sum())
    paired = np.zeros(n_true, dtype=bool)
    paired[table.pair_true[best]] = True
    union = float((table.true_area[table.pair_true[best]] + table.pred_area[table.pair_pred[best]]
                   - table.intersection[best]).sum()) + float(table.true_area[~paired].sum())
    unused = np.ones(n_pred, dtype=bool)
    unused[table.pair_pred[best]] = False
    return intersection / (union + float(table.pred_area[unused].sum()))


def splits_and_merges(table: Overlap, part: float = PART) -> tuple[int, int]:
    """(true objects split into ≥ 2 predicted pieces, predicted objects covering ≥ 2 true objects); a piece
    counts when it holds ≥ ``part`` of the true object's area."""
    significant = table.intersection >= part * table.true_area[table.pair_true]
    pieces = np.bincount(table.pair_true[significant], minlength=len(table.true_area))
    covered = np.bincount(table.pair_pred[significant], minlength=len(table.pred_area))
    return int((pieces >= 2).sum()), int((covered >= 2).sum())


def object_scores(pred: np.ndarray, true: np.ndarray, part: float = PART) -> ObjectScores:
    """Every object metric of one predicted instance map against one true instance map."""
    table = overlap_table(pred, true)
    n_true, n_pred = len(table.true_area), len(table.pred_area)
    curve = {t: _f1(len(match(table, t)[0]), n_true, n_pred) for t in THRESHOLDS}
    _, ious = match(table, 0.5, strict=True)
    rq = _f1(len(ious), n_true, n_pred)
    sq = 1.0 if n_true == 0 and n_pred == 0 else (float(ious.mean()) if len(ious) else 0.0)
    splits, merges = splits_and_merges(table, part)
    return ObjectScores(f1=curve[0.5], f1_curve=curve, aji=aji(table), pq=sq * rq, sq=sq, rq=rq, splits=splits,
                        merges=merges, true_objects=n_true, pred_objects=n_pred)


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """Objects of a binary mask as connected components with full connectivity (8 in 2D, 26 in 3D): a
    diagonal touch joins two pieces, so a prediction is never credited with a split it only made diagonally."""
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels


def class_object_scores(pred_labels: np.ndarray, true_labels: np.ndarray, true_instances: np.ndarray,
                        num_classes: int, pred_instances: np.ndarray | None = None,
                        part: float = PART) -> dict[int, ObjectScores]:
    """Object scores per foreground class ``c``: the true objects are the instances inside the true class-``c``
    voxels; the predicted ones the connected components of the predicted class ``c`` (or, when
    ``pred_instances`` is given, its instances inside the predicted class-``c`` voxels)."""
    scores = {}
    for c in range(1, num_classes):
        true_c = np.where(true_labels == c, true_instances, 0)
        pred_mask = pred_labels == c
        pred_c = connected_instances(pred_mask) if pred_instances is None else np.where(pred_mask, pred_instances, 0)
        scores[c] = object_scores(pred_c, true_c, part)
    return scores


def case_object_row(scores: dict[int, ObjectScores]) -> dict[str, float | int]:
    """One case's values over its classes: scores averaged over the classes with any true or predicted object
    (a class absent from both says nothing), split and merge counts summed; no objects at all → all scores 1."""
    present = [s for s in scores.values() if s.true_objects or s.pred_objects]
    if not present:
        return object_scores(np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int32)).as_row()
    rows = [s.as_row() for s in present]
    return {key: (int(sum(r[key] for r in rows)) if key in ("splits", "merges")
                  else float(np.mean([r[key] for r in rows]))) for key in rows[0]}
