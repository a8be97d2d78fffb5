"""What a flow run's Prefect page shows: artifacts on real ingest, infer and retrain runs, and the
retrain's own log naming each stage's sub-run (``prefect flow-run logs ID`` shows one run's log)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from tasks.common.plan import build_model
from tasks.tracking.model_package import save_checkpoint
from tests.conftest import REPO
from tests.infer.helpers import blobs, plan_for, save_nifti
from tests.ingest.test_flow import inbox


def artifacts_of(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found}


def logs_of(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(entry.message for entry in logs)


def test_ingest_run_shows_accepted_and_rejected(tmp_path, prefect_harness):
    from flows.ingest import ingest_flow

    inbox(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"workers": 1}}))
    state = ingest_flow(root=str(tmp_path), return_state=True)
    assert state.is_completed()
    found = artifacts_of(state.state_details.flow_run_id)
    assert {"ingest-report", "ingest-rejected"} <= found.keys()
    assert "**2 accepted**, **1 rejected**" in found["ingest-report"].data
    rows = json.loads(found["ingest-rejected"].data)
    assert [(r["case_id"], r["status"]) for r in rows] == [("lonely", "rejected")]
    assert "no label in labelsTr/" in rows[0]["reason"]


def test_infer_run_shows_cases_and_model(tmp_path, prefect_harness):
    from flows.infer import infer_flow

    torch.manual_seed(0)
    plan = plan_for(3, [16, 16, 8])
    save_checkpoint(tmp_path / "model.pt", {"model": build_model(plan).state_dict(), "plan": plan.to_json()})
    save_nifti(blobs((16, 16, 8)), tmp_path / "inbox" / "case0.nii.gz")
    (tmp_path / "inbox" / "bad.nii").write_bytes(b"garbage")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "infer": {"device": "cpu", "workers": 1}, "tracking": {"system_metrics": False}}))
    state = infer_flow(root=str(tmp_path), model=str(tmp_path / "model.pt"), input="inbox", output="out",
                       return_state=True)
    assert state.is_completed()
    found = artifacts_of(state.state_details.flow_run_id)
    assert {"infer-report", "infer-cases"} <= found.keys()
    report = found["infer-report"].data
    assert "**1 segmented**" in report and "**1 failed**" in report and str(tmp_path / "model.pt") in report
    assert "bad.nii" in report  # the failure's reason
    rows = {r["case_id"]: r for r in json.loads(found["infer-cases"].data)}
    assert rows["case0"]["status"] == "done" and rows["bad"]["status"] == "failed" and rows["bad"]["reason"]


@pytest.mark.slow  # a real retrain: ingest, preprocess, one epoch of training, evaluation (~1 min on 2 cores)
def test_retrain_run_shows_dice_promotion_mlflow_and_stages(tmp_path, prefect_harness):
    from flows.retrain import retrain_flow
    from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_synthetic_dataset(root / "data", SyntheticSpec(n_train=8, n_test=1, size=48))
    overrides = ["train.epochs=1", "train.overlay_every=0", "tracking.system_metrics=false",
                 "model.features=[4,8,16,32]", "data.workers=1", "preprocess.workers=1"]
    state = retrain_flow(root=str(root), overrides=overrides, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    run_id = state.state_details.flow_run_id
    found = artifacts_of(run_id)
    assert {"retrain-report", "retrain-mlflow-run", "retrain-stages"} <= found.keys()
    report = found["retrain-report"].data
    assert f"Test Dice: {result['evaluate']['test_dice']:.4f}" in report
    # the synthetic cells have instance maps: the report counts objects too
    assert f"object F1@0.5 {result['evaluate']['test_object_f1']:.4f}" in report
    assert f"{result['evaluate']['test_merges']} merged objects" in report
    assert f"Model version {result['version']}: promoted to champion" in report and result["reason"] in report
    assert f"sqlite:///{root / 'mlruns.db'}" in report and result["train"]["run_id"] in report
    assert result["train"]["run_id"] in found["retrain-mlflow-run"].data
    stages = json.loads(found["retrain-stages"].data)
    assert [s["stage"] for s in stages] == ["ingest", "preprocess", "train", "evaluate"]
    assert all(s["state"] == "Completed" for s in stages)
    log = logs_of(run_id)  # the retrain's *own* log names every stage's sub-run
    for stage in stages:
        assert f"retrain stage {stage['stage']}: sub-run {stage['run_name']} ({stage['run_id']})" in log
    assert "ingest:" in logs_of(stages[0]["run_id"])  # and that sub-run's log holds the stage's lines
