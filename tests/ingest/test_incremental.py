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
from tests.ingest.makers import LABELS, save_nifti, write_dataset_json

DATA = DataConfig(label_names=LABELS)  # explicit, and the same as dataset.json's


def make_inbox(raw: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    write_dataset_json(raw, LABELS)
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


# The child runs the real ingest with the real writer; once two files are finished it stops half-way
# through writing the third (what the compressor has emitted so far flushed to disk), names the file
# it is writing in ``marker`` and waits there to be killed, so the SIGKILL lands mid-write every time.
KILLED_MID_WRITE = """
import os, sys, time
from pathlib import Path
import tasks.imaging.nifti_writer as writer
from tasks.ingest.batch import ingest_dataset
from tests.ingest.test_incremental import DATA
raw, out, marker = map(Path, sys.argv[1:4])
finished = 0
write, finish = writer._GzipSink.write, writer._GzipSink.finish
def counting_finish(self):
    global finished
    digest = finish(self)
    finished += 1
    return digest
def stalling_write(self, data):
    size = write(self, data)
    self.chunks = getattr(self, "chunks", 0) + 1
    if finished == 2 and self.chunks == 3:  # past the header (2 chunks), into the voxels
        self._handle.flush()
        marker.with_suffix(".part").write_text(self._handle.name)
        os.replace(marker.with_suffix(".part"), marker)
        time.sleep(600)
    return size
writer._GzipSink.finish, writer._GzipSink.write = counting_finish, stalling_write
ingest_dataset(raw, out, DATA)
"""


def test_killed_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    raw, killed, marker = tmp_path / "raw", tmp_path / "killed", tmp_path / "writing.txt"
    make_inbox(raw)
    ingest_dataset(raw, tmp_path / "reference", DATA)
    reference = digest(tmp_path / "reference")
    stderr_path = tmp_path / "child.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(raw), str(killed), str(marker)],
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 180  # imports alone take several seconds on a loaded 2-core machine
        while process.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, (f"the ingest exited (code {process.returncode}) before it could be "
                                         f"killed mid-write; its stderr:\n{stderr_path.read_text()[-4000:]}")
        assert marker.exists(), "the ingest did not reach the middle of its third file within 180 s"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    # What the kill left: no dataset.json, the file being written only as a hidden temporary, and
    # every file in view whole (the same bytes an uninterrupted run writes).
    writing = Path(marker.read_text())
    visible = {rel: sha for rel, sha in digest(killed).items() if not Path(rel).name.startswith(".")}
    assert not (killed / "dataset.json").exists()
    assert writing.name.startswith(".") and writing.exists(), \
        f"killed while writing {writing.relative_to(killed)}: a file being written must be a hidden temporary"
    assert len(visible) == 2 and visible == {rel: reference[rel] for rel in visible}, \
        f"the killed run left files that differ from an uninterrupted run's: {sorted(visible)}"

    ingest_dataset(raw, killed, DATA)
    assert digest(killed) == reference
