"""UNet++ through batch inference: pruned to every level (fast mode) and with its heads averaged (accurate mode).

A deeply supervised UNet++ whose heads disagree on purpose (each head's two class weights are ± a
zero-mean random vector, so every head draws its own mask), one image that is exactly one window: the mask
``tasks.inference`` writes at level L must be head L's argmax, and with ``unetpp_heads: mean`` the argmax
of the heads' mean probability. Models that lack the heads are refused naming the key.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.networks import build_network
from tasks.common.plan import NetworkSpec
from tasks.inference.batch import run_batch
from tests.infer.helpers import plan_for, save_nifti, settings

FEATURES = (8, 16, 32)


def _unetpp(deep_supervision: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_network("unetpp", 2, 1, 2, features=FEATURES, deep_supervision=deep_supervision).eval()
    with torch.no_grad():
        for head in model.heads.values():
            w = torch.randn_like(head.conv.weight[0])
            head.conv.weight[0], head.conv.weight[1] = w - w.mean(), w.mean() - w
            head.conv.bias.zero_()
    return model


def _plan(name: str = "unetpp", deep_supervision: bool = True):
    options = {"deep_supervision": True} if deep_supervision else {}
    return plan_for(2, [24, 24]).with_network(NetworkSpec(name=name, features=FEATURES, options=options))


def _mask(folder) -> np.ndarray:
    return np.asanyarray(nib.load(str(folder / "case.nii.gz")).dataobj)


def test_pruned_unetpp_infers_at_every_level_and_with_mean_heads(tmp_path):
    image = np.random.default_rng(0).normal(size=(24, 24)).astype(np.float32)
    save_nifti(image, tmp_path / "in" / "case.nii.gz")
    model, plan = _unetpp(), _plan()
    heads = model.forward_heads(torch.from_numpy(image)[None, None])
    expected = {f"L{level}": heads[level - 1].argmax(1)[0].numpy() for level in (1, 2)}
    expected["mean"] = torch.stack([h.softmax(1) for h in heads]).mean(0).argmax(1)[0].numpy()
    assert len({m.tobytes() for m in expected.values()}) == 3  # the modes really differ on this image

    for mode, wanted in expected.items():
        changes = {"unetpp_heads": "mean"} if mode == "mean" else {"prune_level": int(mode[1:])}
        [outcome] = run_batch(tmp_path / "in", tmp_path / mode, settings(**changes), model, plan)
        assert outcome.status == "done", outcome.error
        np.testing.assert_array_equal(_mask(tmp_path / mode), wanted.astype(np.uint8), err_msg=mode)
    assert model.prune_level is None and model.head_mode == "last"  # the shared model itself is untouched
    run_batch(tmp_path / "in", tmp_path / "default", settings(), model, plan)
    np.testing.assert_array_equal(_mask(tmp_path / "default"), expected["L2"].astype(np.uint8))


@pytest.mark.parametrize(
    ("model", "plan", "changes", "named"),
    [
        (lambda: build_network("unet", 2, 1, 2, features=FEATURES).eval(), lambda: _plan("unet", False),
         {"prune_level": 1}, ["infer.prune_level", "plan.network.name"]),
        (lambda: _unetpp(False), lambda: _plan(deep_supervision=False), {"prune_level": 1},
         ["infer.prune_level", "plan.network.options.deep_supervision"]),
        (lambda: _unetpp(False), lambda: _plan(deep_supervision=False), {"unetpp_heads": "mean"},
         ["infer.unetpp_heads", "plan.network.options.deep_supervision"]),
        (_unetpp, _plan, {"prune_level": 3}, ["infer.prune_level", "plan.network.features"]),
    ],
)
def test_a_model_without_the_heads_is_refused_naming_the_key(tmp_path, model, plan, changes, named):
    save_nifti(np.zeros((24, 24), np.float32), tmp_path / "in" / "case.nii.gz")
    [outcome] = run_batch(tmp_path / "in", tmp_path / "out", settings(**changes), model(), plan())
    assert outcome.status == "failed"
    for key in named:
        assert key in outcome.error, (key, outcome.error)
    assert not (tmp_path / "out" / "case.nii.gz").exists()
