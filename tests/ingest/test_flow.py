"""The ingest flow through the CLI: summary table, exit status, --strict; DVC push/pull of the dataset."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BIN, run
from tests.ingest.makers import LABELS, save_nifti, write_dataset_json


def inbox(root: Path, bad: bool = True) -> None:
    rng = np.random.default_rng(0)
    write_dataset_json(root / "data", LABELS)
    for name in ("a", "b"):
        label = np.zeros((16, 16, 1), np.uint8)
        label[4:9, 3:10] = 1
        save_nifti(rng.normal(size=(16, 16, 1)).astype(np.float32), root / "data" / "imagesTr" / f"{name}.nii.gz")
        save_nifti(label, root / "data" / "labelsTr" / f"{name}.nii.gz")
    if bad:
        save_nifti(rng.normal(size=(16, 16, 1)).astype(np.float32), root / "data" / "imagesTr" / "lonely.nii.gz")


def test_cli_prints_summary_and_fails_only_when_nothing_or_strict(tmp_path):
    """One CLI run (Prefect start-up is the slow part); the non-strict exit 0 is shown by the DVC test's repro."""
    inbox(tmp_path)
    done = run([str(BIN / "unetflow"), "ingest", "--root", str(tmp_path), "--strict"], tmp_path, tmp_path,
               check=False)
    output = done.stdout + done.stderr
    assert "2 accepted, 1 rejected" in output and "lonely.nii.gz: no label in labelsTr/" in output
    assert done.returncode != 0 and "1 cases rejected, 2 accepted" in output
    assert (tmp_path / "outputs" / "dataset" / "imagesTr" / "a.nii.gz").exists()  # the good cases still landed


def sha_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dvc_push_then_pull_in_a_fresh_clone_restores_the_dataset(project: Path, tmp_path: Path):
    inbox(project, bad=False)
    dvc = str(BIN / "dvc")
    run([dvc, "add", "-q", "data"], project, tmp_path)
    run([dvc, "repro", "-q", "ingest"], project, tmp_path)
    run([dvc, "push", "-q"], project, tmp_path)
    run(["git", "add", "-A"], project, tmp_path)
    run(["git", "commit", "-qm", "data + ingest"], project, tmp_path)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, tmp_path)
    run([dvc, "pull", "-q", "data.dvc", "ingest"], clone, tmp_path)  # later stages never ran here
    assert sha_tree(clone / "outputs" / "dataset") == sha_tree(project / "outputs" / "dataset")
    assert (clone / "outputs" / "dataset" / "dataset.json").exists()
    status = run([dvc, "status", "ingest"], clone, tmp_path)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == ""


def test_flow_takes_data_workers_and_runs_every_case_as_a_task_run_of_the_flow(tmp_path: Path, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest_flow

    inbox(tmp_path)
    state = ingest_flow(root=str(tmp_path), params_file=None, return_state=True,
                        overrides=["data.workers=3"])
    assert state.result()["accepted"] == 2
    with get_client(sync_client=True) as client:
        flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = client.read_task_runs(flow_run_filter=flow_run)
    cases = [r for r in runs if r.name.startswith("ingest-case")]
    assert len(cases) == 3 and all(r.state.is_completed() for r in cases)  # a, b and the unlabelled one
