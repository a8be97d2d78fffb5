"""res_unet is Zhang et al.'s ResUNet (full-resolution level, pre-activation units, the paper's size);
res_unet_monai is MONAI's residual ``UNet`` topology: same parameters, same outputs given the same weights.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet as MonaiUNet
from networks_cases import n_params
from torch import nn

from monai_ext.networks import build_network
from monai_ext.networks.res_unet import PreActResidualUnit
from monai_ext.networks.stages import DecoderStage


def _leaves(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules owning parameters or buffers, in registration order."""
    return [
        m
        for m in module.modules()
        if not list(m.children()) and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_res_unet_monai_equals_monai_residual_unet(dims: int) -> None:
    feats = (4, 8, 16, 32)
    torch.manual_seed(0)
    ours = build_network("res_unet_monai", dims, 1, 3, features=feats)
    twin = MonaiUNet(dims, 1, 3, channels=feats, strides=(2, 2, 2), num_res_units=2, norm="batch", act="relu")
    assert n_params(ours) == n_params(twin)
    # MONAI nests down_k, ..., bottom, ..., up_k; ours lists them flat (decoder shallow -> deep)
    order = [*ours.down, ours.bottom, *reversed(list(ours.up))]
    mine = [leaf for block in order for leaf in _leaves(block)]
    theirs = _leaves(twin)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        a.load_state_dict(b.state_dict())
    x = torch.randn(2, 1, *(16,) * dims)
    for train in (True, False):
        ours.train(train)
        twin.train(train)
        torch.testing.assert_close(ours(x), twin(x))


def test_res_unet_monai_options() -> None:
    net = build_network("res_unet_monai", 2, 1, 2, features=(4, 8, 16), num_res_units=1, up_kernel_size=2)
    assert net(torch.randn(2, 1, 20, 28)).shape == (2, 2, 20, 28)  # awkward sizes are padded and cropped
    with pytest.raises(ValueError, match="num_res_units"):
        build_network("res_unet_monai", 2, 1, 2, features=(4, 8, 16), num_res_units=0)


# ---------------------------------------------------------------- res_unet: Zhang, Liu & Wang 2018
def _skip_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Spatial shape of the skip each decoder stage concatenates, in call order (deep -> shallow)."""
    seen: list[tuple[int, ...]] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, torch.Tensor]) -> None:
        seen.append(tuple(args[1].shape[2:]))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, DecoderStage)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("dims", [2, 3])
def test_res_unet_has_a_full_resolution_skip(dims: int) -> None:
    size = (16, 24) if dims == 2 else (16, 8, 16)
    x = torch.randn(1, 1, *size)
    net = build_network("res_unet", dims, 1, 2, features=(4, 8, 16, 32))
    skips = _skip_shapes(net, x)
    assert skips[-1] == size  # the last (shallowest) decoder stage concatenates the input-sized level 0
    assert skips == [tuple(s // 2**k for s in size) for k in (2, 1, 0)]


def test_res_unet_monai_has_no_full_resolution_level() -> None:
    """What the rebuild fixes: MONAI's form downsamples in its first unit, so no map is input-sized."""
    net = build_network("res_unet_monai", 2, 1, 2, features=(4, 8, 16, 32)).eval()
    sizes: list[tuple[int, ...]] = []
    handles = [u.register_forward_hook(lambda _m, _a, out: sizes.append(tuple(out.shape[2:]))) for u in net.down]
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16))
    for handle in handles:
        handle.remove()
    assert sizes == [(8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize("norm", ["batch", "instance", None])
def test_res_unet_units_are_pre_activation(norm: str | None) -> None:
    """Every unit but the input one starts with norm (or act without norm); downsampling = first conv stride 2."""
    net = build_network("res_unet", 3, 1, 2, features=(4, 8, 16, 32), norm=norm)
    units = [m for m in net.modules() if isinstance(m, PreActResidualUnit)]
    assert len(units) == 7 and units[0] is net.encoder[0]
    first = nn.modules.batchnorm._NormBase if norm else nn.ReLU
    for unit in units[1:]:
        assert isinstance(unit.body[0], first), unit.body
        convs = [m for m in unit.body if isinstance(m, nn.Conv3d)]
        assert len(convs) == 2 and convs[1].stride == (1, 1, 1)
    # the paper's input unit convolves the image first (no norm/act on raw intensities)
    assert isinstance(net.encoder[0].body[0], nn.Conv3d)
    for k, unit in enumerate(net.encoder):
        conv = next(m for m in unit.body if isinstance(m, nn.Conv3d))
        assert conv.stride == ((1, 1, 1) if k == 0 else (2, 2, 2))
    assert isinstance(net.encoder[0].shortcut, nn.Conv3d)  # 1x1 projection: width changes
    assert isinstance(net.head.conv, nn.Conv3d) and net.head.conv.kernel_size == (1, 1, 1)


def test_res_unet_identity_shortcut_when_shape_is_kept() -> None:
    unit = PreActResidualUnit(2, 8, 8)
    assert isinstance(unit.shortcut, nn.Identity)
    projection = PreActResidualUnit(2, 8, 16, stride=2).shortcut
    assert isinstance(projection, nn.Conv2d) and projection.kernel_size == (1, 1) and projection.stride == (2, 2)


def test_res_unet_paper_parameter_count() -> None:
    """Zhang et al. 2018, Table 1: 3 levels (64, 128, 256) + bridge 512, 3 in / 1 out; reported 7.8M.

    Built here: 8,220,993 (+5.4%), tolerance 6%. The excess is the 1x1 projection shortcuts, which the
    paper does not describe (a width-changing unit cannot add its input without one): without them the
    count is 7,789,313, the paper's 7.8M to its one decimal.
    """
    net = build_network("res_unet", 2, 3, 1, features=(64, 128, 256, 512))
    total = n_params(net)
    projections = sum(p.numel() for name, p in net.named_parameters() if ".shortcut." in name)
    assert total == 8_220_993
    assert abs(total / 7.8e6 - 1) < 0.06
    assert round((total - projections) / 1e6, 1) == 7.8


def test_res_unet_options() -> None:
    x = torch.randn(2, 1, 20, 28)  # awkward size: padded to a multiple of 8 and cropped back
    for upsample in ("nearest", "linear", "deconv"):
        net = build_network("res_unet", 2, 1, 2, features=(4, 8, 16, 32), upsample=upsample, dropout=0.1)
        assert net(x).shape == (2, 2, 20, 28)
    with pytest.raises(ValueError, match="upsample"):
        build_network("res_unet", 2, 1, 2, features=(4, 8, 16), upsample="bicubic")
