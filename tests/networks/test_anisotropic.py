"""Anisotropic topology (issue #15): per-level ``strides`` and ``kernel_sizes`` per axis, for every variant.

Thick-slice CT/MR (e.g. 0.7 x 0.7 x 5 mm) wants the in-plane axes pooled before z and no convolution
across slices at the fine levels, as nnU-Net plans it. Checked here: every variant builds, trains
(forward + backward) and keeps the input's shape with such a plan in 2D and 3D; a kernel of 1 on an axis
really keeps that axis apart; awkward sizes are padded per axis; the defaults are exactly today's
networks; bad plans are refused naming the option; the valid U-Net's size arithmetic works per axis.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
import torch
from networks_cases import BATCH, IN_CH, NAMES, OUT_CH, TINY, all_outputs, make, n_params
from torch import nn

from monai_ext.networks import (
    NetworkConfigError,
    NetworkOutput,
    build_network,
    check_network_config,
    network_topology_lengths,
    valid_unet_input_size,
    valid_unet_output_size,
)

#: thick-slice plans: z (the last axis) pooled only at the deepest step, no conv across z at the fine levels
PLAN: dict[int, dict[str, list[tuple[int, ...]]]] = {
    3: {"strides": [(2, 2, 1), (2, 2, 1), (2, 2, 2)], "kernel_sizes": [(3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3)]},
    2: {"strides": [(2, 1), (2, 1), (2, 2)], "kernel_sizes": [(3, 1), (3, 1), (3, 3), (3, 3)]},
}
#: eff_unet: five backbone downsamplings, six resolution levels (full .. 1/32)
EFF_PLAN: dict[int, dict[str, list[tuple[int, ...]]]] = {
    3: {"strides": [(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 1), (2, 2, 2)],
        "kernel_sizes": [(3, 3, 1), (3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)]},
    2: {"strides": [(2, 1), (2, 1), (2, 2), (2, 1), (2, 2)],
        "kernel_sizes": [(3, 1), (3, 1), (3, 1), (3, 3), (3, 3), (3, 3)]},
}
#: inputs that fit the plans exactly (the last axis is the thick one)
SIZE = {3: (16, 16, 8), 2: (16, 8)}
EFF_SIZE = {3: (32, 32, 8), 2: (32, 8)}


def plan(name: str, dims: int) -> dict[str, list[tuple[int, ...]]]:
    return (EFF_PLAN if name == "eff_unet" else PLAN)[dims]


def size(name: str, dims: int) -> tuple[int, ...]:
    return (EFF_SIZE if name == "eff_unet" else SIZE)[dims]


def level_scales(strides: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    out = [(1,) * len(strides[0])]
    for stride in strides:
        out.append(tuple(a * s for a, s in zip(out[-1], stride, strict=True)))
    return out


def convs(model: nn.Module) -> list[nn.modules.conv._ConvNd]:
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


# ---------------------------------------------------------------- every variant trains with a thick-slice plan
CASES = [(name, dims, ds, cgm) for name in NAMES for dims in (2, 3) for ds, cgm in ((False, False), (True, True))]
CASES += [(name, 3, True, False) for name in ("unet3p", "unetpp", "unet")]  # DS alone, full-resolution heads below


@pytest.mark.parametrize(("name", "dims", "ds", "cgm"), CASES,
                         ids=[f"{n}-{d}d" + ("-ds" if ds else "") + ("-cgm" if c else "") for n, d, ds, c in CASES])
def test_every_variant_trains_with_anisotropic_strides_and_kernels(name: str, dims: int, ds: bool, cgm: bool) -> None:
    model = make(name, dims, ds, cgm, **plan(name, dims)).train()
    shape = size(name, dims)
    out = model(torch.randn(BATCH, IN_CH, *shape))
    logits = out.logits if isinstance(out, NetworkOutput) else out
    assert logits.shape == (BATCH, OUT_CH, *shape)
    if ds:  # native heads lie at their level's per-axis resolution (UNet++: all at full resolution)
        scales = level_scales(plan(name, dims)["strides"])
        assert out.aux_logits
        for aux in out.aux_logits:
            factors = [s // a for s, a in zip(shape, aux.shape[2:], strict=True)]
            assert tuple(factors) in scales, (tuple(aux.shape), scales)
            assert all(a * f == s for a, f, s in zip(aux.shape[2:], factors, shape, strict=True))
    assert (isinstance(out, NetworkOutput) and out.class_logits is not None) == cgm
    sum(o.float().square().mean() for o in all_outputs(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", ["unet3p", "unet", "res_unet_monai"])
def test_full_resolution_heads_follow_the_per_axis_scale(name: str) -> None:
    model = make(name, 3, ds=True, aux_resolution="full", **PLAN[3]).train()
    out = model(torch.randn(BATCH, IN_CH, 30, 27, 7))
    assert out.logits.shape == (BATCH, OUT_CH, 30, 27, 7)
    assert [tuple(a.shape[2:]) for a in out.aux_logits] == [(30, 27, 7)] * len(out.aux_logits)


@pytest.mark.parametrize("name", NAMES)
def test_awkward_sizes_are_padded_per_axis(name: str) -> None:
    """Each axis is padded to a multiple of its own divisor (the product of its strides) and cropped back."""
    dims_plan = plan(name, 3)
    model = make(name, 3, ds=True, cgm=True, **dims_plan).train()
    wanted = level_scales(dims_plan["strides"])[-1]
    assert model.size_divisors == wanted and model.size_divisor == math.lcm(*wanted)
    base = size(name, 3)
    # a z already fitting its small divisor stays unpadded; x and y are awkward
    z_fits = (base[0] - 3, base[1] - 5, wanted[2] * 3)
    assert tuple(model._pad(torch.zeros(1, IN_CH, *z_fits)).shape[2:]) == (base[0], base[1], wanted[2] * 3)
    odd = (base[0] - 3, base[1] - 5, base[2] - 1)
    out = model(torch.randn(2, IN_CH, *odd))
    assert out.logits.shape == (2, OUT_CH, *odd)
    assert out.class_logits.shape == (2, 2)


def test_pruned_unetpp_follows_the_plan() -> None:
    """Pruned to head L, UNet++ equals the full network's head L, and its CGM (the encoder finished with
    the deeper levels' own strides) classifies exactly as the full network does."""
    model = make("unetpp", 3, ds=True, cgm=True, **PLAN[3]).eval()
    x = torch.randn(2, IN_CH, 13, 11, 7)
    heads = model.forward_heads(x)
    _, full_class = model.prune(None).forward_with_class(x)
    with torch.no_grad():
        for level in (1, 2, 3):
            logits, class_logits = model.prune(level).forward_with_class(x)
            torch.testing.assert_close(logits, heads[level - 1], rtol=0, atol=1e-6)
            torch.testing.assert_close(class_logits, full_class, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- kernel 1: no mixing across that axis
@pytest.mark.parametrize("name", NAMES)
def test_kernel_one_everywhere_means_no_conv_spans_that_axis(name: str) -> None:
    """z never pooled, kernel 1 on z at every level: no convolution (transposed ones included) spans z."""
    n_strides = 5 if name == "eff_unet" else 3
    model = make(name, 3, ds=True, cgm=True, strides=[(2, 2, 1)] * n_strides,
                 kernel_sizes=[(3, 3, 1)] * (n_strides + 1))
    assert model.size_divisors[2] == 1
    spans = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and m.kernel_size[2] != 1]
    assert not spans, spans
    anisotropic = [m for m in convs(model) if m.kernel_size[0] > 1]
    assert anisotropic, "in-plane kernels must stay (3 or the backbone's own)"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "eff_unet"])  # EfficientNet's squeeze-excite pools all
def test_slices_are_processed_independently_without_z_kernels(name: str) -> None:
    """Behaviour, not layer shapes: changing one slice changes the prediction on that slice only (eval)."""
    model = make(name, 3, strides=[(2, 2, 1)] * 3, kernel_sizes=[(3, 3, 1)] * 4).eval()
    x = torch.randn(1, IN_CH, 16, 16, 5)
    y = x.clone()
    y[..., 2] += torch.randn_like(y[..., 2])
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().amax(dim=(0, 1, 2, 3))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0), diff
    mixing = make(name, 3, strides=[(2, 2, 1)] * 3, kernel_sizes=[(3, 3, 1)] * 3 + [(3, 3, 3)]).eval()
    with torch.no_grad():  # the check can fail: a z kernel of 3 at the bottleneck spreads the change
        diff = (mixing(x) - mixing(y)).abs().amax(dim=(0, 1, 2, 3))
    assert diff[1] > 0 and diff[3] > 0


def test_first_level_convs_do_not_span_z() -> None:
    model = make("unet", 3, **PLAN[3])
    first = [m.kernel_size for m in convs(model.encoder.levels[0])]
    assert first == [(3, 3, 1), (3, 3, 1)]
    assert [m.kernel_size for m in convs(model.encoder.levels[2])] == [(3, 3, 3), (3, 3, 3)]
    assert [m.kernel_size for m in convs(model.decoder.stages[-1].block)] == [(3, 3, 1), (3, 3, 1)]
    assert model.encoder.pools[0].kernel_size == (2, 2, 1)
    up = model.decoder.stages[0].up.conv  # from the bottleneck: strides[2] = (2, 2, 2)
    assert up.stride == (2, 2, 2) and model.decoder.stages[-1].up.conv.stride == (2, 2, 1)
    assert model.decoder.stages[-1].up.conv.kernel_size == (2, 2, 1)


# ---------------------------------------------------------------- the defaults are today's networks
def explicit_defaults(name: str, dims: int, per_axis: bool) -> dict[str, Any]:
    n_strides = 5 if name == "eff_unet" else len(TINY[name]["features"]) - 1
    stride, kernel = ((2,) * dims, (3,) * dims) if per_axis else (2, 3)
    return {"strides": [stride] * n_strides, "kernel_sizes": [kernel] * (n_strides + 1)}


@pytest.mark.parametrize("per_axis", [False, True])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_explicit_isotropic_plan_is_the_default_network(name: str, dims: int, per_axis: bool) -> None:
    default = make(name, dims, ds=True, cgm=True, seed=3)
    explicit = make(name, dims, ds=True, cgm=True, seed=3, **explicit_defaults(name, dims, per_axis))
    assert n_params(default) == n_params(explicit)
    ours, theirs = default.state_dict(), explicit.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours)
    assert default.size_divisors == explicit.size_divisors == (32 if name == "eff_unet" else 8,) * dims
    if name == "eff_unet" and dims == 3:
        return  # equal weights and layers already; a 32^3 EfficientNet forward costs seconds
    x = torch.randn(1, IN_CH, *((32,) * dims if name == "eff_unet" else (16,) * dims))
    with torch.no_grad():
        torch.testing.assert_close(default.eval()(x), explicit.eval()(x), rtol=0, atol=0)


#: (parameters, state_dict entries) of the TINY networks in 2D with deep supervision and CGM, and a digest of
#: their state_dict's names and shapes in 2D / 3D, as built before ``strides``/``kernel_sizes`` existed: the
#: default build must still give exactly these networks
BEFORE = {"eff_unet": (3646109, 444), "mobile_unet": (33283, 176), "res_unet": (32927, 115),
          "res_unet_monai": (25973, 107), "unet": (30799, 112), "unet3p": (34890, 171), "unetpp": (35231, 160)}
LAYOUT = {
    2: {"eff_unet": "0c5774ec3430", "mobile_unet": "bbc246e8e7cc", "res_unet": "acfa72bf21c6",
        "res_unet_monai": "f659dcd2ac63", "unet": "85669c256cd8", "unet3p": "bc4251480d7f", "unetpp": "651ac1596940"},
    3: {"eff_unet": "0a7ce666529f", "mobile_unet": "fa3b6deaa285", "res_unet": "87ec08d8488d",
        "res_unet_monai": "4ac93da05091", "unet": "dbb9fb34c5fd", "unet3p": "8b66fcf61643", "unetpp": "66e0d85beecd"},
}


def layout_digest(model: nn.Module) -> str:
    names = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha1(names.encode()).hexdigest()[:12]


@pytest.mark.parametrize("name", NAMES)
def test_default_networks_are_todays(name: str) -> None:
    model = make(name, 2, ds=True, cgm=True)
    assert (n_params(model), len(model.state_dict())) == BEFORE[name]
    for dims in (2, 3):
        assert layout_digest(make(name, dims, ds=True, cgm=True)) == LAYOUT[dims][name]
        assert layout_digest(make(name, dims, ds=True, cgm=True, **explicit_defaults(name, dims, True))) == \
            LAYOUT[dims][name]


# ---------------------------------------------------------------- bad plans are refused, naming the option
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unet", {"strides": [2, 2]}, "strides", "needs 3 entries"),
    ("unet", {"kernel_sizes": [3, 3, 3]}, "kernel_sizes", "needs 4 entries"),
    ("unetpp", {"kernel_sizes": [3, (3, 3, 2), 3, 3]}, "kernel_sizes", "odd"),
    ("unet3p", {"kernel_sizes": [4, 3, 3, 3]}, "kernel_sizes", "odd"),
    ("res_unet", {"strides": [2, 0, 2]}, "strides", "positive"),
    ("mobile_unet", {"strides": [(2, 2, 1), (2, 2), 2]}, "strides", "per axis"),
    ("res_unet_monai", {"strides": [(2, 2, 1, 1)] * 3}, "strides", "per axis"),
    ("unet", {"strides": "222"}, "strides", "list"),
    ("unet", {"strides": [2, 2.5, 2]}, "strides", "an int or one int per axis"),
    ("eff_unet", {"strides": [2, 2, 2, 2]}, "strides", "needs 5 entries"),
    ("eff_unet", {"kernel_sizes": [3] * 5}, "kernel_sizes", "needs 6 entries"),
]


@pytest.mark.parametrize(("name", "options", "option", "message"), BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_check_config_refuses_bad_plans(name: str, options: dict[str, Any], option: str, message: str) -> None:
    with pytest.raises(NetworkConfigError, match=message) as error:
        check_network_config(name, TINY[name]["features"], **options)
    assert error.value.option == option
    with pytest.raises(NetworkConfigError) as built:  # the constructor refuses the same plan
        make(name, 3, **options)
    assert built.value.option == option


def test_check_config_accepts_plans_and_knows_the_dimensionality() -> None:
    assert network_topology_lengths("unet", (8, 16, 32)) == (2, 3)
    assert network_topology_lengths("unet3p") == (4, 5)  # the default five widths
    assert network_topology_lengths("eff_unet", (8, 16, 32, 64, 128)) == (5, 6)
    for name in NAMES:
        check_network_config(name, TINY[name]["features"], **plan(name, 3))
        check_network_config(name, None, strides=None, kernel_sizes=None)
    check_network_config("unet", (8, 16, 32), strides=[2, (2, 2, 1)], kernel_sizes=[3, (3, 3, 1), 1])
    with pytest.raises(NetworkConfigError, match="3 values") as error:  # per axis vs the network's dims
        check_network_config("unet", (8, 16, 32), strides=[(2, 1), 2], spatial_dims=3)
    assert error.value.option == "strides"
    with pytest.raises(NetworkConfigError) as built:
        build_network("unet", 2, 1, 2, features=(8, 16, 32), strides=[(2, 2, 1), 2])
    assert built.value.option == "strides"


# ---------------------------------------------------------------- valid padding, per axis
def old_valid_output(n: int, depth: int) -> int | None:
    """The single-axis formula from before per-axis topologies (two 3x3 convs, 2x2 pools per level)."""
    for _ in range(depth - 1):
        n -= 4
        if n <= 0 or n % 2:
            return None
        n //= 2
    n -= 4
    if n <= 0:
        return None
    for _ in range(depth - 1):
        n = 2 * n - 4
    return n if n > 0 else None


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_valid_size_defaults_are_unchanged(depth: int) -> None:
    default = ([2] * (depth - 1), [3] * depth)
    for n in range(1, 300):
        expected = old_valid_output(n, depth)
        if expected is None:
            with pytest.raises(ValueError, match="does not fit"):
                valid_unet_output_size(n, depth, *default)
        else:
            assert valid_unet_output_size(n, depth) == valid_unet_output_size(n, depth, *default) == expected
    for out in (1, 7, 50, 388):
        assert valid_unet_input_size(out, depth) == valid_unet_input_size(out, depth, *default)


def test_valid_sizes_per_axis() -> None:
    flat = ([1, 1, 1], [1, 1, 1, 1])  # an axis never pooled nor convolved across keeps its size
    for n in (1, 5, 12):
        assert valid_unet_output_size(n, 4, *flat) == n
        assert valid_unet_input_size(n, 4, *flat) == n
    # z: pooled only at the last step, convolved across only at the two deepest levels
    z = ([1, 1, 2], [1, 1, 3, 3])
    tile = valid_unet_input_size(3, 4, *z)
    assert valid_unet_output_size(tile, 4, *z) >= 3
    assert valid_unet_output_size(tile, 4, *z) == 2 * (((tile - 4) // 2) - 4) - 4  # hand-computed
    with pytest.raises(ValueError, match="strides"):
        valid_unet_output_size(16, 4, [2, 2], [3, 3, 3, 3])


def test_valid_unet_network_follows_the_per_axis_sizes() -> None:
    strides, kernels = [(2, 2, 1), (2, 2, 2)], [(3, 3, 1), (3, 3, 1), (3, 3, 3)]
    model = build_network("unet", 3, 1, 2, features=(4, 8, 16), norm=None, padding="valid", strides=strides,
                          kernel_sizes=kernels).eval()
    per_axis = [([s[a] for s in strides], [k[a] for k in kernels]) for a in range(3)]
    inputs = [valid_unet_input_size(4, 3, *axis) for axis in per_axis]
    assert inputs[0] == inputs[1] != inputs[2]
    with torch.no_grad():
        out = model(torch.randn(1, 1, *inputs))
    assert tuple(out.shape[2:]) == tuple(valid_unet_output_size(n, 3, *a) for n, a in zip(inputs, per_axis,
                                                                                             strict=True))
    with pytest.raises(ValueError, match="does not fit"):
        model(torch.randn(1, 1, inputs[0], inputs[1], inputs[2] + 1))
