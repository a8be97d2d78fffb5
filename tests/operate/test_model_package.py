"""Models as data, not code: a logged model is a state dict + plan that unetflow reads without unpickling.

A real SQLite MLflow store with a registry: one model logged by ``log_and_register`` (the way training
logs it) and one logged the old way (a pickled ``mlflow.pytorch`` module), which loads only when trusted.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

NEW, OLD = "segmenter", "old-segmenter"
PATCH = [32, 32]
SIZE = (40, 56)  # not the patch: inference must take any size


def tiny_plan():
    from tasks.common.plan import Plan

    return Plan.model_validate({
        "spatial_dims": 2, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "cell": 1},
        "patch_size": PATCH, "normalization": {"channels": [{"scheme": "zscore"}]},
        "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": [4, 8, 16], "norm": "batch"}})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A project folder whose MLflow store holds a new-format and an old-format registered model."""
    import mlflow
    import mlflow.pytorch

    from tasks.common.plan import build_model
    from tasks.config.sections import TrackingConfig
    from tasks.tracking.model_package import log_and_register
    from tasks.tracking.store import configure_tracking

    root = tmp_path_factory.mktemp("model_package")
    (root / "params.yaml").write_text(yaml.safe_dump({"tracking": {"model_name": NEW, "system_metrics": False}}))
    configure_tracking(TrackingConfig(model_name=NEW, system_metrics=False), root)
    plan = tiny_plan()
    torch.manual_seed(0)
    model = build_model(plan)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    model.eval()
    output = root / "outputs" / "model"
    output.mkdir(parents=True)
    with mlflow.start_run() as run:
        uri, version = log_and_register(model, plan, output, NEW)
    with mlflow.start_run() as old_run:  # what unetflow logged before weights + plan
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                 extra_files=[str(output / "plan.json")], registered_model_name=OLD,
                                 pip_requirements=["torch"])
    yield {"root": root, "model": model, "plan": plan, "uri": uri, "version": version,
           "run_id": run.info.run_id, "old_run_id": old_run.info.run_id}


@contextlib.contextmanager
def unpickling_forbidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any unpickling of code during the block fails the test (``torch.load`` only with ``weights_only``)."""
    import cloudpickle
    import mlflow.pyfunc
    import mlflow.pytorch

    def refuse(*args, **kwargs):
        raise AssertionError("the loader unpickled something")

    real_torch_load = torch.load

    def torch_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True: {args} {kwargs}")
        return real_torch_load(*args, **kwargs)

    with monkeypatch.context() as patch:
        for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (cloudpickle, "load"),
                             (cloudpickle, "loads"), (mlflow.pyfunc, "load_model"),
                             (mlflow.pytorch, "load_model")):
            patch.setattr(module, name, refuse)
        patch.setattr(torch, "load", torch_load)
        yield


def test_registered_model_loads_by_alias_and_run_without_unpickling(store: dict, monkeypatch) -> None:
    from tasks.inference.native_grid import predict_native_labels
    from tasks.tracking.model_package import load_model

    torch.manual_seed(1)
    image = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        expected = store["model"](image)
    for uri in (f"models:/{NEW}@candidate", f"models:/{NEW}/{store['version']}", f"runs:/{store['run_id']}/model"):
        with unpickling_forbidden(monkeypatch):
            model, plan = load_model(uri)
        assert plan == store["plan"] and not model.training, uri
        with torch.no_grad():
            logits = model(image)
        assert logits.shape == (1, 2, *SIZE) and torch.equal(logits, expected), uri
        assert np.array_equal(predict_native_labels(model, plan, image[0].numpy(), None),
                              predict_native_labels(store["model"], plan, image[0].numpy(), None)), uri


def test_the_logged_model_is_weights_and_plan_with_no_pickled_code(store: dict) -> None:
    import mlflow.artifacts

    from tasks.tracking.pyfunc_model import ENTRY_FILE, ENTRY_POINT

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NEW}@candidate",
                                                     dst_path=str(store["root"] / "download")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}  # no `pytorch` flavor, i.e. no pickled module
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert mlmodel["metadata"]["unetflow"] == {"format": "weights+plan/1", "version": installed_version("unetflow")}
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", ENTRY_FILE, "artifacts/weights.pt", "artifacts/plan.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pth", ".pt2", ".pickle"))], files
    assert (local / ENTRY_FILE).read_text() == ENTRY_POINT  # an import of the installed class, nothing else
    weights = torch.load(local / "artifacts" / "weights.pt", weights_only=True)
    reference = store["model"].state_dict()
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)
    assert yaml.safe_load((local / "artifacts" / "plan.json").read_text()) == store["plan"].to_json()


def test_the_pyfunc_model_runs_the_plans_windows(store: dict) -> None:
    """MLflow's own loader (what `mlflow models serve` uses) gives the label maps batch inference would."""
    import mlflow.pyfunc

    from tasks.inference.native_grid import predict_native_labels

    served = mlflow.pyfunc.load_model(f"models:/{NEW}@candidate")
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 1, *SIZE)).astype(np.float32)
    labels = served.predict(images)
    expected = np.stack([predict_native_labels(store["model"], store["plan"], image, None) for image in images])
    assert labels.shape == (2, *SIZE) and labels.dtype == np.uint8
    assert np.array_equal(labels, expected)
    assert np.array_equal(served.predict(images, params={"overlap": 0.5}),
                          np.stack([predict_native_labels(store["model"], store["plan"], image, None, overlap=0.5)
                                    for image in images]))


def test_an_older_pickled_version_loads_only_when_trusted(store: dict, monkeypatch) -> None:
    from tasks.tracking.model_package import load_model

    for uri in (f"models:/{OLD}/1", f"runs:/{store['old_run_id']}/model"):
        with unpickling_forbidden(monkeypatch), pytest.raises(Exception, match="--trust-pickled-model"):
            load_model(uri)
        model, plan = load_model(uri, trust_pickled=True)
        assert plan == store["plan"]
        image = torch.randn(1, 1, *SIZE)
        with torch.no_grad():
            assert torch.equal(model(image), store["model"](image))


def test_infer_flow_refuses_an_older_pickled_model_unless_trusted(store: dict, prefect_harness) -> None:
    from flows.infer import infer_flow

    root = store["root"]
    (root / "inbox").mkdir(exist_ok=True)
    common = {"root": str(root), "model": f"models:/{OLD}/1", "input": "inbox", "output": "predictions",
              "overrides": ["infer.device=cpu"]}
    with pytest.raises(Exception, match="--trust-pickled-model"):
        infer_flow(**common)
    assert infer_flow(**common, trust_pickled_model=True)["done"] == 0  # loaded; an empty inbox


def test_the_infer_command_passes_trust_pickled_model_to_the_flow(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import flows.infer
    from flows.cli import app

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"system_metrics": False}}))
    seen: list[dict] = []
    monkeypatch.setattr(flows.infer, "infer_flow", lambda **kwargs: seen.append(kwargs) or {})
    runner = CliRunner()
    for flag, trusted in (([], False), (["--trust-pickled-model"], True)):
        result = runner.invoke(app, ["infer", "--root", str(tmp_path), *flag])
        assert result.exit_code == 0, result.output
        assert seen[-1]["trust_pickled_model"] is trusted
