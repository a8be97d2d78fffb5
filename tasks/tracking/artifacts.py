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


PANEL_PX = 384  # the least a panel is drawn at: a 48-pixel case is upscaled 8× (nearest neighbour)
_MAX_PANEL_PX = 1024
_ALPHA = 0.5


def class_colours(num_classes: int) -> np.ndarray:
    """One RGB colour (0-1) per class index, background (0) black: the same class has the same colour in
    every overlay and legend."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
    return np.array([(0.0, 0.0, 0.0)] + [cmap((c - 1) % cmap.N)[:3] for c in range(1, num_classes)])


def _grey(image: np.ndarray) -> np.ndarray:
    """The image scaled to 0-1 between its 0.5th and 99.5th percentiles, so one bright voxel does not
    leave the rest black."""
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip((image - low) / max(float(high - low), 1e-8), 0.0, 1.0)


def _paint(grey: np.ndarray, labels: np.ndarray, colours: np.ndarray, scale: int) -> np.ndarray:
    """RGB uint8: ``labels`` > 0 blended in their class colour over ``grey``, upscaled ``scale``× by
    repeating pixels (nearest neighbour: the mask edges stay the model's, not an interpolation)."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    mask = labels > 0
    rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * colours[np.clip(labels[mask], 0, len(colours) - 1)]
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return (rgb * 255).round().astype(np.uint8)


def _dice(truth: np.ndarray, prediction: np.ndarray, classes: list[int]) -> float:
    """Mean Dice over the foreground classes present in either map (1.0 when none is)."""
    scores = [2 * np.sum((truth == c) & (prediction == c)) / denominator for c in classes
              if (denominator := np.sum(truth == c) + np.sum(prediction == c)) > 0]
    return float(np.mean(scores)) if scores else 1.0


def overlay_figure(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, label_names: dict[str, int],
                   title: str = "") -> Any:
    """A matplotlib ``Figure``: image, ground truth and prediction side by side, each panel at least
    ``PANEL_PX`` pixels, titled, with a colour legend naming the classes (``plan.label_names``) below.
    Built without pyplot, so nothing global holds it once the caller drops it."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = sorted((index, name) for name, index in label_names.items() if index > 0)
    colours = class_colours(max([len(label_names), int(truth.max()) + 1, int(prediction.max()) + 1]))
    longest = max(image.shape)
    scale = -(-PANEL_PX // longest) if longest < PANEL_PX else 1
    panel = min(longest * scale, max(_MAX_PANEL_PX, PANEL_PX))
    grey = _grey(image.astype(np.float32))
    dice = _dice(truth, prediction, [index for index, _ in classes])
    panels = ((f"image {title}".strip(), _paint(grey, np.zeros_like(truth), colours, scale)),
              ("ground truth", _paint(grey, truth, colours, scale)),
              (f"prediction (Dice {dice:.3f})", _paint(grey, prediction, colours, scale)))
    gap, top, rows = 16, 40, -(-max(len(classes), 1) // 6)
    bottom = 44 + 24 * rows
    width, height = 3 * panel + 4 * gap, panel + top + bottom
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    for i, (name, pixels) in enumerate(panels):
        axis = figure.add_axes(((gap + i * (panel + gap)) / width, bottom / height, panel / width, panel / height))
        axis.imshow(pixels, interpolation="nearest")
        axis.set_title(name, fontsize=13)
        axis.set_axis_off()
    handles = [Patch(facecolor=colours[index], edgecolor="black", label=name) for index, name in classes]
    figure.legend(handles=handles, loc="lower center", ncol=min(max(len(handles), 1), 6), fontsize=12,
                  frameon=False, title="classes", title_fontsize=11)
    return figure


def figure_pixels(figure: Any) -> np.ndarray:
    """The figure rendered by Agg, as an RGB uint8 array of exactly its pixel size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_overlays(model: nn.Module, items: Iterable[dict], plan: Plan, prefix: str = "overlays") -> None:
    """One PNG per case (the middle slice in 3D) so predictions can be eyeballed in the UI: image, ground
    truth and prediction side by side with a legend (``overlay_figure``). ``items`` may be a generator that
    opens each case on demand (``iter_cases``): only one case, and one figure, is held at a time."""
    import mlflow

    from tasks.inference.sliding_window import predict_labels

    for item in items:
        prediction = predict_labels(model, item["image"], plan.patch_size, num_classes=plan.num_classes)
        image, truth, title = item["image"][0], item["label"][0], str(item["case_id"])
        if plan.spatial_dims == 3:
            middle = image.shape[-1] // 2
            image, truth, prediction = image[..., middle], truth[..., middle], prediction[..., middle]
            title += f" (slice {middle + 1}/{item['image'].shape[-1]})"
        figure = overlay_figure(image, truth.astype(np.int64), prediction.astype(np.int64), plan.label_names, title)
        mlflow.log_image(figure_pixels(figure), f"{prefix}/{item['case_id']}.png")


def comparison_chart(rows: list[dict]) -> Any:
    """A bar chart of a ``compare`` table: test Dice per variant (0-1) beside seconds per epoch, the
    trade-off the table alone makes the reader work out."""
    from matplotlib.figure import Figure

    variants = [str(r["variant"]) for r in rows]
    figure = Figure(figsize=(4 + 1.2 * len(rows), 4.5), dpi=100, layout="constrained")
    dice_axis, time_axis = figure.subplots(1, 2)
    for axis, key, label in ((dice_axis, "test_dice", "test Dice"),
                             (time_axis, "seconds_per_epoch", "seconds / epoch")):
        values = [float(r[key]) for r in rows]
        bars = axis.bar(variants, values, color=[f"C{i}" for i in range(len(rows))])
        axis.bar_label(bars, fmt="%.3f" if key == "test_dice" else "%.1f")
        axis.set_title(label)
        axis.tick_params(axis="x", labelrotation=30)
    dice_axis.set_ylim(0, 1.05)
    figure.suptitle("compare: variants on the same split, budget and seed")
    return figure


def log_comparison_chart(rows: list[dict], artifact_file: str = "comparison.png") -> Any:
    """``comparison_chart`` into the active (parent) run; returns the figure so the caller can save it too."""
    import mlflow

    figure = comparison_chart(rows)
    mlflow.log_figure(figure, artifact_file)
    return figure
