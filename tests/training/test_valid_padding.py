"""The paper's U-Net (``model.options.padding: valid``) through planning and training.

The plan must pick an input tile the unpadded convs fit and record the output tile the network then
gives; a training step must compare the network's output with the label and weight map of the *same*
voxels (the centre of the patch), for every loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.losses import build_loss
from monai_ext.networks.unet import valid_unet_output_size
from tasks.common.plan import Plan, build_model
from tasks.config import Params, validate_params
from tasks.preprocess.planning import make_plan, network_spec
from tasks.training.data_loader import training_loader
from tasks.training.epochs import run_epoch
from tasks.training.valid_padding import centre_crop


def _params(features: list[int], **train: object) -> Params:
    return validate_params({"model": {"features": features, "norm": None, "options": {"padding": "valid"}},
                            "train": {"amp": False, "grad_clip": 0.0, **train}})


def _plan(shapes: list[tuple[int, int, int]], params: Params) -> Plan:
    manifest = {"labels": {"background": 0, "cell": 1}, "modality": "unknown",
                "cases": [{"case_id": f"c{i}", "shape": list(s), "channels": 1, "files": {}}
                          for i, s in enumerate(shapes)]}
    return make_plan(manifest, params.data, params.preprocess, params.model, params.train, [{"n": 0}])


@pytest.mark.parametrize(("features", "shapes"), [
    ([16, 32, 64, 128], [(96, 96, 1)] * 5),                         # the demo: 96² images, depth 4
    ([4, 8, 16], [(40, 52, 1), (44, 60, 1), (41, 50, 1)]),          # odd and uneven sizes
    ([4, 8], [(20, 24, 9), (22, 26, 11), (18, 30, 7)]),             # 3D
])
def test_a_valid_padding_plan_has_consistent_tiles(features, shapes, tmp_path: Path):
    params = _params(features)
    plan = _plan(shapes, params)
    dims = plan.spatial_dims
    depth = len(features)
    assert plan.output_size is not None and len(plan.output_size) == len(plan.patch_size) == dims
    assert list(plan.output_size) == [valid_unet_output_size(size, depth) for size in plan.patch_size]
    median = np.median(np.array(shapes)[:, :dims], axis=0)
    assert all(out >= min(m, 128) for out, m in zip(plan.output_size, median, strict=True))  # covers a case
    assert plan.valid_margin == tuple((p - o) // 2 for p, o in zip(plan.patch_size, plan.output_size, strict=True))
    model = build_model(plan).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, *plan.patch_size))
    assert tuple(out.shape[2:]) == plan.output_size
    plan.write(tmp_path / "plan.json")
    assert Plan.read(tmp_path / "plan.json") == plan


def test_a_requested_patch_is_the_input_tile_and_must_fit():
    assert _plan([(96, 96, 1)] * 3, _params([4, 8, 16], patch_size=[88, 64])).output_size == (48, 24)
    with pytest.raises(ValueError, match=r"train.patch_size \[66, 66\].*nearest valid input sizes"):
        _plan([(96, 96, 1)] * 3, _params([4, 8, 16], patch_size=[66, 66]))


def test_the_output_tile_goes_with_the_network():
    plan = _plan([(40, 52, 1)] * 3, _params([4, 8, 16]))
    same = validate_params({"model": {"features": [4, 8, 16]}}).model
    assert plan.with_network(network_spec(same)).output_size is None  # same padding: output = input
    with pytest.raises(ValueError, match="needs output_size"):  # a same-padding plan has no valid tiles
        _plan([(40, 52, 1)] * 3, validate_params({"model": {"features": [4, 8, 16]}})).with_network(plan.network)


def test_deep_supervision_with_valid_padding_is_refused_naming_the_keys():
    with pytest.raises(ValueError, match=r"model.options.deep_supervision.*padding 'valid'"):
        validate_params({"model": {"options": {"padding": "valid", "deep_supervision": True}}})


class _Recorder(torch.nn.Module):
    """The network, remembering each batch it was given (to check what the loss compared it with)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images.append(x.detach().clone())
        return self.model(x)


class _SpyLoss(torch.nn.Module):
    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def forward(self, output: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        value = self.loss(output, label, weight)
        self.seen.append((output.detach(), label, weight, value.detach()))
        return value


@pytest.mark.parametrize("loss", ["wce", "ce_dice", "focal"])
def test_a_training_step_crops_label_and_weight_map_to_the_output(loss):
    """Label = image > 0.3 and weight = 1 + image², so after cropping both must match the patch's centre."""
    torch.manual_seed(0)
    params = _params([4, 8, 16], batch_size=2, max_steps_per_epoch=2)
    shapes = [(40, 52), (37, 45), (44, 50), (41, 47)]
    plan = _plan([(*shape, 1) for shape in shapes], params)
    rng = np.random.default_rng(0)
    items = []
    for shape in shapes:
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        items.append({"image": image, "label": (image > 0.3).astype(np.uint8), "weight": 1.0 + image ** 2})
    model = _Recorder(build_model(plan))
    spy = _SpyLoss(build_loss(loss))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    mean = run_epoch(model, training_loader(items, plan, 2, augment=False), spy, optimizer, scaler,
                     torch.device("cpu"), params.train, use_weights=True)
    assert math.isfinite(mean) and len(spy.seen) == 2
    for image, (output, label, weight, value) in zip(model.images, spy.seen, strict=True):
        assert tuple(image.shape[2:]) == plan.patch_size
        assert tuple(output.shape[2:]) == tuple(label.shape[2:]) == tuple(weight.shape[2:]) == plan.output_size
        centre = centre_crop(image, plan.output_size)
        assert torch.equal(label, (centre > 0.3).long())
        torch.testing.assert_close(weight, 1.0 + centre ** 2)
        assert torch.isfinite(value)
