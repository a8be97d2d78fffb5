"""A trained model travels as *network + plan*: the weights and the preprocessing they expect.

Three forms, one loader: a local checkpoint (``checkpoint.pt``, read with ``weights_only=True``),
an MLflow run (``runs:/<id>/model``) or a registry URI (``models:/name@champion``). MLflow models
are saved pickled rather than with ``torch.export`` (MLflow 3.14+'s default), because an exported
program fixes the input shape to the logged example and inference must take any size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_ext.networks import build_network

PLAN_FILE = "plan.json"


def build_model(plan: dict[str, Any]) -> nn.Module:
    network = dict(plan["network"])
    name = network.pop("name")
    return build_network(name, plan["spatial_dims"], plan["in_channels"], plan["num_classes"], **network)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during ``torch.save`` leaves the previous checkpoint intact."""
    from tasks.common.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(uri: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, plan) from a checkpoint path, ``runs:/`` or ``models:/`` URI."""
    if "://" not in uri and uri.split(":", 1)[0] not in ("runs", "models"):
        checkpoint = load_checkpoint(Path(uri), map_location)
        model = build_model(checkpoint["plan"])
        model.load_state_dict(checkpoint["model"])
        return model.eval(), checkpoint["plan"]
    import mlflow.artifacts
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(uri, map_location=map_location)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    plan_path = next(local.rglob(PLAN_FILE), None)
    if plan_path is None:
        raise FileNotFoundError(f"model {uri} carries no {PLAN_FILE}: it was not logged by unetflow")
    return model.eval(), json.loads(plan_path.read_text(encoding="utf-8"))
