"""The whole chain on a fresh project: demo → MLflow run + registry → DVC up to date → partial repro.

Everything is real: the `unetflow` CLI in a subprocess (Prefect in its ephemeral mode), a SQLite
MLflow store in the project folder, dvc in a new git repository.
"""

from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.conftest import BIN, run

pytestmark = pytest.mark.slow


def set_params(root: Path, **changes: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_demo_then_dvc(project: Path, tmp_path: Path) -> None:
    # 2 epochs of 2 steps test the wiring, not the model: the first one is promoted whatever it scores
    set_params(project, train={"epochs": 2, "batch_size": 4}, tracking={"min_test_score": 0.0})
    demo = run([str(BIN / "unetflow"), "demo", "--n-train", "12", "--n-test", "2"], project, tmp_path)
    assert "Test Dice:" in demo.stdout + demo.stderr and "object F1@0.5:" in demo.stdout + demo.stderr
    # The demo's touching cells come out as an instance map too, on each input's grid.
    for image in sorted((project / "data" / "imagesTs").glob("*_0000.nii.gz")):
        name = image.name.replace("_0000.nii.gz", "")
        instances = nib.load(str(project / "outputs" / "predictions" / f"{name}_instances.nii.gz"))
        assert instances.shape == nib.load(str(image)).shape and np.asarray(instances.dataobj).max() >= 1
    assert "mlflow ui --backend-store-uri sqlite:///" in demo.stdout + demo.stderr

    # MLflow: the run with flattened params, per-epoch metrics, artifacts, and the registered model.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("unetflow")
    assert experiment.artifact_location.startswith(f"file://{project}")
    (run_info,) = client.search_runs([experiment.experiment_id])
    assert run_info.data.params["train.epochs"] == "2"
    assert run_info.data.params["model.name"] == "unet"
    assert [m.step for m in client.get_metric_history(run_info.info.run_id, "val_dice")] == [0, 1]
    assert len(client.get_metric_history(run_info.info.run_id, "train_loss")) == 2
    assert "test_dice" in run_info.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
    assert {"plan.json", "params.yaml", "plots", "overlays"} <= artifacts
    version = client.get_model_version_by_alias("unetflow-segmenter", "champion")
    assert version.run_id == run_info.info.run_id
    assert client.get_model_version_by_alias("unetflow-segmenter", "candidate").version == version.version

    # The registered model loads by alias and predicts on a size it was never logged with.
    from tasks.tracking.model_package import load_model

    model, _ = load_model("models:/unetflow-segmenter@champion")  # weights + plan, nothing unpickled
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 40, 56))
    assert logits.shape == (1, 3, 40, 56)  # background, cell, and the border-core target's rim

    # The run names the classes dataset.json declared (params.yaml only says `auto`).
    assert run_info.data.params["data.label_names"] == "auto"
    assert run_info.data.params["plan.label_names"] == '{"background": 0, "cell": 1}'
    assert run_info.data.params["plan.weight_map_objects"] == "instances"  # the demo's instancesTr/
    assert run_info.data.params["plan.border_core"] == "True"
    assert run_info.data.tags["unetflow.kept_by"] == "val_object_f1"

    # Batch inference wrote masks on the inputs' own grid (nnU-Net channel files: <case>_0000 → <case>).
    for source in sorted((project / "data" / "imagesTs").glob("*_0000.nii.gz")):
        mask = nib.load(str(project / "outputs" / "predictions" / source.name.replace("_0000.nii.gz", ".nii.gz")))
        image = nib.load(str(source))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}

    # DVC: the demo's outputs are recorded, so nothing needs to run…
    assert (project / "data.dvc").exists()
    status = run([str(BIN / "dvc"), "status"], project, tmp_path)
    assert "up to date" in status.stdout, status.stdout
    # …and a change of train.epochs reruns train and evaluate only.
    set_params(project, train={"epochs": 3})
    status = run([str(BIN / "dvc"), "status"], project, tmp_path).stdout
    # (dvc status names the stage whose own deps changed; evaluate follows from train's new output)
    assert "train:" in status and "ingest:" not in status and "preprocess:" not in status
    repro = run([str(BIN / "dvc"), "repro"], project, tmp_path, timeout=900)
    assert "Running stage 'train'" in repro.stdout and "Running stage 'evaluate'" in repro.stdout
    assert "Running stage 'ingest'" not in repro.stdout and "Running stage 'preprocess'" not in repro.stdout
    assert [m.step for m in client.get_metric_history(
        client.get_model_version_by_alias("unetflow-segmenter", "candidate").run_id, "val_dice")] == [0, 1, 2]
    assert "up to date" in run([str(BIN / "dvc"), "status"], project, tmp_path).stdout
