"""Training on CPU with a real MLflow store: tracking, registry, resume after SIGKILL, promotion."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tasks.config import Params
from tasks.evaluation.compare import compare_variants
from tasks.tracking.model_package import load_checkpoint, load_model
from tasks.tracking.registry import decide_promotion, promote_if_better, read_champion
from tasks.tracking.store import TrackingError, configure_tracking
from tasks.training.trainer import train_model


def test_two_epochs_tracked_and_registered(preprocessed_copy):
    root, params = preprocessed_copy
    result = train_model(params, root, params_file=root / "params.yaml")
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "unet"
    assert run.data.tags["variant"] == "unet" and "git_commit" in run.data.tags
    for metric in ("train_loss", "val_dice", "val_dice_1", "val_object_f1", "val_pq", "lr"):
        assert [m.step for m in client.get_metric_history(result.run_id, metric)] == [0, 1], metric
    # the cells come with instance maps: the kept weights are the best by object F1, Dice recorded beside it
    assert result.kept_by == "val_object_f1" and run.data.tags["unetflow.kept_by"] == "val_object_f1"
    best = max(result.history, key=lambda row: (row["val_object_f1"], row["val_dice"]))
    assert result.best_score == best["val_object_f1"] and result.best_val_dice == best["val_dice"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"plan.json", "params.yaml", "resolved_params.json", "plots", "overlays"} <= artifacts
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/learning_curve.png"}
    version = client.get_model_version_by_alias(params.tracking.model_name, "candidate")
    assert str(version.version) == result.registered_version and version.run_id == result.run_id
    model, plan = load_model(f"models:/{params.tracking.model_name}@candidate")
    with torch.no_grad():
        # background, cell and the border-core target's rim (folded back into the cell at prediction)
        assert plan.border_core and model(torch.randn(1, 1, 37, 53)).shape == (1, 3, 37, 53)  # not the logged size
    assert plan.patch_size == (48, 48)
    # The checkpoint holds what resuming needs and loads with weights_only=True.
    state = load_checkpoint(root / params.train.output_dir / "checkpoint.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "run_id", "epoch"} <= set(state)


def test_the_params_file_read_is_the_one_kept_as_the_runs_params_yaml(preprocessed_copy):
    """``--params other.yaml``: the run keeps other.yaml's text, not the project's params.yaml."""
    from flows.train import train_flow

    root, _ = preprocessed_copy
    text = (root / "params.yaml").read_text().replace("epochs: 2", "epochs: 1") + "# read with --params\n"
    (root / "other.yaml").write_text(text)
    result = train_flow(root=str(root), params_file="other.yaml")
    assert mlflow.artifacts.load_text(f"runs:/{result['run_id']}/params.yaml") == text
    assert MlflowClient().get_run(result["run_id"]).data.params["train.epochs"] == "1"


SCRIPT = """
import sys, time
from pathlib import Path
import tasks.training.trainer as t
from tasks.config import load_params
root = Path(sys.argv[1])
params = load_params(root / "params.yaml")
original = t.run_epoch
def slow_epoch(*args, **kwargs):  # each epoch takes long enough to be killed in the middle of one
    time.sleep(0.6)
    return original(*args, **kwargs)
t.run_epoch = slow_epoch
t.train_model(params, root, resume=len(sys.argv) > 2)
"""


def test_sigkill_mid_epoch_then_resume_continues_the_same_run(preprocessed_copy, tmp_path):
    root, params = preprocessed_copy
    params_file = root / "params.yaml"
    params_file.write_text(params_file.read_text().replace("epochs: 2", "epochs: 5"))
    script = tmp_path / "train_slowly.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, str(script), str(root)], env=env, cwd=root)
    checkpoint = root / "outputs" / "model" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 1:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # inside the next epoch's sleep/steps
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= killed_at < 4, "the run must be killed mid-way"
    run_id = load_checkpoint(checkpoint)["run_id"]

    subprocess.run([sys.executable, str(script), str(root), "--resume"], env=env, cwd=root, check=True, timeout=300)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("unetflow").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the same run, not a new one
    assert runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})
    assert steps == [0, 1, 2, 3, 4]
    assert load_checkpoint(checkpoint)["epoch"] == 4


def test_promotion_is_refused_for_a_worse_model(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    mlflow.set_experiment("promotion")
    client = MlflowClient()
    client.create_registered_model("seg")
    versions = []
    for dice in (0.9, 0.8, 0.95):
        with mlflow.start_run() as run:
            mlflow.log_metric("test_dice", dice)
        versions.append((client.create_model_version("seg", f"runs:/{run.info.run_id}/m", run.info.run_id), dice))
    first = promote_if_better("seg", versions[0][0].version, versions[0][0].run_id, 0.9)
    assert first.promoted
    worse = promote_if_better("seg", versions[1][0].version, versions[1][0].run_id, 0.8)
    assert not worse.promoted and "does not beat" in worse.reason
    assert int(client.get_model_version_by_alias("seg", "champion").version) == int(versions[0][0].version)
    assert client.get_run(versions[1][0].run_id).data.tags["unetflow.promoted"] == "false"
    better = promote_if_better("seg", versions[2][0].version, versions[2][0].run_id, 0.95)
    assert better.promoted
    assert int(client.get_model_version_by_alias("seg", "champion").version) == int(versions[2][0].version)
    assert decide_promotion(0.5, 0.5)[0] is False  # a tie keeps the champion


def _registry_with_champion(tmp_path: Path) -> tuple[MlflowClient, list, Path]:
    """A real SQLite store: model ``seg``, version 1 (test Dice 0.9) the champion, version 2 (0.8) not."""
    store = tmp_path / "store.db"
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    mlflow.set_experiment("promotion")
    client = MlflowClient()
    client.create_registered_model("seg")
    versions = []
    for dice in (0.9, 0.8):
        with mlflow.start_run() as run:
            mlflow.log_metric("test_dice", dice)
        versions.append(client.create_model_version("seg", f"runs:/{run.info.run_id}/m", run.info.run_id))
    client.set_registered_model_alias("seg", "champion", versions[0].version)
    return client, versions, store


def test_no_champion_alias_or_no_registered_model_means_no_champion_yet(tmp_path):
    client, versions, _ = _registry_with_champion(tmp_path)
    client.delete_registered_model_alias("seg", "champion")
    decision = promote_if_better("seg", versions[1].version, versions[1].run_id, 0.8)
    assert decision.promoted and decision.reason.startswith("no champion yet") and decision.previous_champion is None
    assert client.get_model_version_by_alias("seg", "champion").version == versions[1].version
    assert read_champion(client, "never-registered") == (None, None)


def _sql(store: Path, statement: str) -> list[tuple]:
    """Straight to the SQLite file, behind MLflow's back (as a damaged or half-restored store would be)."""
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        return db.execute(statement).fetchall()


CHAMPION_ROW = "SELECT version FROM registered_model_aliases WHERE name = 'seg' AND alias = 'champion'"


@pytest.mark.parametrize("damage", [
    "DELETE FROM model_versions WHERE name = 'seg' AND version = 1",
    "UPDATE registered_model_aliases SET version = 'x' WHERE alias = 'champion'",
], ids=["champion-version-row-lost", "alias-row-garbled"])
def test_a_champion_that_cannot_be_read_is_an_error_not_no_champion(tmp_path, damage):
    """A damaged store must not promote a worse candidate. MLflow reports these two as "not found" and
    "invalid parameter", so even a check on the error code alone would read them as "no champion yet"."""
    client, versions, store = _registry_with_champion(tmp_path)
    _sql(store, damage)
    alias_before = _sql(store, CHAMPION_ROW)
    with pytest.raises(TrackingError, match="cannot read the 'champion' of registered model 'seg'"):
        promote_if_better("seg", versions[1].version, versions[1].run_id, 0.8)
    assert _sql(store, CHAMPION_ROW) == alias_before  # champion not moved to the worse model
    assert "unetflow.promoted" not in client.get_run(versions[1].run_id).data.tags


def test_an_unreachable_store_is_an_error_not_no_champion(monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match=f"cannot read the 'champion' .* http://127.0.0.1:{port}"):
        promote_if_better("seg", "2", "0" * 32, 0.8)


@pytest.mark.parametrize("field", ["uri", "artifact_root"])
def test_misconfigured_tracking_fails_before_training(preprocessed_copy, field):
    root, params = preprocessed_copy
    blocker = root / "a_file"
    blocker.write_text("")
    value = f"sqlite:///{blocker}/store.db" if field == "uri" else str(blocker / "artifacts")
    bad = params.model_copy(update={"tracking": params.tracking.model_copy(update={field: value})})
    with pytest.raises(TrackingError, match=str(blocker)):
        configure_tracking(bad.tracking, root)
    with pytest.raises(TrackingError):
        train_model(bad, root)
    assert not (root / "outputs" / "model" / "checkpoint.pt").exists()


def test_compare_two_variants_nested_runs_and_table(preprocessed_copy):
    root, params = preprocessed_copy
    one_epoch = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1})})
    rows = compare_variants(Params.model_validate(one_epoch.model_dump()), root, ["unet", "res_unet"],
                            params_file=root / "params.yaml")
    assert [r["variant"] for r in rows] == ["unet", "res_unet"]
    assert rows[0]["parameters"] != rows[1]["parameters"]
    assert all(np.isfinite(r["test_dice"]) and r["seconds_per_epoch"] > 0 for r in rows)
    client = MlflowClient()
    children = [client.get_run(r["run_id"]) for r in rows]
    parents = {c.data.tags["mlflow.parentRunId"] for c in children}
    assert all("params.yaml" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in children)
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.params["variants"] == "unet,res_unet"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.json", "comparison.md"}
    assert "res_unet" in (root / "outputs" / "compare" / "comparison.md").read_text()


@pytest.mark.slow
def test_ddp_with_gloo_on_two_cpu_processes(preprocessed_copy):
    """torchrun, 2 processes, gloo: one MLflow run (rank 0 only), every case trained on by some rank."""
    root, params = preprocessed_copy
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "tasks.training.ddp_worker", "--root", str(root), "--params", "params.yaml"],
                   cwd=root, env=env, check=True, timeout=300)
    info = __import__("json").loads((root / "outputs" / "model" / "train.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("unetflow").experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]]
    assert runs[0].data.params["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(info["run_id"], "train_loss")] == [0, 1]
    model, _ = load_model(info["checkpoint"])
    assert not any("SyncBatchNorm" in type(m).__name__ for m in model.modules())
