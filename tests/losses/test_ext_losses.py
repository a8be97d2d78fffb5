"""Per-voxel, region and hybrid losses: known values, gradients, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_ext.losses import (
    CEDiceLoss,
    FocalLoss,
    FocalMSSSIMIoULoss,
    MSSSIMLoss,
    PixelWeightedCrossEntropyLoss,
    SoftDiceLoss,
    SoftIoULoss,
    ms_ssim,
)
from monai_ext.losses.ms_ssim import ms_ssim_plan

SHAPES = {"2d": (2, 3, 24, 20), "3d": (2, 3, 12, 10, 8)}


def _target(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)


def _perfect_logits(target: torch.Tensor, c: int) -> torch.Tensor:
    return (F.one_hot(target[:, 0], c).movedim(-1, 1).float() * 2 - 1) * 30.0


@pytest.mark.parametrize("dims", SHAPES)
def test_uniform_logits_ce_is_log_c(dims: str) -> None:
    shape = SHAPES[dims]
    loss = PixelWeightedCrossEntropyLoss()(torch.zeros(shape), _target(shape))
    assert loss.item() == pytest.approx(math.log(shape[1]), rel=1e-6)


@pytest.mark.parametrize("dims", SHAPES)
def test_weighted_ce_scaling_and_normalisations(dims: str) -> None:
    shape = SHAPES[dims]
    logits, target = torch.randn(shape), _target(shape)
    plain = F.cross_entropy(logits, target[:, 0])
    twos = torch.full((shape[0], 1, *shape[2:]), 2.0)
    assert PixelWeightedCrossEntropyLoss()(logits, target, twos).item() == pytest.approx(
        2 * plain.item(), rel=1e-5
    )
    by_w = PixelWeightedCrossEntropyLoss(normalization="weights")(logits, target, twos)
    assert by_w.item() == pytest.approx(plain.item(), rel=1e-5)
    # weights concentrate the loss where they are large; [B, *spatial] weight shape accepted too
    w = torch.rand(shape[0], *shape[2:])
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")
    expected = (w * ce).sum() / ce.numel()
    assert PixelWeightedCrossEntropyLoss()(logits, target[:, 0], w).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_weighted_ce_ignore_index_and_bad_shapes() -> None:
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 1, 4, 4))
    target[..., 0, :] = 255
    keep = target[:, 0] != 255
    expected = F.cross_entropy(logits, target[:, 0], ignore_index=255)
    got = PixelWeightedCrossEntropyLoss(ignore_index=255)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert keep.sum() == 12
    with pytest.raises(ValueError):
        PixelWeightedCrossEntropyLoss()(logits, torch.zeros(1, 1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        PixelWeightedCrossEntropyLoss()(torch.randn(1, 1, 4, 4), target)


@pytest.mark.parametrize("dims", SHAPES)
def test_focal_known_values(dims: str) -> None:
    shape = SHAPES[dims]
    logits, target = torch.randn(shape), _target(shape)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target[:, 0]).item(), rel=1e-5
    )
    c = shape[1]
    expected = (1 - 1 / c) ** 2 * math.log(c)
    assert FocalLoss(gamma=2.0)(torch.zeros(shape), target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize(
    "loss",
    [SoftDiceLoss(), SoftIoULoss(), CEDiceLoss(), FocalMSSSIMIoULoss()],
    ids=["dice", "iou", "ce_dice", "focal_msssim_iou"],
)
def test_perfect_prediction_is_near_zero_and_gradients_finite(dims: str, loss: torch.nn.Module) -> None:
    shape = SHAPES[dims]
    target = _target(shape)
    assert loss(_perfect_logits(target, shape[1]), target).item() == pytest.approx(0.0, abs=1e-4)
    logits = torch.randn(shape, requires_grad=True)
    value = loss(logits, target, torch.rand(shape[0], 1, *shape[2:]))
    value.backward()
    assert torch.isfinite(value) and value.item() > 0.05
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_ce_dice_is_sum_of_terms_and_weight_only_affects_ce() -> None:
    shape = SHAPES["2d"]
    logits, target = torch.randn(shape), _target(shape)
    w = torch.rand(shape[0], 1, *shape[2:])
    total = CEDiceLoss(lambda_ce=1.0, lambda_dice=0.5)(logits, target, w)
    parts = PixelWeightedCrossEntropyLoss()(logits, target, w) + 0.5 * SoftDiceLoss()(logits, target)
    assert total.item() == pytest.approx(parts.item(), rel=1e-5)


def test_iou_known_value() -> None:
    # foreground probability 0.5 everywhere, target half foreground: I = 0.5 * n/2, U = n - I
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., :2, :] = 1
    inter, union = 0.5 * 8, 0.5 * 16 + 8 - 0.5 * 8
    assert SoftIoULoss()(logits, target).item() == pytest.approx(1 - inter / union, rel=1e-4)


@pytest.mark.parametrize("spatial", [(64, 64), (20, 24, 22)])
def test_ms_ssim_identity_and_properties(spatial: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, *spatial, generator=g)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2, 1), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    score = ms_ssim(x, noisy)
    assert (score < 0.99).all() and (score > 0).all()
    inverted = ms_ssim(x, 1 - x)  # anti-correlated: cs < 0 is clamped, no NaN
    assert torch.isfinite(inverted).all() and (inverted < score).all()


def test_ms_ssim_plan_scales_and_windows() -> None:
    assert ms_ssim_plan((256, 256)) == (11, 1.5, pytest.approx((0.0448, 0.2856, 0.3001, 0.2363, 0.1333)))
    win, _, w = ms_ssim_plan((64, 64))  # 64, 32, 16 fit an 11-window; 8 does not
    assert win == 11 and len(w) == 3 and sum(w) == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.0448 / (0.0448 + 0.2856 + 0.3001))
    win, sigma, w = ms_ssim_plan((8, 9, 10))
    assert win == 7 and sigma == pytest.approx(1.5 * 7 / 11) and w == (1.0,)


def test_ms_ssim_follows_wang_product_of_scales() -> None:
    """MS-SSIM = ssim_M^g_M * prod_{j<M} cs_j^g_j, cross-checked against a direct computation."""
    from monai_ext.losses.ms_ssim import gaussian_kernel_1d, ssim_components

    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 48, 48, generator=g)
    y = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    win, sigma, gammas = ms_ssim_plan((48, 48))
    assert len(gammas) == 3
    k = gaussian_kernel_1d(win, sigma, x.dtype, x.device)
    s0, c0 = ssim_components(x, y, k, 1.0, (0.01, 0.03))
    x1, y1 = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    s1, c1 = ssim_components(x1, y1, k, 1.0, (0.01, 0.03))
    s2, c2 = ssim_components(F.avg_pool2d(x1, 2), F.avg_pool2d(y1, 2), k, 1.0, (0.01, 0.03))
    expected = c0 ** gammas[0] * c1 ** gammas[1] * s2 ** gammas[2]
    torch.testing.assert_close(ms_ssim(x, y), expected)


def test_msssim_loss_excludes_background_by_default() -> None:
    probs = torch.rand(1, 2, 32, 32)
    onehot = torch.zeros_like(probs)
    onehot[:, 1] = 1
    onehot_bg_wrong = onehot.clone()
    onehot_bg_wrong[:, 0] = torch.rand(32, 32)
    assert MSSSIMLoss()(probs, onehot).item() == pytest.approx(MSSSIMLoss()(probs, onehot_bg_wrong).item())
