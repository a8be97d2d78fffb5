"""Idempotent and incremental: re-ingest is a no-op; a run killed mid-way ends, rerun, like an uninterrupted one."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tasks.config import DataConfig
from tasks.ingest.batch import ingest_dataset
from tests.conftest import REPO
from tests.ingest.makers import LABELS, save_nifti

DATA = DataConfig(instance_labels=False, label_names=LABELS)


def make_inbox(raw: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((16, 16, 8), np.uint8)
        label[4:9, 3:10, 2:5] = 1
        save_nifti(rng.normal(size=(16, 16, 8)).astype(np.float32), raw / "imagesTr" / f"case{i}.nii.gz")
        save_nifti(label, raw / "labelsTr" / f"case{i}.nii.gz")


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reingest_is_a_noop_and_only_changed_cases_are_processed(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_inbox(raw)
    first, _ = ingest_dataset(raw, out, DATA)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second, results = ingest_dataset(raw, out, DATA, workers=2)
    assert all(r.unchanged and not r.written for r in results)
    assert first == second and stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    # Change one label, drop one case: only those move.
    label = np.zeros((16, 16, 8), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    save_nifti(label, raw / "labelsTr" / "case2.nii.gz")
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder / "case5.nii.gz").unlink()
    third, results = ingest_dataset(raw, out, DATA)
    assert sorted(r.case_id for r in results if not r.unchanged) == ["case2"]
    assert [r.case_id for r in results if r.written] == ["case2"]
    assert third["num_cases"] == 5 and not (out / "imagesTr" / "case5.nii.gz").exists()
    assert stamps[out / "imagesTr" / "case0.nii.gz"] == (out / "imagesTr" / "case0.nii.gz").stat().st_mtime_ns


SLOW_INGEST = """
import sys, time
from pathlib import Path
import tasks.ingest as ingest
from tasks.config import DataConfig
original = ingest._save_if_changed
def slow(*args, **kwargs):
    written = original(*args, **kwargs)
    time.sleep(0.2)
    return written
ingest._save_if_changed = slow
ingest.ingest_dataset(Path(sys.argv[1]), Path(sys.argv[2]),
                      DataConfig(instance_labels=False, label_names={"background": 0, "organ": 1}))
"""


def test_killed_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    raw = tmp_path / "raw"
    make_inbox(raw)
    ingest_dataset(raw, tmp_path / "reference", DATA)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(raw), str(killed)], cwd=REPO)
    deadline = time.monotonic() + 60
    while len(list((killed / "labelsTr").glob("*.nii.gz"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "dataset.json").exists()  # really killed mid-way
    ingest_dataset(raw, killed, DATA)
    assert digest(killed) == digest(tmp_path / "reference")
