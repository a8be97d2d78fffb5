"""The registered model as *data*: a state dict and a plan, served by a class that lives in unetflow.

A registry is writable by more people than the inference hosts trust with code, so a model version holds
no executable content of ours: ``artifacts/weights.pt`` is a plain ``state_dict`` (read with
``torch.load(weights_only=True)``, whose unpickler admits tensors and containers only) and
``artifacts/plan.json`` is JSON. The network is rebuilt from the plan by :func:`tasks.common.plan.build_model`,
so any input size works (no traced or exported program) and the code that runs is the installed unetflow.

For MLflow (the UI, ``mlflow models serve``, ``mlflow.pyfunc.load_model``) the version is a ``python_function``
model logged *from code*: the model folder carries the few lines of :data:`ENTRY_POINT`, which import
:class:`UnetflowSegmenter` from the installed package — MLflow runs that file instead of unpickling a
``python_model.pkl``. unetflow's own loader (``model_package.load_model``) runs neither: it reads the two
artifacts itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from torch import nn

from tasks.common.plan import Plan, build_model

WEIGHTS_ARTIFACT = "weights"
PLAN_ARTIFACT = "plan"
WEIGHTS_FILE = "weights.pt"
FORMAT = "weights+plan/1"  # MLmodel metadata ``unetflow.format``: how load_model knows the version is data only
ENTRY_FILE = "unetflow_pyfunc.py"
ENTRY_POINT = '''"""unetflow's MLflow entry point: the class is the installed package's, the model its artifacts."""
import mlflow.models

from tasks.tracking.pyfunc_model import UnetflowSegmenter

mlflow.models.set_model(UnetflowSegmenter())
'''


def write_entry_point(folder: Path) -> Path:
    """The models-from-code file MLflow copies into the model: a reference to the class, nothing more."""
    path = folder / ENTRY_FILE
    path.write_text(ENTRY_POINT, encoding="utf-8")
    return path


def save_weights(model: nn.Module, path: Path) -> None:
    """Tensors only (moved to the CPU), so the file loads with ``weights_only=True`` on any host."""
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, path)


def rebuild(weights: Path, plan_path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Plan]:
    """(model in eval mode on ``map_location``, plan) from the two artifacts, unpickling nothing executable."""
    plan = Plan.read(plan_path)
    model = build_model(plan)
    model.load_state_dict(torch.load(weights, map_location=map_location, weights_only=True))
    return model.to(map_location).eval(), plan


class UnetflowSegmenter(mlflow.pyfunc.PythonModel):
    """MLflow's view of a unetflow model: the plan's network and sliding windows over a normalised array.

    Stateless until ``load_context``, which fills it from the version's artifacts; so even where MLflow
    pickles an instance, the pickle is a reference to this class and an empty ``__dict__``.
    """

    def load_context(self, context: Any) -> None:
        self.model, self.plan = rebuild(Path(context.artifacts[WEIGHTS_ARTIFACT]),
                                        Path(context.artifacts[PLAN_ARTIFACT]))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Label maps (``uint8``) for ``N×C×…`` (or one ``C×…``) images normalised as the plan says.

        The windows are those of batch inference and evaluation (:func:`predict_native_labels`: the plan's
        patch size, Gaussian blending, no TTA), so any spatial size is accepted; ``params`` may set
        ``overlap``. (``np.ndarray`` is a hint MLflow accepts without deriving a schema: the logged
        signature, with its free spatial axes, is the schema.)
        """
        from tasks.inference.native_grid import predict_native_labels

        images = np.asarray(model_input, dtype=np.float32)
        single = images.ndim == self.plan.spatial_dims + 1
        batch = images[None] if single else images
        if batch.ndim != self.plan.spatial_dims + 2 or batch.shape[1] != self.plan.in_channels:
            raise ValueError(f"expected N×{self.plan.in_channels}×{self.plan.spatial_dims} spatial axes, "
                             f"got shape {images.shape}")
        overlap = float((params or {}).get("overlap", 0.25))
        device = next(self.model.parameters()).device
        labels = np.stack([predict_native_labels(self.model, self.plan, image, None, overlap, device)
                           for image in batch])
        return labels[0] if single else labels
