"""Behaviour shared by every registered network, over variant x 2D/3D x deep_supervision x cgm."""

from __future__ import annotations

import math

import pytest
import torch
from networks_cases import BATCH, IN_CH, NAMES, OUT_CH, all_outputs, case_id, cases, make, spatial

from monai_ext.networks import NETWORKS, NetworkOutput, available_networks, build_network

CASES = cases()


def test_registry_lists_every_variant() -> None:
    assert available_networks() == sorted(NETWORKS) == NAMES


def test_unknown_name_and_option_are_refused() -> None:
    with pytest.raises(ValueError, match="known networks: .*unet"):
        build_network("vnet", 2, 1, 2)
    with pytest.raises(ValueError, match="known options: .*features"):
        build_network("unet", 2, 1, 2, featurs=(4, 8))


def test_lead_pipeline_call() -> None:
    net = build_network("unet", 2, 1, 2, features=[16, 32, 64, 128], norm="batch")
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_training_outputs_and_gradients(case: tuple[str, int, bool, bool]) -> None:
    """Output convention in training + every parameter receives a gradient."""
    name, dims, ds, cgm = case
    model = make(name, dims, ds, cgm).train()
    size = spatial(name, dims)
    out = model(torch.randn(BATCH, IN_CH, *size))
    if ds or cgm:
        assert isinstance(out, NetworkOutput)
        assert out.logits.shape == (BATCH, OUT_CH, *size)
        assert (out.class_logits is not None) == cgm
        if cgm:
            assert out.class_logits.shape == (BATCH, 2)
        assert bool(out.aux_logits) == ds
        prev = math.inf
        for aux in out.aux_logits:  # native resolution, ordered high -> low
            assert aux.shape[:2] == (BATCH, OUT_CH)
            res = math.prod(aux.shape[2:])
            assert res <= prev
            prev = res
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (BATCH, OUT_CH, *size)
    sum(o.float().square().mean() for o in all_outputs(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eval_output_and_state_dict_roundtrip(case: tuple[str, int, bool, bool]) -> None:
    """Eval returns one tensor at input size; a reloaded state_dict reproduces it exactly."""
    name, dims, ds, cgm = case
    model = make(name, dims, ds, cgm, seed=0).eval()
    x = torch.randn(1, IN_CH, *spatial(name, dims))
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, OUT_CH, *x.shape[2:])
    other = make(name, dims, ds, cgm, seed=1).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), y)


@pytest.mark.parametrize("name", NAMES)
def test_odd_input_sizes_are_padded_and_cropped(name: str) -> None:
    """Same-padding nets accept any size: padded to a multiple of size_divisor, cropped back."""
    model = make(name, 2, ds=True).train()
    size = (37, 41) if name == "eff_unet" else (19, 21)
    out = model(torch.randn(2, IN_CH, *size))
    assert out.logits.shape == (2, OUT_CH, *size)
    if name != "unetpp":
        # native-resolution aux heads keep ceil(size / 2**k)
        assert tuple(out.aux_logits[0].shape[2:]) == tuple(math.ceil(s / 2) for s in size)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, IN_CH, *size)).shape == (1, OUT_CH, *size)


def test_aux_full_resolution_option() -> None:
    model = make("unet3p", 2, ds=True, aux_resolution="full").train()
    out = model(torch.randn(2, IN_CH, 19, 21))
    assert all(a.shape == (2, OUT_CH, 19, 21) for a in out.aux_logits)
    assert len(out.aux_logits) == 3  # decoder stages 1, 2 and the bottleneck


def test_wrong_channels_or_dims_refused() -> None:
    model = make("unet", 2)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="spatial dims"):
        model(torch.zeros(1, 1, 16, 16, 16))


def test_cgm_gate_suppresses_foreground_in_eval_only() -> None:
    model = make("unet", 2, cgm=True, cgm_gate=True, cgm_gate_threshold=1.1).eval()  # threshold > 1: always gated
    with torch.no_grad():
        y = model(torch.randn(1, IN_CH, 16, 16))
    assert (y.argmax(1) == 0).all()
    out = model.train()(torch.randn(2, IN_CH, 16, 16))
    assert isinstance(out, NetworkOutput) and out.class_logits is not None
    with pytest.raises(ValueError, match="cgm=True"):
        build_network("unet", 2, 1, 2, cgm_gate=True)
