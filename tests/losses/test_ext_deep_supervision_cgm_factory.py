"""Deep supervision weighting/resizing, the UNet 3+ CGM loss and the build_loss factory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from monai_ext.losses import (
    CGMLoss,
    DeepSupervisionLoss,
    PixelWeightedCrossEntropyLoss,
    build_loss,
    deep_supervision_weights,
    resize_nearest,
)


@dataclass
class FakeOutput:
    """Duck-typed stand-in for the networks package's NetworkOutput."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor] | None = None
    class_logits: torch.Tensor | None = None


def test_halving_weights_drop_lowest_and_normalise() -> None:
    assert deep_supervision_weights(4, "halving") == pytest.approx([0.571, 0.286, 0.143, 0.0], abs=1e-3)
    assert deep_supervision_weights(1, "halving") == [1.0]
    assert deep_supervision_weights(3, "equal") == pytest.approx([1 / 3] * 3)
    assert deep_supervision_weights(2, [1.0, 0.3]) == [1.0, 0.3]
    with pytest.raises(ValueError):
        deep_supervision_weights(3, [1.0, 0.3])
    with pytest.raises(ValueError):
        DeepSupervisionLoss(PixelWeightedCrossEntropyLoss(), "thirds")


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_deep_supervision_resizes_targets_and_weights(spatial: tuple[int, ...]) -> None:
    base = PixelWeightedCrossEntropyLoss()
    target = torch.randint(0, 3, (2, 1, *spatial))
    weight = torch.rand(2, 1, *spatial) + 0.5
    heads = [torch.randn(2, 3, *(s // 2**i for s in spatial), requires_grad=True) for i in range(3)]
    heads[1] = torch.randn(2, 3, *spatial, requires_grad=True)  # an already full-res aux head
    loss = DeepSupervisionLoss(base, "halving")(heads, target, weight)
    w = deep_supervision_weights(3, "halving")
    small_t = F.interpolate(target.float(), size=heads[2].shape[2:], mode="nearest").long()
    assert torch.equal(resize_nearest(target, heads[2].shape[2:]), small_t)
    expected = w[0] * base(heads[0], target, weight) + w[1] * base(heads[1], target, weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert heads[2].grad is None  # lowest head has weight 0: not even evaluated
    assert torch.isfinite(heads[0].grad).all()
    equal = DeepSupervisionLoss(base, "equal")(heads, target[:, 0])  # [B, *spatial] target accepted
    resized = resize_nearest(target, heads[2].shape[2:])
    assert equal.item() == pytest.approx(
        sum(base(h, resized if h is heads[2] else target).item() for h in heads) / 3
    )
    with pytest.raises(ValueError, match="larger"):
        DeepSupervisionLoss(base)([torch.randn(1, 3, 32, 32)], torch.zeros(1, 1, 16, 16, dtype=torch.long))


def test_cgm_loss_shapes() -> None:
    target = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    target[1, 0, 2, 2] = 1
    target[2, 0, 0, 0] = 2
    present = torch.tensor([0.0, 1.0, 1.0])
    logit1 = torch.tensor([[0.3], [-1.0], [2.0]])
    assert CGMLoss()(logit1, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logit1[:, 0], present).item()
    )
    assert CGMLoss()(logit1[:, 0], target).item() == pytest.approx(CGMLoss()(logit1, target).item())
    logit2 = torch.zeros(3, 2)
    assert CGMLoss()(logit2, target).item() == pytest.approx(math.log(2))
    confident = torch.tensor([[9.0, -9.0], [-9.0, 9.0], [-9.0, 9.0]])
    assert CGMLoss()(confident, target).item() < 1e-6
    with pytest.raises(ValueError):
        CGMLoss()(torch.zeros(3, 3), target)


def test_build_loss_names_and_unknowns() -> None:
    logits = torch.zeros(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 1, 8, 8))
    for name in ("ce", "ce_dice", "focal_msssim_iou", "dice", "focal"):
        assert torch.isfinite(build_loss(name)(logits, target))
    assert build_loss("ce")(logits, target, torch.full((2, 1, 8, 8), 5.0)).item() == pytest.approx(
        math.log(2)
    )
    assert build_loss("wce")(logits, target, torch.full((2, 1, 8, 8), 2.0)).item() == pytest.approx(
        2 * math.log(2)
    )
    with pytest.raises(ValueError, match="weight map"):
        build_loss("wce")(logits, target)
    with pytest.raises(ValueError, match="known"):
        build_loss("lovasz")
    with pytest.raises(ValueError, match="lambda_dice"):
        build_loss("ce_dice", lambda_dise=2.0)
    with pytest.raises(ValueError):
        build_loss("ce", deep_supervision="thirds")
    loss = build_loss("ce_dice", lambda_dice=0.0)
    assert loss(logits, target).item() == pytest.approx(math.log(2))


def test_build_loss_with_network_output_deep_supervision_and_cgm() -> None:
    target = torch.randint(0, 2, (2, 1, 16, 16))
    target[0] = 0  # first sample empty -> CGM target 0
    main = torch.randn(2, 2, 16, 16, requires_grad=True)
    aux = [torch.randn(2, 2, 8, 8, requires_grad=True), torch.randn(2, 2, 4, 4, requires_grad=True)]
    cls = torch.randn(2, 1, requires_grad=True)
    out = FakeOutput(main, aux, cls)
    loss_fn = build_loss("ce_dice", deep_supervision="halving", cgm_weight=0.5)
    loss = loss_fn(out, target)
    ds = DeepSupervisionLoss(build_loss("ce_dice").base_loss, "halving")([main, *aux], target)
    assert loss.item() == pytest.approx((ds + 0.5 * CGMLoss()(cls, target)).item(), rel=1e-6)
    loss.backward()
    assert main.grad is not None and aux[0].grad is not None and cls.grad is not None
    # no deep supervision: aux heads ignored; plain tensors and lists work too
    plain = build_loss("ce")
    assert plain(out, target).item() == pytest.approx(plain(main, target).item())
    assert build_loss("ce", deep_supervision="equal")([main, *aux], target).item() > 0
    with pytest.raises(ValueError, match="class_logits"):
        build_loss("ce", cgm_weight=1.0)(main, target)
