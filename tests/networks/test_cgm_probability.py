"""One meaning for the CGM's two logits: the loss and the network's own gate read the same probability.

The loss trains a 2-class softmax, which learns only ``present − absent``. A gate that read
``sigmoid(present)`` alone passed logits (absent 5, present 3) at 0.95 though the loss means 0.12, and cut
(−4, −2), 0.88 to the loss, at 0.12 — deleting true lesions. Every path now goes through
:func:`monai_ext.networks.cgm_probability`; the inference post-filter's paths are in
``tests/infer/test_cgm_probability_paths.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_ext.losses import CGMLoss
from monai_ext.networks import build_network, cgm_probability

#: (absent, present) logits, what the loss means by them, and whether that is "foreground present"
PAIRS = [((5.0, 3.0), 0.1192, False), ((-4.0, -2.0), 0.8808, True)]


def _fixed_cgm(net: torch.nn.Module, pair: tuple[float, float]) -> torch.nn.Module:
    """Make the CGM head answer ``pair`` for every image (zero weights: the max-pooled bias is the output)."""
    with torch.no_grad():
        net.cgm_head.conv.weight.zero_()
        net.cgm_head.conv.bias.copy_(torch.tensor(pair))
    return net


def test_cgm_probability_is_the_softmax_present_probability() -> None:
    logits = torch.tensor([pair for pair, _, _ in PAIRS])
    probability = cgm_probability(logits)
    assert probability.tolist() == pytest.approx([p for _, p, _ in PAIRS], abs=1e-4)
    torch.testing.assert_close(probability, torch.softmax(logits, dim=1)[:, 1])
    torch.testing.assert_close(cgm_probability(logits + 7.0), probability)  # blind to a common shift, as the loss
    torch.testing.assert_close(cgm_probability(logits.half()), probability, atol=1e-3, rtol=0)  # AMP reads alike
    assert cgm_probability(torch.tensor([[-2.0], [2.0]])).tolist() == pytest.approx([0.1192, 0.8808], abs=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        cgm_probability(torch.zeros(2, 3))


@pytest.mark.parametrize(("pair", "probability", "present"), PAIRS)
def test_the_loss_is_the_bce_of_that_probability(pair: tuple[float, float], probability: float,
                                                 present: bool) -> None:
    logits = torch.tensor([pair], requires_grad=True)
    for label in (0, 1):
        target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        target[0, 0, 1, 1] = label
        expected = F.binary_cross_entropy(cgm_probability(logits), torch.tensor([float(label)]))
        assert CGMLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # what the loss favours is what the probability says: the lower loss is on the side of P >= 0.5
    empty, full = torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.ones(1, 1, 4, 4, dtype=torch.long)
    assert (CGMLoss()(logits, full) < CGMLoss()(logits, empty)).item() is present
    CGMLoss()(logits, full).backward()
    assert logits.grad is not None and logits.grad.sum().abs().item() < 1e-6  # a common shift is never trained


@pytest.mark.parametrize(("pair", "probability", "present"), PAIRS)
def test_network_gate_reads_the_loss_probability(pair: tuple[float, float], probability: float,
                                                 present: bool) -> None:
    torch.manual_seed(0)
    net = _fixed_cgm(build_network("unet", 2, 1, 2, features=(4, 8, 16), cgm=True, cgm_gate=True,
                                   cgm_dropout=0.0), pair).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        gated = net(x)
        logits, class_logits = net.forward_with_class(x)
    assert cgm_probability(class_logits).tolist() == pytest.approx([probability] * 2, abs=1e-4)
    suppressed = bool((gated[:, 1] == -1e4).all())
    assert suppressed is not present, f"P(present)={probability} but the gate {'cut' if suppressed else 'kept'} it"
    torch.testing.assert_close(logits, gated)


def test_pruned_unetpp_classifies_with_the_full_networks_cgm() -> None:
    """Pruned to L1 or L2, the eval forward finishes the encoder alone for the CGM: the same bottleneck, so
    the same presence logits as the full network (before: a RuntimeError, or with equal widths a shallower
    level classified without a word)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    for features, level in (((4, 8, 16, 32), 1), ((8, 8, 8, 8), 2)):
        net = build_network("unetpp", 2, 1, 2, features=features, deep_supervision=True, cgm=True,
                            prune_level=level).eval()
        with torch.no_grad():
            logits, class_logits = net.forward_with_class(x)
            torch.testing.assert_close(logits, net(x))
            _, full_class_logits = net.for_inference(None).forward_with_class(x)
        torch.testing.assert_close(class_logits, full_class_logits)
        net.encoder.finish = lambda x, start: x  # a forward that hands the CGM a shallower map fails loudly
        with torch.no_grad(), pytest.raises(RuntimeError, match="not the bottleneck"):
            net.forward_with_class(x)


def test_a_pruned_unetpp_may_gate_with_its_cgm() -> None:
    """The pruned network reaches the bottleneck for its CGM, so ``cgm_gate`` with ``prune_level`` is allowed
    (refused before: "a pruned UNet++ does not compute the bottleneck")."""
    torch.manual_seed(0)
    net = build_network("unetpp", 2, 1, 2, features=(4, 8, 16, 32), deep_supervision=True, cgm=True, cgm_gate=True,
                        prune_level=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)
