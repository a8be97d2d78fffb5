"""UNet++'s inference modes on the network: head averaging and views that leave the network as it was."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks import build_network


def _model(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("unetpp", 2, 1, 3, features=(4, 8, 16, 32), deep_supervision=True, **options).eval()


def test_mean_mode_returns_log_of_the_heads_mean_probability() -> None:
    model = _model()
    x = torch.randn(2, 1, 20, 28)  # padded to 24x32 inside, cropped back
    heads = model.forward_heads(x)
    with torch.no_grad():
        out = model.for_inference(heads="mean")(x)
    assert out.shape == (2, 3, 20, 28)
    torch.testing.assert_close(out.softmax(1), torch.stack([h.softmax(1) for h in heads]).mean(0))


def test_views_share_weights_and_leave_the_network_alone() -> None:
    model = _model(prune_level=2)
    x = torch.randn(1, 1, 16, 16)
    heads = model.forward_heads(x)
    with torch.no_grad():
        for level in (1, 2, 3):
            torch.testing.assert_close(model.for_inference(level)(x), heads[level - 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.for_inference()(x), heads[-1], rtol=0, atol=1e-6)  # None: the full one
        assert model.prune_level == 2 and model.head_mode == "last"
        torch.testing.assert_close(model(x), heads[1], rtol=0, atol=1e-6)
    view = model.for_inference(1)
    assert view.heads is model.heads and view.encoder is model.encoder


def test_mean_mode_in_training_is_ignored_and_needs_heads() -> None:
    model = _model().for_inference(heads="mean").train()
    out = model(torch.randn(2, 1, 16, 16))
    assert len(out.aux_logits) == 2  # training: the heads for the loss, not their mean
    with pytest.raises(ValueError, match="deep_supervision"):
        build_network("unetpp", 2, 1, 2, features=(4, 8, 16)).use_heads("mean")
    with pytest.raises(ValueError, match="heads must be one of"):
        _model().use_heads("median")


def test_mean_mode_with_a_cgm_head_still_classifies() -> None:
    model = _model(cgm=True).for_inference(heads="mean")
    with torch.no_grad():
        logits, class_logits = model.forward_with_class(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 3, 16, 16) and class_logits is not None and class_logits.shape == (2, 2)
