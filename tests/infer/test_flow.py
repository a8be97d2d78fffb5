"""The infer flow end to end with Prefect: a checkpoint, NIfTI + DICOM inputs, threads and Dask runners."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tasks.common.plan import build_model
from tasks.tracking.model_package import save_checkpoint
from tests.infer.helpers import blobs, plan_for, save_nifti
from tests.ingest.makers import write_series


def _project(root: Path, runner: str) -> Path:
    torch.manual_seed(0)
    plan = plan_for(3, [16, 16, 8], normalization="zscore")
    save_checkpoint(root / "model.pt", {"model": build_model(plan).state_dict(), "plan": plan.to_json()})
    for i in range(2):
        save_nifti(blobs((16, 16, 8), seed=i), root / "inbox" / f"case{i}.nii.gz", np.diag([0.9, 0.9, 2.0, 1.0]))
    write_series(root / "inbox" / "dicom" / "s1", (blobs((8, 16, 16), seed=5) * 300).astype(np.uint16) + 1000)
    (root / "inbox" / "bad.nii").write_bytes(b"garbage")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "infer": {"runner": runner, "workers": 2, "sw_batch_size": 2, "device": "cpu"},
        "tracking": {"system_metrics": False}}))
    return root


def test_infer_flow_threads_then_resume(tmp_path, prefect_harness):
    from flows.infer import infer_flow

    root = _project(tmp_path, "threads")
    result = infer_flow(root=str(root), model=str(root / "model.pt"), input="inbox", output="predictions")
    assert (result["done"], result["failed"], result["skipped"]) == (3, 1, 0)
    assert "bad.nii" in result["failed_cases"][0]["error"]
    rows = {r["case_id"]: r for r in csv.DictReader((root / "predictions" / "summary.csv").open())}
    dicom = next(r for c, r in rows.items() if c.startswith("dcm-"))
    assert dicom["seg"].endswith(".seg.dcm") and Path(dicom["seg"]).exists()
    assert json.loads(rows["case0"]["volumes_ml"]).keys() == {"lesion"}
    again = infer_flow(root=str(root), model=str(root / "model.pt"), input="inbox", output="predictions")
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 1)


@pytest.mark.slow  # a local Dask cluster (2 processes importing torch + MONAI): ~1 min on 2 cores
def test_infer_flow_on_a_local_dask_cluster(tmp_path, prefect_harness):
    pytest.importorskip("prefect_dask")
    from flows.infer import infer_flow

    root = _project(tmp_path, "dask")
    result = infer_flow(root=str(root), model=str(root / "model.pt"), input="inbox", output="predictions")
    assert (result["done"], result["failed"], result["skipped"]) == (3, 1, 0)
    assert list((root / "predictions" / ".model").glob("*.pt"))  # workers loaded the weights from a file
