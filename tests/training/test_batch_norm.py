"""Precise BN: after recalibration, eval mode normalises like train mode does on the training images."""

import numpy as np
import torch

from monai_ext.networks import build_network
from tasks.training.batch_norm import batch_norms, centre_patch, recalibrate_batch_norm


def items(count: int, size: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": (rng.normal(size=(1, size + 6, size - 4)) * 3 + 5).astype(np.float32)} for _ in range(count)]


def test_centre_patch_cuts_and_mirrors_around_the_centre():
    image = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    patch = centre_patch(image, (3, 7))
    assert patch.shape == (2, 3, 7)
    np.testing.assert_array_equal(patch[:, :, 2:5], image[:, 1:4, :])  # centre rows, all columns
    np.testing.assert_array_equal(patch[:, :, 1], image[:, 1:4, 1])  # mirrored, not zeros
    assert centre_patch(image, (2, 40)).shape == (2, 2, 40)  # more than one reflection


def test_recalibrated_eval_mode_matches_train_mode_on_the_training_images():
    torch.manual_seed(0)
    model = build_network("eff_unet", 2, 1, 2, features=(16, 32, 64, 128, 256))  # 50+ batch norms in depth
    data = items(8)
    batch = torch.from_numpy(np.stack([centre_patch(i["image"], (64, 64)) for i in data]))
    with torch.no_grad():
        model.train()
        for _ in range(3):  # a short "training": running statistics still far from the data's
            model(batch)
        train_out = model(batch)
        model.eval()
        before = (model(batch) - train_out).abs().mean().item()
        assert recalibrate_batch_norm(model, data, (64, 64), torch.device("cpu"), batch_size=8)
        assert not model.training  # the mode it was in comes back
        after = (model(batch) - train_out).abs().mean().item()
    # what remains is the unbiased (running) vs biased (batch) variance of the deepest 2×2 maps: a few %
    assert after < 0.2 * before, (before, after)
    assert all(m.momentum == 0.1 for m in batch_norms(model))  # the training momentum is restored


def test_nothing_to_recalibrate_without_batch_norm_or_images():
    plain = build_network("unet", 2, 1, 2, features=(4, 8), norm="instance")
    assert not recalibrate_batch_norm(plain, items(4), (32, 32), torch.device("cpu"), batch_size=2)
    batch_normed = build_network("unet", 2, 1, 2, features=(4, 8))
    assert not recalibrate_batch_norm(batch_normed, items(1), (32, 32), torch.device("cpu"), batch_size=2)
