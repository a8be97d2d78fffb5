"""``tracking.promote_on``: promotion compares the chosen test score (Dice, object F1, PQ) with the champion's
value of the same metric, on a real SQLite MLflow registry; the floor applies to that score."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.config import ConfigError, load_params
from tasks.tracking.registry import promote_if_better, read_champion


def _registry(tmp_path: Path, champion_metrics: dict[str, float], candidate_metrics: dict[str, float]) -> list:
    """Model ``seg``: version 1 (the champion) and version 2, their runs holding the given test metrics."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    mlflow.set_experiment("promote-on")
    client = MlflowClient()
    client.create_registered_model("seg")
    versions = []
    for metrics in (champion_metrics, candidate_metrics):
        with mlflow.start_run() as run:
            mlflow.log_metrics(metrics)
        versions.append(client.create_model_version("seg", f"runs:/{run.info.run_id}/m", run.info.run_id))
    client.set_registered_model_alias("seg", "champion", versions[0].version)
    return versions


def _champion() -> str:
    return str(MlflowClient().get_model_version_by_alias("seg", "champion").version)


def test_object_f1_promotes_a_candidate_with_worse_dice_but_better_objects(tmp_path):
    versions = _registry(tmp_path, {"test_dice": 0.9, "test_object_f1": 0.6}, {"test_dice": 0.8, "test_object_f1": 0.7})
    assert read_champion(MlflowClient(), "seg", "test_object_f1")[1] == 0.6
    decision = promote_if_better("seg", versions[1].version, versions[1].run_id, 0.7, 0.5, "object_f1")
    assert decision.promoted and decision.reason == "test object F1@0.5 0.7000 beats champion's 0.6000"
    assert _champion() == str(versions[1].version)
    assert MlflowClient().get_model_version("seg", versions[1].version).tags["test_object_f1"] == "0.7000"


def test_pq_keeps_the_champion_when_the_candidate_is_worse_and_the_floor_is_on_pq(tmp_path):
    versions = _registry(tmp_path, {"test_dice": 0.7, "test_pq": 0.6}, {"test_dice": 0.95, "test_pq": 0.55})
    worse = promote_if_better("seg", versions[1].version, versions[1].run_id, 0.55, 0.5, "pq")
    assert not worse.promoted and worse.reason == "test PQ 0.5500 does not beat champion's 0.6000"
    below = promote_if_better("seg", versions[1].version, versions[1].run_id, 0.4, 0.5, "pq")
    assert not below.promoted and below.reason == "test PQ 0.4000 is below tracking.min_test_score 0.5000"
    assert _champion() == str(versions[0].version)


def test_a_candidate_without_the_metric_keeps_the_champion_and_says_why(tmp_path):
    versions = _registry(tmp_path, {"test_dice": 0.5}, {"test_dice": 0.99})
    decision = promote_if_better("seg", versions[1].version, versions[1].run_id, None, 0.5, "object_f1")
    assert not decision.promoted and "no instance maps" in decision.reason and "champion stays" in decision.reason
    assert _champion() == str(versions[0].version)
    assert MlflowClient().get_run(versions[1].run_id).data.tags["unetflow.promoted"] == "false"


def test_a_champion_without_the_metric_gives_way_to_a_candidate_above_the_floor(tmp_path):
    versions = _registry(tmp_path, {"test_dice": 0.9}, {"test_dice": 0.8, "test_pq": 0.7})
    decision = promote_if_better("seg", versions[1].version, versions[1].run_id, 0.7, 0.5, "pq")
    assert decision.promoted and decision.reason.startswith(f"champion version {versions[0].version} has no test PQ")
    assert _champion() == str(versions[1].version)


def test_promote_on_is_configured_and_picks_the_evaluated_score(tmp_path):
    from tasks.tracking.published import promotion_score

    (tmp_path / "params.yaml").write_text("tracking:\n  promote_on: pq\n")
    params = load_params(tmp_path / "params.yaml")
    evaluated = {"test_dice": 0.9, "test_object_f1": 0.8, "test_pq": 0.7}
    assert promotion_score(params, evaluated) == 0.7
    assert promotion_score(params, {"test_dice": 0.9}) is None  # no instance maps: no PQ
    default = params.model_copy(update={"tracking": params.tracking.model_copy(update={"promote_on": "test_dice"})})
    assert promotion_score(default, evaluated) == 0.9
    (tmp_path / "params.yaml").write_text("tracking:\n  promote_on: hd95\n")
    with pytest.raises(ConfigError):
        load_params(tmp_path / "params.yaml")


def test_a_retrain_on_instance_maps_scores_objects_and_promotes_on_them(tmp_path, prefect_harness):
    """The tiny synthetic project has instance maps: the metrics files and the run get the object scores, and
    ``promote_on: object_f1`` decides on them."""
    import csv
    import json

    from flows.retrain import retrain_flow
    from tests.training.conftest import prepare_project

    root = tmp_path / "project"
    root.mkdir()
    prepare_project(root)
    result = retrain_flow(root=str(root), overrides=["tracking.promote_on=object_f1", "tracking.min_test_score=0.0"])
    evaluated = result["evaluate"]
    assert result["promoted"] and "test object F1@0.5" in result["reason"]
    metrics = json.loads((root / "outputs" / "metrics" / "test.json").read_text())
    assert {"test_dice", "test_object_f1", "test_aji", "test_pq", "test_splits", "test_merges"} <= set(metrics)
    assert metrics["test_object_f1"] == evaluated["test_object_f1"] and 0.0 <= metrics["test_pq"] <= 1.0
    assert list(metrics["test_object_f1_curve"]) == [f"{0.5 + 0.05 * i:.2f}" for i in range(9)]
    with (root / "outputs" / "metrics" / "test_cases.csv").open() as table:
        assert {"object_f1", "aji", "pq", "splits", "merges"} <= set(next(csv.DictReader(table)))
    run = MlflowClient().get_run(result["train"]["run_id"])
    assert run.data.metrics["test_object_f1"] == pytest.approx(evaluated["test_object_f1"])
    assert "test_pq" in run.data.metrics and "test_object_f1_0.90" in run.data.metrics
