"""Architecture-specific checks: U-Net valid padding, UNet++ pruning, parameter counts from the papers."""

from __future__ import annotations

import math

import pytest
import torch
from networks_cases import make, n_params
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.networks import build_network, valid_unet_input_size, valid_unet_output_size

PAPER_UNET = dict(features=(64, 128, 256, 512, 1024), norm=None, padding="valid")
VGG16 = (64, 128, 256, 512, 1024)


def millions(model: torch.nn.Module) -> float:
    return round(n_params(model) / 1e6, 2)


# ---------------------------------------------------------------- U-Net (Ronneberger 2015)
def test_unet_paper_parameter_count() -> None:
    assert n_params(build_network("unet", 2, 1, 2, **PAPER_UNET)) == 31_030_658


def test_unet_paper_tile_572_to_388() -> None:
    model = build_network("unet", 2, 1, 2, **PAPER_UNET).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_valid_tile_helpers() -> None:
    assert valid_unet_output_size(572, 5) == 388
    assert valid_unet_input_size(388, 5) == 572
    assert valid_unet_input_size(380, 5) == 572  # rounds up to the next reachable output
    for out in (1, 50, 100, 388):
        size = valid_unet_input_size(out, 4)
        assert valid_unet_output_size(size, 4) >= out
    with pytest.raises(ValueError, match="nearest valid input sizes"):
        valid_unet_output_size(570, 5)


def test_valid_unet_small_3d_and_refusal() -> None:
    model = build_network("unet", 3, 1, 2, features=(4, 8), norm=None, padding="valid", deep_supervision=True)
    size = valid_unet_input_size(4, 2)  # 16 -> 4
    out = model.eval()(torch.randn(1, 1, size, size, size))
    assert out.shape == (1, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="does not fit a valid-padding U-Net"):
        model(torch.randn(1, 1, 17, 16, 16))


# ---------------------------------------------------------------- UNet++ pruning
@pytest.mark.parametrize("dims", [2, 3])
def test_unetpp_pruned_equals_full_heads(dims: int) -> None:
    model = make("unetpp", dims, ds=True).eval()
    x = torch.randn(1, 1, *((24, 20) if dims == 2 else (16, 12, 16)))
    heads = model.forward_heads(x)
    assert len(heads) == 3
    with torch.no_grad():
        for level in (1, 2, 3):
            torch.testing.assert_close(model.prune(level)(x), heads[level - 1], rtol=0, atol=1e-6)
        assert torch.equal(model.prune(None)(x), heads[-1])


def test_unetpp_pruning_computes_less() -> None:
    """Pruned to head L, UNet++ computes only the nodes X^{i,j} with i + j <= L: fewer FLOPs per level down.

    Counted, not timed: the wall-clock speed-ups are benchmark figures (benchmarks/networks.py,
    ``unetpp_pruning`` in its JSON report).
    """
    model = build_network("unetpp", 2, 1, 2, features=(8, 16, 32, 64, 128), deep_supervision=True).eval()
    x = torch.randn(1, 1, 32, 32)
    flops: dict[int | None, int] = {}
    try:
        for level in (1, 2, 3, None):
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model.prune(level)(x)
            flops[level] = counter.get_total_flops()
    finally:
        model.prune(None)
    assert flops[1] < flops[2] < flops[3] < flops[None]
    assert flops[1] * 4 < flops[None]  # L1 skips the three deepest encoder levels and 9 of 10 nested nodes


def test_unetpp_pruning_needs_heads() -> None:
    with pytest.raises(ValueError, match="deep_supervision"):
        build_network("unetpp", 2, 1, 2, features=(4, 8, 16), prune_level=1)
    with pytest.raises(ValueError, match="prune_level"):
        build_network("unetpp", 2, 1, 2, features=(4, 8, 16), deep_supervision=True, prune_level=3)


# ---------------------------------------------------------------- paper parameter counts
def test_unetpp_paper_counts_32_to_512() -> None:
    """UNet++ paper (DLMIA 2018), Table: U-Net 7.76M, UNet++ 9.04M (Keras code: no norm, 2x2 deconv)."""
    feats = (32, 64, 128, 256, 512)
    assert millions(build_network("unet", 2, 1, 1, features=feats, norm=None)) == 7.76
    assert (
        millions(build_network("unetpp", 2, 1, 1, features=feats, norm=None, deep_supervision=True)) == 9.04
    )


def test_unet3p_table1_vgg16() -> None:
    """UNet 3+ paper Table 1 (VGG-16 widths, 3 in / 1 class, batch norm), as built by the authors' code.

    Reference code: bias+BN convs, 4x4 stride-2 transposed convs for UNet/UNet++, 3x3 output convs for
    UNet/UNet 3+, four 1x1 heads in UNet++, no deep supervision/CGM in the UNet 3+ count.

    The table's figures are the counts *truncated* to two decimals: all three batch-norm models agree
    with it that way (UNet 39,399,873 -> 39.39, where rounding would give 39.40), while the UNet++
    paper's own table (above) rounds.
    """

    def table_millions(model: torch.nn.Module) -> float:
        return math.floor(n_params(model) / 1e4) / 100

    unetpp = build_network(
        "unetpp", 2, 3, 1, features=VGG16, norm="batch", up_kernel_size=4, deep_supervision=True
    )
    unet3p = build_network("unet3p", 2, 3, 1, features=VGG16, norm="batch")
    unet = build_network("unet", 2, 3, 1, features=VGG16, norm="batch", up_kernel_size=4, head_kernel_size=3)
    assert (n_params(unet), n_params(unetpp), n_params(unet3p)) == (39_399_873, 47_182_788, 26_971_777)
    assert (table_millions(unet), table_millions(unetpp), table_millions(unet3p)) == (39.39, 47.18, 26.97)


def test_unet3p_branch_width_follows_the_first_encoder_width() -> None:
    """``cat_channels`` defaults to ``features[0]`` (reference code: ``CatChannels = filters[0]``).

    Counted on the meta device (no compute): at widths 16..256 a fixed 64-wide branch made UNet 3+ cost
    46x U-Net's forward FLOPs; the rule brings it to 4.1x (the full-resolution stage is inherent to UNet 3+).
    The step-time ratio is a benchmark figure (benchmarks/networks.py, ``unet3p_vs_unet``).
    """
    feats = (16, 32, 64, 128, 256)

    def flops(name: str, **options: int) -> int:
        with torch.device("meta"):
            model = build_network(name, 2, 1, 2, features=feats, **options)
            x = torch.randn(1, 1, 64, 64)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops()

    assert build_network("unet3p", 2, 1, 2, features=feats).cat_channels == 16
    assert build_network("unet3p", 2, 3, 1, features=VGG16).cat_channels == 64
    unet = flops("unet")
    assert 4.0 < flops("unet3p") / unet < 4.3
    assert flops("unet3p", cat_channels=64) / unet > 40
    with pytest.raises(ValueError, match="cat_channels"):
        build_network("unet3p", 2, 1, 2, features=feats, cat_channels=0)
