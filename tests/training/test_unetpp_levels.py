"""``unetflow evaluate`` on a deeply supervised UNet++: Dice and seconds per case for every level (the paper's
speed/accuracy trade-off) and for the heads' mean, as metrics and a table in the training run."""

from __future__ import annotations

import json
import math

import mlflow
import yaml
from mlflow import MlflowClient

from tasks.common.plan import PLAN_FILE, Plan
from tasks.config import load_params
from tasks.evaluation.evaluate import evaluate_model
from tasks.preprocess.planning import network_spec
from tasks.training.trainer import train_model


def test_evaluate_reports_every_unetpp_level(preprocessed_copy):
    root, _ = preprocessed_copy
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["model"] = {"name": "unetpp", "features": [4, 8, 16], "options": {"deep_supervision": True}}
    raw["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    assert params.train.loss_options["deep_supervision"] == "equal"  # the heads are trained, not left alone
    plan = Plan.read(root / params.preprocess.output_dir / PLAN_FILE)  # preprocessed once, for a U-Net
    train_model(params, root, plan=plan.with_network(network_spec(params.model)), register=False)

    result = evaluate_model(params, root)
    assert [row["mode"] for row in result.levels] == ["L1", "L2", "heads_mean"]
    for row in result.levels:
        assert 0.0 <= row["test_dice"] <= 1.0 and 0.0 <= row["test_iou"] <= 1.0, row
        assert row["seconds_per_case"] > 0, row
    assert math.isclose(result.levels[1]["test_dice"], result.test_dice)  # L2 is the full network
    assert all(case["seconds"] > 0 for case in result.cases)

    run = MlflowClient().get_run(result.run_id)
    for mode in ("L1", "L2", "heads_mean"):
        for metric in ("test_dice", "test_iou", "test_seconds_per_case"):
            assert f"{metric}_{mode}" in run.data.metrics, (metric, mode)
    table = mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/unetpp_levels.md")
    assert table.splitlines()[0] == "mode | test_dice | test_iou | seconds_per_case" and "L1 |" in table
    stored = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/unetpp_levels.json"))
    assert stored["columns"][0] == "mode"
    test_json = json.loads((root / "outputs" / "metrics" / "test.json").read_text())
    assert set(test_json["unetpp_levels"]) == {"L1", "L2", "heads_mean"}
