"""A trained model travels as *network + plan*: the weights and the preprocessing they expect.

It is written once per training run (``log_and_register``: an MLflow model with the plan beside
the weights, registered with the alias ``candidate``) and read in three forms by one loader: a local
checkpoint (``checkpoint.pt``, read with ``weights_only=True``), an MLflow run (``runs:/<id>/model``)
or a registry URI (``models:/name@champion``). MLflow models are saved pickled rather than with
``torch.export`` (MLflow 3.14+'s default), because an exported program fixes the input shape to
the logged example and inference must take any size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.plan import PLAN_FILE, Plan, build_model
from tasks.tracking.registry import CANDIDATE_ALIAS


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during ``torch.save`` leaves the previous checkpoint intact."""
    from tasks.common.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(uri: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Plan]:
    """(model in eval mode, plan) from a checkpoint path, ``runs:/`` or ``models:/`` URI."""
    if "://" not in uri and uri.split(":", 1)[0] not in ("runs", "models"):
        checkpoint = load_checkpoint(Path(uri), map_location)
        plan = Plan.model_validate(checkpoint["plan"])
        model = build_model(plan)
        model.load_state_dict(checkpoint["model"])
        return model.eval(), plan
    import mlflow.artifacts
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(uri, map_location=map_location)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    plan_path = next(local.rglob(PLAN_FILE), None)
    if plan_path is None:
        raise FileNotFoundError(f"model {uri} carries no {PLAN_FILE}: it was not logged by unetflow")
    return model.eval(), Plan.read(plan_path)


def log_and_register(model: nn.Module, plan: Plan, output_dir: Path,
                     model_name: str | None) -> tuple[str, str | None]:
    """Log ``model`` as the active run's MLflow model ``model``, with its plan; (model URI, registered version).

    With a ``model_name`` the model is registered and the alias ``candidate`` moved to the new version,
    which evaluation then scores against the champion; ``None`` only logs it (``compare``'s variants).
    The plan is written to ``output_dir`` first because MLflow packs extra files from disk.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    plan_file = output_dir / PLAN_FILE
    plan.write(plan_file)
    example = np.zeros((1, plan.in_channels, *plan.patch_size), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", extra_files=[str(plan_file)],
        input_example=example, registered_model_name=model_name, pip_requirements=["torch", "monai", "unetflow"],
    )
    version = getattr(info, "registered_model_version", None) if model_name else None
    if version is not None:
        MlflowClient().set_registered_model_alias(model_name, CANDIDATE_ALIAS, str(version))
    return info.model_uri, None if version is None else str(version)
