"""What a run shows in the MLflow UI besides numbers: tags, a learning curve, prediction overlays."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tasks.common.plan import Plan
from tasks.config import Params


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             encoding="utf-8", timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _dvc_data_hash(root: Path) -> str:
    """The md5 that ``data.dvc`` records for the raw inbox, i.e. which data version was used."""
    import yaml

    path = root / "data.dvc"
    if not path.exists():
        return "untracked"
    outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def tracking_tags(params: Params, root: Path) -> dict[str, str]:
    return {"git_commit": _git_commit(root), "dvc_data_md5": _dvc_data_hash(root),
            "variant": params.model.name, "unetflow.stage": "train"}


def _figure_to_mlflow(figure: Any, artifact_file: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_learning_curve(history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] + 1 for h in history]
    axis.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    val = [(h["epoch"] + 1, h["val_dice"]) for h in history if "val_dice" in h]
    if val:
        twin = axis.twinx()
        twin.plot(*zip(*val, strict=True), color="tab:orange", label="val Dice")
        twin.set_ylabel("val Dice")
        twin.set_ylim(0, 1)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    figure.legend(loc="upper center")
    _figure_to_mlflow(figure, "plots/learning_curve.png")


def overlay_image(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB uint8: the image in grey, ground truth outlined green, prediction filled red."""
    from scipy import ndimage

    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[prediction > 0] = 0.6 * rgb[prediction > 0] + 0.4 * np.array([1.0, 0.0, 0.0])
    edge = (truth > 0) & ~ndimage.binary_erosion(truth > 0)
    rgb[edge] = [0.0, 1.0, 0.0]
    return (rgb * 255).astype(np.uint8)


def log_overlays(model: nn.Module, items: Iterable[dict], plan: Plan, prefix: str = "overlays") -> None:
    """One PNG per case (the middle slice in 3D) so predictions can be eyeballed in the UI. ``items`` may
    be a generator that opens each case on demand (``iter_cases``): only one case is held at a time."""
    import mlflow

    from tasks.inference.sliding_window import predict_labels

    for item in items:
        prediction = predict_labels(model, item["image"], plan.patch_size)
        image, truth = item["image"][0], item["label"][0]
        if plan.spatial_dims == 3:
            middle = image.shape[-1] // 2
            image, truth, prediction = image[..., middle], truth[..., middle], prediction[..., middle]
        mlflow.log_image(overlay_image(image, truth, prediction), f"{prefix}/{item['case_id']}.png")


