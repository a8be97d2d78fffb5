"""Prediction overlays an operator can read in the MLflow UI: image, ground truth and prediction side by
side, each panel at least 384 px (a 48-pixel case is upscaled, nearest neighbour), titled, with a legend
naming the classes; a 3D case shows its middle slice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from tasks.tracking.artifacts import log_overlays

LABELS = {"background": 0, "cell": 1, "nucleus": 2}


def masks(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros(shape, dtype=np.int64)
    truth[8:20, 8:20] = 1
    truth[28:40, 4:16] = 2
    prediction = truth.copy()
    prediction[10:22, 8:20] = 1
    return truth, prediction


def test_overlay_figure_is_large_titled_and_has_a_legend_of_class_names() -> None:
    from tasks.tracking.artifacts import PANEL_PX, figure_pixels, overlay_figure

    truth, prediction = masks((48, 40))
    image = np.random.default_rng(0).normal(size=(48, 40)).astype(np.float32)
    figure = overlay_figure(image, truth, prediction, LABELS, "case_007")
    pixels = figure_pixels(figure)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[1] >= 3 * PANEL_PX >= 3 * 384 and pixels.shape[0] >= PANEL_PX
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["cell", "nucleus"]
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[0] == "image case_007" and titles[1] == "ground truth" and titles[2].startswith("prediction")
    # Upscaled by repeating pixels: the image panel shows each input pixel as a block of equal colours.
    panel = figure.axes[0].get_images()[0].get_array()
    assert panel.shape[:2] == (48 * 8, 40 * 8)
    assert np.all(panel[:8, :8] == panel[0, 0])


class TwoClassProbe(torch.nn.Module):
    """A stand-in network: class 1 wherever the image is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_log_overlays_of_a_3d_case_writes_a_readable_png(tmp_path: Path) -> None:
    import mlflow

    from tasks.config import TrackingConfig
    from tasks.tracking.store import configure_tracking

    configure_tracking(TrackingConfig(), tmp_path)
    truth = np.zeros((1, 32, 32, 5), dtype=np.uint8)
    truth[0, 8:20, 8:20, :] = 1
    image = truth.astype(np.float32)
    plan = SimpleNamespace(spatial_dims=3, patch_size=(32, 32, 5), label_names={"background": 0, "cell": 1},
                           num_classes=2)
    with mlflow.start_run() as run:
        log_overlays(TwoClassProbe(), iter([{"image": image, "label": truth, "case_id": "vol_1"}]), plan)
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="overlays/vol_1.png",
                                               dst_path=str(tmp_path / "download"))
    with Image.open(path) as png:
        assert png.width >= 3 * 384 and png.height >= 384
