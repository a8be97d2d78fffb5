"""Runs that tell themselves apart in the MLflow runs list: every training run gets its own descriptive
name (the trainer seeds ``random`` before the run starts, so MLflow's generated name was the same every
time), the headline facts are short ``unetflow.*`` tags to show as columns, and ``compare`` leaves a chart
of its table in the parent run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.config import Params, load_params
from tests.training.conftest import TINY, prepare_project

ONE_EPOCH = {**TINY, "train": {**TINY["train"], "epochs": 1}}
NAME = re.compile(r"^unet-2d-(ds[0-9a-f]{7}|nodata)-\d{8}-\d{4}-[0-9a-f]{4}$")


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Path:
    root = tmp_path_factory.mktemp("run-names") / "project"
    root.mkdir()
    prepare_project(root, ONE_EPOCH)
    return root


@pytest.fixture
def project(preprocessed: Path, tmp_path: Path) -> tuple[Path, Params]:
    root = tmp_path / "project"
    shutil.copytree(preprocessed, root)
    return root, load_params(root / "params.yaml")


def test_two_training_runs_get_different_descriptive_names_and_column_tags(project) -> None:
    from tasks.training.trainer import train_model

    root, params = project
    run_ids = [train_model(params, root, register=False).run_id for _ in range(2)]
    runs = [MlflowClient().get_run(run_id) for run_id in run_ids]  # a client made after training sets the store
    names = [run.info.run_name for run in runs]
    assert names[0] != names[1], names
    assert all(NAME.match(name) for name in names), names
    for run in runs:
        tags = run.data.tags
        assert tags["unetflow.model"] == "unet" and tags["unetflow.dims"] == "2d" and tags["unetflow.epochs"] == "1"
        assert tags["unetflow.data_version"] in run.info.run_name and tags["unetflow.classes"] == "cell"
        assert {"best_val_dice", "best_epoch"} <= set(run.data.metrics)


def test_compare_names_its_runs_and_logs_a_chart(project) -> None:
    from tasks.evaluation.compare import compare_variants

    root, params = project
    rows = compare_variants(params, root, ["unet"])
    client = MlflowClient()
    child = client.get_run(rows[0]["run_id"])
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert {"comparison.json", "comparison.md", "comparison.png"} <= {a.path for a in
                                                                       client.list_artifacts(parent.info.run_id)}
    assert (root / "outputs" / "compare" / "comparison.png").stat().st_size > 1000
    assert child.info.run_name.startswith("compare-unet-2d-")
    assert parent.info.run_name.startswith("compare-unet-2d-") and parent.info.run_name != child.info.run_name
    assert {"test_dice", "seconds_per_epoch"} <= set(child.data.metrics)
