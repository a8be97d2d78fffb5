"""Layer-level defaults every variant shares: the ``norm`` choice, PyTorch's batch-norm convention,
He initialisation before ReLUs, and where ``dropout`` goes."""

from __future__ import annotations

import pytest
import torch
from networks_cases import NAMES, TINY, make
from torch import nn

from monai_ext.networks import build_network, network_options

NORM_TYPES = {"batch": nn.modules.batchnorm._BatchNorm, "instance": nn.modules.instancenorm._InstanceNorm,
              "group": nn.GroupNorm}
ANY_NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ANY_NORM)]


@pytest.mark.parametrize("norm", [*NORM_TYPES, None])
@pytest.mark.parametrize("name", NAMES)
def test_norm_choice_reaches_every_norm_layer(name: str, norm: str | None) -> None:
    """``norm`` is the only normalisation in the model (eff_unet's EfficientNet encoder included)."""
    model = make(name, 2, norm=norm)
    layers = norm_layers(model)
    if norm is None:
        assert not layers, f"{name} keeps {type(layers[0]).__name__} with norm=None"
        return
    assert layers and all(isinstance(m, NORM_TYPES[norm]) for m in layers), {type(m).__name__ for m in layers}
    size = 64 if name == "eff_unet" else 32  # instance norm needs > 1 voxel at eff_unet's stride 32
    out = model.train()(torch.randn(2, 1, size, size))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_batch_norm_uses_pytorch_momentum(name: str) -> None:
    """TensorFlow's momentum 0.01 (eps 1e-3) made eff_unet's running statistics lag; PyTorch's is 0.1/1e-5."""
    layers = norm_layers(make(name, 2, norm="batch"))
    assert {(m.momentum, m.eps) for m in layers} == {(0.1, 1e-5)}


def bottleneck_std(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.encoder(x)[-1].std())


def test_he_init_keeps_unnormalised_bottleneck_activations_alive() -> None:
    """U-Net paper: He init (std sqrt(2/fan_in)) keeps an un-normalised U-Net's activations O(1)."""
    torch.manual_seed(0)
    model = build_network("unet", 2, 1, 2, features=(16, 32, 64, 128, 256), norm=None).eval()
    x = torch.randn(2, 1, 64, 64)
    he = bottleneck_std(model, x)
    for module in model.modules():  # the same network with PyTorch's default init
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.reset_parameters()
    default = bottleneck_std(model, x)
    assert 0.1 < he < 10, he
    assert default < 0.1, default  # what the check guards against: ~0.008 here


def test_he_init_only_before_rectifiers() -> None:
    """Convs before ReLU/LeakyReLU get zero bias (He init); a head conv (no activation) keeps PyTorch's."""
    torch.manual_seed(0)
    model = build_network("unet", 2, 1, 2, features=(8, 16), norm=None, act=("leakyrelu", {"negative_slope": 0.1}))
    first = model.encoder.levels[0].conv_0.conv
    assert not first.bias.any() and first.weight.std() > 0.2  # sqrt(2 / (1.01 * 9)) ~ 0.47
    assert model.head.conv.bias.any()


def test_normalised_blocks_keep_pytorchs_default_init() -> None:
    """With batch norm between conv and ReLU the scale is normalised away: no re-initialisation there."""
    torch.manual_seed(0)
    model = build_network("unet", 2, 1, 2, features=(8, 16), norm="batch")
    first = model.encoder.levels[0].conv_0.conv
    assert first.bias.any() and first.weight.abs().max() <= 1 / 3  # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(9)


def dropouts(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


TAKE_DROPOUT = [name for name in NAMES if "dropout_position" in network_options(name)]


def test_every_network_with_dropout_chooses_its_position_but_monais_twin():
    """``res_unet_monai`` is MONAI's residual UNet, kept equal to it: dropout inside every unit, as MONAI does."""
    takes_dropout = {name for name in NAMES if "dropout" in network_options(name)}
    assert takes_dropout - set(TAKE_DROPOUT) == {"res_unet_monai"}


@pytest.mark.parametrize("name", TAKE_DROPOUT)
def test_dropout_position(name: str) -> None:
    """Default: one dropout at the end of the contracting path (U-Net paper); ``all``: after every conv."""
    assert dropouts(make(name, 2)) == 0
    assert dropouts(make(name, 2, dropout=0.3)) == 1
    assert dropouts(make(name, 2, dropout=0.3, dropout_position="bottleneck", cgm=True)) == 2  # + CGM's own
    everywhere = make(name, 2, dropout=0.3, dropout_position="all")
    assert dropouts(everywhere) > 2
    model = make(name, 2, dropout=0.3)
    size = 64 if name == "eff_unet" else 32
    x = torch.randn(2, 1, size, size)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="dropout_position"):
        build_network(name, 2, 1, 2, **TINY[name], dropout=0.3, dropout_position="middle")
