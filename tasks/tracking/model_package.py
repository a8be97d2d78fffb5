"""A trained model travels as *network + plan*: the weights and the preprocessing they expect.

It is written once per training run (``log_and_register``: an MLflow model holding a state dict and
``plan.json``, registered with the alias ``candidate``) and read in three forms by one loader: a local
checkpoint (``checkpoint.pt``, read with ``weights_only=True``), an MLflow run (``runs:/<id>/model``)
or a registry URI (``models:/name@champion``). Neither form holds a pickled module — anyone who can write
a model version would otherwise run code on every inference host — nor a ``torch.export`` program, which
would fix the input shape to the logged example when inference must take any size: the loader rebuilds
the network from the plan (see :mod:`tasks.tracking.pyfunc_model`). Versions logged before, as pickled
``mlflow.pytorch`` modules, load only when the caller trusts them (``--trust-pickled-model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.plan import PLAN_FILE, Plan, build_model
from tasks.tracking.registry import CANDIDATE_ALIAS


class PickledModelRefused(RuntimeError):
    """A registry model saved as a pickled module, asked for without ``--trust-pickled-model``."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during ``torch.save`` leaves the previous checkpoint intact."""
    from tasks.common.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(uri: str, map_location: str | torch.device = "cpu",
               trust_pickled: bool = False) -> tuple[nn.Module, Plan]:
    """(model in eval mode, plan) from a checkpoint path, ``runs:/`` or ``models:/`` URI.

    A URI's artifacts are downloaded and read as data (MLmodel as YAML, ``plan.json``, the state dict with
    ``weights_only=True``); the network is rebuilt from the plan, so nothing from the registry runs as code.
    A version logged before that (a pickled ``mlflow.pytorch`` module) is unpickled only with
    ``trust_pickled`` (``--trust-pickled-model``): unpickling runs whatever its writer put in it.
    """
    if "://" not in uri and uri.split(":", 1)[0] not in ("runs", "models"):
        checkpoint = load_checkpoint(Path(uri), map_location)
        plan = Plan.model_validate(checkpoint["plan"])
        model = build_model(plan)
        model.load_state_dict(checkpoint["model"])
        return model.eval(), plan
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="unetflow-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        return _load_downloaded(uri, local, map_location, trust_pickled)


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing a path the MLmodel points outside the downloaded model."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise FileNotFoundError(f"model artifact {relative!r} is missing or outside the model folder")
    return path


def _load_downloaded(uri: str, local: Path, map_location: str | torch.device,
                     trust_pickled: bool) -> tuple[nn.Module, Plan]:
    """The loader's choice by the MLmodel's flavors: weights + plan, or (trusted only) a pickled module."""
    import yaml

    from tasks.tracking.pyfunc_model import FORMAT, PLAN_ARTIFACT, WEIGHTS_ARTIFACT, rebuild

    mlmodel_path = local / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_path.read_text(encoding="utf-8")) if mlmodel_path.is_file() else {}
    flavors = mlmodel.get("flavors") or {}
    if ((mlmodel.get("metadata") or {}).get("unetflow") or {}).get("format") == FORMAT:
        artifacts = flavors["python_function"]["artifacts"]
        return rebuild(_inside(local, artifacts[WEIGHTS_ARTIFACT]["path"]),
                       _inside(local, artifacts[PLAN_ARTIFACT]["path"]), map_location)
    if "pytorch" not in flavors:
        raise FileNotFoundError(f"model {uri} carries no unetflow weights and plan: it was not logged by unetflow")
    if not trust_pickled:
        raise PickledModelRefused(
            f"model {uri} is an older unetflow model, a PyTorch module pickled by mlflow.pytorch; loading it runs "
            "whatever code its writer put in it. Pass --trust-pickled-model (load_model(..., "
            "trust_pickled=True)) only if you trust everyone who can write to this registry, or re-log it "
            "as weights + plan.")
    import mlflow.pytorch

    plan_path = next(local.rglob(PLAN_FILE), None)
    if plan_path is None:
        raise FileNotFoundError(f"model {uri} carries no {PLAN_FILE}: it was not logged by unetflow")
    model = mlflow.pytorch.load_model(str(local), map_location=map_location)
    return model.eval(), Plan.read(plan_path)


def _unetflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unetflow")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _signature(plan: Plan) -> Any:
    """Any batch and spatial size (the windows cover it), the plan's channels; ``overlap`` as a parameter."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    spatial = (-1,) * plan.spatial_dims
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, plan.in_channels, *spatial))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *spatial))]),
                          params=ParamSchema([ParamSpec("overlap", "double", 0.25)]))


def log_and_register(model: nn.Module, plan: Plan, output_dir: Path,
                     model_name: str | None) -> tuple[str, str | None]:
    """Log ``model`` as the active run's MLflow model ``model``, as weights + plan; (model URI, registered version).

    The MLflow model is a ``python_function`` model from code (:mod:`tasks.tracking.pyfunc_model`) with the
    artifacts ``weights`` (a state dict) and ``plan`` (``plan.json``) and the unetflow version in its metadata:
    no pickled module or class. With a ``model_name`` the model is registered and the alias ``candidate``
    moved to the new version, which evaluation then scores against the champion; ``None`` only logs it
    (``compare``'s variants). The plan is also written to ``output_dir``, beside the checkpoint.
    """
    import tempfile

    import mlflow.pyfunc
    from mlflow import MlflowClient

    from tasks.tracking import pyfunc_model as package

    plan_file = output_dir / PLAN_FILE
    plan.write(plan_file)
    example = np.zeros((1, plan.in_channels, *plan.patch_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="unetflow-log-") as tmp:
        weights = Path(tmp) / package.WEIGHTS_FILE
        package.save_weights(model, weights)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(package.write_entry_point(Path(tmp))),
            artifacts={package.WEIGHTS_ARTIFACT: str(weights), package.PLAN_ARTIFACT: str(plan_file)},
            signature=_signature(plan), input_example=example, registered_model_name=model_name,
            pip_requirements=["torch", "monai", "mlflow", "unetflow"],
            metadata={"unetflow": {"format": package.FORMAT, "version": _unetflow_version()}},
        )
    version = getattr(info, "registered_model_version", None) if model_name else None
    if version is not None:
        MlflowClient().set_registered_model_alias(model_name, CANDIDATE_ALIAS, str(version))
    return info.model_uri, None if version is None else str(version)
