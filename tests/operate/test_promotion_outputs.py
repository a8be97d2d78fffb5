"""The retrain flow, for real (Prefect, MLflow SQLite, the tiny synthetic project): the champion's files
change only on promotion, a model below ``tracking.min_test_score`` never becomes champion (the first one
included), and the registered version says its test Dice and why it was (not) promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.tracking.registry import decide_promotion
from tests.training.conftest import prepare_project

MODEL = "unetflow-segmenter"


@pytest.fixture
def tiny_project(tmp_path: Path, prefect_harness) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    prepare_project(root)
    return root


def _retrain(root: Path, *overrides: str) -> dict:
    from flows.retrain import retrain_flow

    return retrain_flow(root=str(root), overrides=list(overrides))


def test_a_retrain_that_is_not_promoted_leaves_the_champions_files_alone(tiny_project):
    root = tiny_project
    first = _retrain(root, "tracking.min_test_score=0.0")
    assert first["promoted"], first["reason"]
    champion = {path: (root / path).read_bytes() for path in
                ("outputs/model/model.pt", "outputs/model/train.json", "outputs/metrics/test.json",
                 "outputs/metrics/test_cases.csv")}
    assert json.loads(champion["outputs/model/train.json"])["registered_version"] == first["version"]

    second = _retrain(root, "tracking.min_test_score=1.0")  # cannot reach the floor: loses for sure
    assert not second["promoted"] and "below tracking.min_test_score" in second["reason"]
    assert {path: (root / path).read_bytes() for path in champion} == champion
    losing = root / "outputs" / "candidates" / f"v{second['version']}"
    assert (losing / "model.pt").is_file()
    assert json.loads((losing / "metrics" / "test.json").read_text())["test_dice"] == second["evaluate"]["test_dice"]
    assert str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version) == first["version"]


def test_a_first_model_below_the_floor_is_not_champion_and_the_version_says_why(tiny_project):
    root = tiny_project
    result = _retrain(root, "tracking.min_test_score=1.0")
    dice = result["evaluate"]["test_dice"]
    assert not result["promoted"]
    assert result["reason"] == f"test Dice {dice:.4f} is below tracking.min_test_score 1.0000"
    client = MlflowClient()
    assert "champion" not in client.get_registered_model(MODEL).aliases
    assert not (root / "outputs" / "model" / "model.pt").exists()
    assert not (root / "outputs" / "metrics" / "test.json").exists()
    version = client.get_model_version(MODEL, result["version"])
    assert version.tags["promoted"] == "false" and version.tags["promotion_reason"] == result["reason"]
    assert version.tags["test_dice"] == f"{dice:.4f}"
    assert f"test Dice {dice:.4f}" in version.description and result["reason"] in version.description
    run = client.get_run(result["train"]["run_id"])
    assert run.data.tags["unetflow.promoted"] == "false"
    assert run.data.tags["unetflow.promotion_reason"] == result["reason"]


def test_the_floor_rule():
    assert decide_promotion(0.0, None, 0.5) == (False, "test Dice 0.0000 is below tracking.min_test_score 0.5000")
    assert decide_promotion(float("nan"), None, 0.5)[0] is False
    assert decide_promotion(0.6, None, 0.5)[0] is True
    assert decide_promotion(0.45, 0.3, 0.5)[0] is False  # beating a champion does not lower the floor
