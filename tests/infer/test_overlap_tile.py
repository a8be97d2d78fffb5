"""Overlap-tile inference for valid-padding networks: any image size in, a prediction of that size out.

The exact check uses a network whose output is a known local function of its input (the mean over the
margin's neighbourhood, cropped like a valid U-Net), so the stitched windows must equal that function
applied once to the whole mirror-padded image: any misplaced tile, wrong margin or unmirrored border
shows up as a difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_ext.networks import build_network
from monai_ext.networks.base import SegmentationNetwork
from monai_ext.networks.unet import valid_unet_input_size, valid_unet_output_size
from tasks.inference.sliding_window import WindowSettings, predict_labels, predict_windows

GAIN = 3.0


def _local_mean(x: torch.Tensor, margin: int) -> torch.Tensor:
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return pool(x, kernel_size=2 * margin + 1, stride=1)


class LocalMeanNet(SegmentationNetwork):
    """Valid padding by construction: foreground logit = GAIN · mean of the (2·margin+1)^d neighbourhood.

    ``depth`` and ``padding`` follow the ``unet`` attributes inference reads; the margin is a depth-``depth``
    valid U-Net's, so the same input tiles fit. With ``cgm`` it has a real CGM head (presence from the mean).
    """

    padding = "valid"
    pads_input = False

    def __init__(self, spatial_dims: int, depth: int = 2, cgm: bool = False) -> None:
        super().__init__(spatial_dims, 1, 2, cgm=cgm, cgm_dropout=0.0)
        self.depth = depth
        tile = valid_unet_input_size(1, depth)
        self.margin = (tile - valid_unet_output_size(tile, depth)) // 2
        self._init_cgm(1)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        local = _local_mean(x, self.margin)
        return torch.cat([-GAIN * local, GAIN * local], dim=1), [], x


def _direct(image: np.ndarray, margin: int) -> torch.Tensor:
    """The whole image at once: mirrored by the margin, the local function, softmax."""
    padded = np.pad(image, [(0, 0)] + [(margin, margin)] * (image.ndim - 1), mode="reflect")
    local = _local_mean(torch.from_numpy(padded)[None], margin)[0]
    return torch.softmax(torch.cat([-GAIN * local, GAIN * local]), dim=0)


@pytest.mark.parametrize(("shape", "roi", "overlap", "mirror"), [
    ((1, 37, 23), (26, 26), 0.25, False),     # several tiles per axis, the last flush with the end
    ((1, 41, 30), (34, 26), 0.5, True),       # other tile per axis, more overlap, flips (TTA) too
    ((1, 7, 5), (26, 26), 0.25, False),       # smaller than one output tile: mirrored past its length
    ((1, 9, 13, 6), (20, 22, 20), 0.25, False),   # 3D
])
def test_stitched_tiles_equal_the_whole_image_computed_at_once(shape, roi, overlap, mirror):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    model = LocalMeanNet(len(shape) - 1)
    settings = WindowSettings(roi_size=roi, overlap=overlap, sw_batch_size=3, mirror=mirror, amp=False)
    probabilities = predict_windows(model, image, settings, num_classes=2).probabilities
    assert probabilities.shape == (2, *shape[1:])
    torch.testing.assert_close(probabilities, _direct(image, model.margin), rtol=0, atol=1e-5)


def test_cgm_presence_of_a_valid_network_is_a_map_of_the_image_size():
    image = np.random.default_rng(1).normal(size=(1, 30, 19)).astype(np.float32)
    prediction = predict_windows(LocalMeanNet(2, cgm=True), image, WindowSettings(roi_size=(26, 26), amp=False),
                                 num_classes=2)
    assert prediction.probabilities.shape == (2, 30, 19)
    assert prediction.presence is not None and prediction.presence.shape == (1, 30, 19)
    assert len(prediction.window_probabilities) == 4 * 3  # output tiles of 10, step 7: x 0 7 14 20, y 0 7 9


@pytest.mark.parametrize(("dims", "features", "shape"), [
    (2, (4, 8, 16), (1, 37, 53)),       # odd, larger than the output tile (48) on one axis
    (2, (4, 8, 16), (1, 101, 9)),
    (3, (4, 8), (1, 9, 23, 31)),
])
def test_a_valid_unet_gives_a_mask_of_the_inputs_shape(dims, features, shape):
    torch.manual_seed(0)
    model = build_network("unet", dims, 1, 2, features=features, norm=None, padding="valid")
    tile = valid_unet_input_size(12, len(features))
    image = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    labels = predict_labels(model, image, (tile,) * dims, overlap=0.25, sw_batch_size=2, num_classes=2)
    assert labels.shape == shape[1:]
    probabilities = predict_windows(model, image, WindowSettings(roi_size=(tile,) * dims, amp=False),
                                    num_classes=2).probabilities
    torch.testing.assert_close(probabilities.sum(0), torch.ones(shape[1:]))


def test_a_window_that_is_no_input_tile_is_refused_with_the_nearest_sizes():
    model = build_network("unet", 2, 1, 2, features=(4, 8, 16), norm=None, padding="valid")
    with pytest.raises(ValueError, match="not an input tile.*nearest valid input sizes"):
        # 66 - 4 = 62: 31 after pooling
        predict_labels(model, np.zeros((1, 40, 40), np.float32), (66, 66), num_classes=2)
