"""Deep-supervision weights fit the architecture: no head that counts is left untrained.

nnU-Net's ``halving`` gives the coarsest head weight 0. For UNet++ (all heads full resolution, each one a
network ``prune_level`` selects) that head is X^{0,1}, the L1 network; for UNet 3+ it is the bottleneck
(En5) the paper supervises. The schema therefore gives these networks ``equal`` by default, keeps
``halving`` where heads fall in resolution, and refuses ``halving`` on them.
"""

from __future__ import annotations

import pytest
import torch

from monai_ext.losses import build_loss
from monai_ext.networks import NETWORKS, build_network
from monai_ext.networks.stages import SegHead
from tasks.config import ConfigError, validate_params

FEATURES = [4, 8, 16, 32]


def _params(name: str, **loss_options: object):
    return validate_params({"model": {"name": name, "features": FEATURES, "options": {"deep_supervision": True}},
                            "train": {"loss": "ce", "loss_options": loss_options}})


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
def test_every_head_of_unetpp_and_unet3p_is_trained_by_default(name: str) -> None:
    """The resolved loss gives every head a gradient: nothing a user (or prune_level) may select is dead."""
    params = _params(name)
    assert params.train.loss_options["deep_supervision"] == "equal"
    torch.manual_seed(0)
    net = build_network(name, 2, 1, 2, features=FEATURES, deep_supervision=True).train()
    loss_fn = build_loss(params.train.loss, **params.train.loss_options)
    x, target = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 1, 32, 32))
    loss_fn(net(x), target).backward()
    heads = {n: m for n, m in net.named_modules() if isinstance(m, SegHead)}
    assert len(heads) >= 3
    dead = [n for n, m in heads.items() if m.conv.weight.grad is None or not m.conv.weight.grad.abs().sum() > 0]
    assert not dead, f"heads without gradient: {dead}"


def test_halving_stays_where_heads_fall_in_resolution() -> None:
    for name in ("unet", "res_unet", "mobile_unet"):
        assert _params(name).train.loss_options["deep_supervision"] == "halving", name
    assert {n for n, cls in NETWORKS.items() if cls.deep_supervision_weights == "equal"} == {"unetpp", "unet3p"}


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
@pytest.mark.parametrize("weights", ["halving", [1.0, 0.5, 0.0]])
def test_a_zero_weight_on_a_head_that_counts_is_refused(name: str, weights: object) -> None:
    with pytest.raises(ConfigError) as error:
        _params(name, deep_supervision=weights)
    assert "train.loss_options.deep_supervision" in str(error.value) and "model.name" in str(error.value)
    assert _params(name, deep_supervision=[1.0, 0.5, 0.25]).train.loss_options["deep_supervision"] == [1.0, 0.5, 0.25]


def test_one_form_for_the_loss_option() -> None:
    from monai_ext.losses.deep_supervision import check_deep_supervision, gives_a_head_zero

    assert check_deep_supervision(False) is None and check_deep_supervision(None) is None
    assert check_deep_supervision((1, 0.5)) == [1.0, 0.5]
    for bad in (True, "thirds", [], [0, 0], [1, -0.5], ["1"]):
        with pytest.raises(ValueError, match="deep_supervision"):
            check_deep_supervision(bad)
    assert gives_a_head_zero("halving") and gives_a_head_zero([1.0, 0.0]) and not gives_a_head_zero("equal")
    assert build_loss("ce", deep_supervision=False).deep_supervision is None
