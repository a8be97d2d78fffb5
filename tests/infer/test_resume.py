"""Robustness: SIGKILL mid-batch then rerun equals an uninterrupted run; a corrupt study is named and skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tasks.common.plan import build_model
from tasks.inference.batch import model_identity, run_batch
from tasks.inference.segment import InferSettings
from tasks.tracking.model_package import load_model, save_checkpoint
from tests.infer.helpers import blobs, plan_for, save_nifti

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys, time
from pathlib import Path
import tasks.inference.batch as infer
from tasks.tracking.model_package import load_model
checkpoint, inbox, out = sys.argv[1:4]
model, plan = load_model(checkpoint)
original = infer.segment_case
def slow(*args, **kwargs):  # long enough per case to be killed half-way through the batch
    time.sleep(0.8)
    return original(*args, **kwargs)
infer.segment_case = slow
infer.run_batch(Path(inbox), Path(out), infer.InferSettings(device="cpu", model_id=sys.argv[4]), model, plan)
"""


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real registered network (tiny U-Net, fixed random weights) as a training checkpoint."""
    torch.manual_seed(0)
    plan = plan_for(3, [16, 16, 8], normalization="zscore")
    model = build_model(plan)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "plan": plan.to_json()})
    return path


def _inbox(folder: Path, n: int) -> None:
    for i in range(n):
        save_nifti(blobs((16, 16, 8), seed=i) + np.random.default_rng(i).normal(0, 0.1, (16, 16, 8)).astype(np.float32),
                   folder / f"case{i:02d}.nii.gz", np.diag([0.9, 0.9, 2.0, 1.0]))


def _results(folder: Path) -> dict[str, tuple[bytes, dict]]:
    out = {}
    for report in sorted(folder.glob("case*.json")):
        payload = json.loads(report.read_text())
        payload.pop("timings")
        payload.pop("created_at")  # when each run wrote it: the audit trail, not the result
        payload["outputs"] = {k: Path(v).name for k, v in payload["outputs"].items()}
        mask = np.asanyarray(nib.load(str(folder / f"{payload['case_id']}.nii.gz")).dataobj)
        out[payload["case_id"]] = (mask.tobytes(), payload)
    return out


def test_sigkill_mid_batch_then_rerun_does_only_the_rest(tmp_path, checkpoint):
    _inbox(tmp_path / "in", 6)
    model, plan = load_model(str(checkpoint))
    settings = InferSettings(device="cpu", model_id=model_identity(model))
    reference = run_batch(tmp_path / "in", tmp_path / "reference", settings, model, plan)
    assert [o.status for o in reference] == ["done"] * 6

    script = tmp_path / "slow_batch.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(script), str(checkpoint), str(tmp_path / "in"),
                                str(tmp_path / "out"), settings.model_id], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list((tmp_path / "out").glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    finished = {p.stem for p in (tmp_path / "out").glob("case*.json")}
    assert 2 <= len(finished) < 6, finished  # killed mid-batch

    rerun = run_batch(tmp_path / "in", tmp_path / "out", settings, model, plan)
    statuses = {o.case_id: o.status for o in rerun}
    assert {c for c, s in statuses.items() if s == "skipped"} == finished
    assert {c for c, s in statuses.items() if s == "done"} == {f"case{i:02d}" for i in range(6)} - finished
    assert _results(tmp_path / "out") == _results(tmp_path / "reference")
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]  # no half-written leftovers
    assert (tmp_path / "out" / "summary.csv").read_text().count(",skipped,") == len(finished)
    # A third run has nothing left to do; new weights make every result stale.
    assert {o.status for o in run_batch(tmp_path / "in", tmp_path / "out", settings, model, plan)} == {"skipped"}
    changed = InferSettings(device="cpu", model_id="other-weights")
    assert {o.status for o in run_batch(tmp_path / "in", tmp_path / "out", changed, model, plan)} == {"done"}


def test_one_corrupt_study_among_good_ones(tmp_path, checkpoint):
    _inbox(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(300))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    model, plan = load_model(str(checkpoint))
    outcomes = run_batch(tmp_path / "in", tmp_path / "out", InferSettings(device="cpu"), model, plan)
    by_id = {o.case_id: o for o in outcomes}
    assert [by_id[f"case{i:02d}"].status for i in range(3)] == ["done"] * 3
    assert by_id["broken"].status == "failed" and "broken.nii.gz" in by_id["broken"].error
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["done"] == 3 and [f["case_id"] for f in summary["failed_cases"]] == ["broken"]
    assert summary["ignored"] == 1 and "notes.txt: neither NIfTI nor DICOM" in summary["ignored_files"][0]["reason"]
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(rows) == 6 and any(r.startswith("broken,failed") and "broken.nii.gz" in r for r in rows)
