"""Which validation score the kept weights are the best by (``train.keep_best_by``)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.preprocess.case_store import write_case
from tasks.training.data_loader import case_records
from tasks.training.trainer import kept_by


def records(tmp_path, with_instances: list[bool]) -> list[dict]:
    ids = []
    for k, has in enumerate(with_instances):
        label = np.zeros((1, 8, 8), np.uint8)
        label[0, 2:5, 2:5] = 1
        arrays = {"image": np.zeros((1, 8, 8), np.float32), "label": label}
        if has:
            arrays["instances"] = label.astype(np.int32)
        write_case(tmp_path, f"c{k}", arrays)
        ids.append(f"c{k}")
    return case_records(tmp_path, ids)


def test_auto_keeps_by_object_f1_only_when_every_validation_case_has_instances(tmp_path):
    assert kept_by("auto", records(tmp_path / "all", [True, True])) == "val_object_f1"
    assert kept_by("auto", records(tmp_path / "some", [True, False])) == "val_dice"
    assert kept_by("auto", []) == "val_dice"
    assert kept_by("pq", records(tmp_path / "pq", [True])) == "val_pq"
    assert kept_by("dice", records(tmp_path / "dice", [True])) == "val_dice"


def test_object_scores_without_instance_maps_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="keep_best_by: object_f1 needs an instance map in every validation case"):
        kept_by("object_f1", records(tmp_path, [True, False]))
