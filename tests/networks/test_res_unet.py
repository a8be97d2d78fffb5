"""res_unet is MONAI's residual ``UNet`` topology: same parameters, same outputs given the same weights."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet as MonaiUNet
from networks_cases import n_params

from monai_ext.networks import build_network


def _leaves(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules owning parameters or buffers, in registration order."""
    return [
        m
        for m in module.modules()
        if not list(m.children()) and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_res_unet_equals_monai_residual_unet(dims: int) -> None:
    feats = (4, 8, 16, 32)
    torch.manual_seed(0)
    ours = build_network("res_unet", dims, 1, 3, features=feats)
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


def test_res_unet_options() -> None:
    net = build_network("res_unet", 2, 1, 2, features=(4, 8, 16), num_res_units=1, up_kernel_size=2)
    assert net(torch.randn(2, 1, 20, 28)).shape == (2, 2, 20, 28)  # awkward sizes are padded and cropped
    with pytest.raises(ValueError, match="num_res_units"):
        build_network("res_unet", 2, 1, 2, features=(4, 8, 16), num_res_units=0)
