"""After a short fit, eval-mode predictions agree with training-mode ones, for every variant.

Why: ``eff_unet`` once kept TensorFlow's batch-norm momentum (0.01) in its EfficientNet encoder; after a
short training the running statistics still lagged the weights, so eval-mode predictions (validation,
inference) were empty (Dice 0) while the training loss fell. Each variant here fits two tiny 2D blob
images with Adam at a constant learning rate (as early in a real run: the statistics must keep up with
moving weights), then predicts the same images in both modes.
"""

from __future__ import annotations

import pytest
import torch
from networks_cases import NAMES, TINY

from monai_ext.networks import build_network, main_logits

STEPS, LR = 40, 1e-2
#: eff_unet halves 5 times: at 32 px its deepest batch norm would see 2 values per channel (train-mode output
#: degenerate), at 64 px 8. Tiny mobile_unet (width 4) fits too slowly in 40 steps for some seeds; width 8 doesn't.
FIT = {**TINY, "mobile_unet": {"features": (8, 16, 32, 64)}}
SIZE = {"eff_unet": 64}


def blobs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy images of one bright disc each (foreground ~25%), and their labels."""
    k = size // 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    noise = torch.Generator().manual_seed(0)
    images, labels = [], []
    for cy, cx, r in ((12 * k, 13 * k, 8 * k), (19 * k, 18 * k, 10 * k)):
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float()
        images.append(disc + 0.2 * torch.randn(size, size, generator=noise))
        labels.append(disc.long())
    return torch.stack(images)[:, None], torch.stack(labels)


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    p, t = pred == 1, label == 1
    return float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp_min(1))


@pytest.mark.parametrize("name", NAMES)
def test_eval_predictions_agree_with_training_after_a_short_fit(name: str) -> None:
    x, y = blobs(SIZE.get(name, 32))
    torch.manual_seed(0)
    model = build_network(name, 2, 1, 2, **FIT[name]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(main_logits(model(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train_pred = main_logits(model.train()(x)).argmax(1)
        eval_pred = model.eval()(x).argmax(1)
    train_dice, eval_dice = dice(train_pred, y), dice(eval_pred, y)
    agreement = float((train_pred == eval_pred).float().mean())
    assert train_dice > 0.9, f"{name} did not fit ({STEPS} steps): train-mode Dice {train_dice:.3f}"
    assert agreement > 0.95, f"{name}: eval/train argmax agreement {agreement:.3f}"
    assert abs(eval_dice - train_dice) < 0.05, f"{name}: eval Dice {eval_dice:.3f} vs train {train_dice:.3f}"
