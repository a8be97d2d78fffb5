"""Auditable batches: outputs readable per the umask, provenance in every report, earlier summaries kept."""

from __future__ import annotations

import csv
import json
import os
import stat
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tasks.inference.batch import run_batch
from tests.infer.helpers import ThresholdNet, blobs, plan_for, save_nifti, settings

AUDIT = {"model_name": "unetflow-segmenter", "model_version": "7", "model_uri": "models:/unetflow-segmenter@champion"}


def _inbox(folder: Path) -> Path:
    for i in range(2):
        save_nifti(blobs((12, 12, 6), seed=i), folder / f"case{i}.nii.gz", np.diag([0.9, 0.9, 2.0, 1.0]))
    (folder / "bad.nii").write_bytes(b"garbage")
    return folder


def _batch(tmp_path: Path, **changes) -> list:
    return run_batch(tmp_path / "inbox", tmp_path / "out", settings(**{**AUDIT, **changes}),
                     ThresholdNet(3, level=0.5), plan_for(3, [8, 8, 4]))


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it (the test runs alone in its process)."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, expected):
    _inbox(tmp_path / "inbox")
    umask(mask)
    run_batch(tmp_path / "inbox", tmp_path / "out", settings(), ThresholdNet(3, level=0.5), plan_for(3, [8, 8, 4]))
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    modes = {str(p.relative_to(tmp_path / "out")): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(expected)}, modes
    assert {"case0.nii.gz", "case0.json", "summary.csv", "summary.json", "index.csv"} <= {p.name for p in files}


def test_reports_and_summary_carry_provenance(tmp_path):
    _inbox(tmp_path / "inbox")
    _batch(tmp_path)
    out = tmp_path / "out"
    report = json.loads((out / "case0.json").read_text())
    assert report["model"] == {"name": "unetflow-segmenter", "version": "7",
                               "uri": "models:/unetflow-segmenter@champion", "id": "test"}
    assert report["unetflow_version"] and report["unetflow_version"] != "unknown"
    assert datetime.fromisoformat(report["created_at"]).utcoffset().total_seconds() == 0
    rows = {r["case_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["case0"]["model_name"] == "unetflow-segmenter" and rows["case0"]["model_version"] == "7"
    assert rows["case0"]["model_uri"] == AUDIT["model_uri"] and rows["case0"]["created_at"] == report["created_at"]
    assert rows["case0"]["unetflow_version"] == report["unetflow_version"]
    run = json.loads((out / "summary.json").read_text())["run"]
    assert {k: run[k] for k in AUDIT} == AUDIT and run["model_id"] == "test"
    assert run["unetflow_version"] == report["unetflow_version"]
    assert datetime.fromisoformat(run["started_at"]) <= datetime.fromisoformat(run["finished_at"])


def test_a_rerun_keeps_the_first_summary(tmp_path):
    _inbox(tmp_path / "inbox")
    _batch(tmp_path)
    out = tmp_path / "out"
    first = json.loads((out / "summary.json").read_text())
    # Same weights (model_id) registered again as version 8: provenance is not part of the key, the cases skip.
    again = _batch(tmp_path, model_version="8")
    assert sorted(o.status for o in again) == ["failed", "skipped", "skipped"]
    assert {o.model_version for o in again if o.status == "skipped"} == {"7"}  # who made those masks
    latest = json.loads((out / "summary.json").read_text())
    assert latest["run"]["model_version"] == "8" and latest["skipped"] == 2
    index = list(csv.DictReader((out / "runs" / "index.csv").open()))
    assert [(r["run_id"], r["model_version"], r["done"], r["skipped"], r["failed"]) for r in index] == [
        (first["run"]["run_id"], "7", "2", "0", "1"), (latest["run"]["run_id"], "8", "0", "2", "1")]
    for row, summary in zip(index, (first, latest), strict=True):
        assert json.loads((out / "runs" / row["summary_json"]).read_text()) == summary
        assert row["summary_csv"].startswith(row["summary_json"][:-5]) and (out / "runs" / row["summary_csv"]).exists()
    assert len(list((out / "runs").glob("*.csv"))) == 3  # two runs and the index
    assert not list(out.rglob(".*.tmp*"))


def test_model_provenance_resolves_an_alias(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from tasks.inference.batch import model_provenance

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    try:
        client = MlflowClient()
        client.create_registered_model("seg")
        for _ in range(3):
            client.create_model_version("seg", source=str(tmp_path))
        client.set_registered_model_alias("seg", "champion", "2")
        assert model_provenance("models:/seg@champion") == ("seg", "2")
        assert model_provenance("models:/seg/3") == ("seg", "3")
    finally:
        mlflow.set_tracking_uri(previous)
    assert model_provenance("runs:/abc/model") == ("", "")
    assert model_provenance(str(tmp_path / "model.pt")) == ("", "")
