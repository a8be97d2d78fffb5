"""The one place that defines what every network in :mod:`monai_ext.networks` returns.

Why a convention at all: inference code (MONAI ``sliding_window_inference``, ONNX/TorchScript export,
the pipeline's batch segmentation) wants *one tensor*, while training with deep supervision or a
classification-guided module (CGM) needs several outputs. Rather than make every caller inspect the
architecture, every network follows the same rule:

* **eval mode** (``model.eval()``): ``forward`` returns ONE logits tensor ``[B, out_channels, *spatial]``
  at input resolution. Deep-supervision heads and the CGM classifier are not computed. (Optional CGM
  gating, ``cgm_gate=True``, may suppress foreground in that tensor; it is off by default because the
  pipeline does its own post-filtering.)
* **training mode, no deep supervision and no CGM**: a plain logits tensor, exactly as in eval.
* **training mode with** ``deep_supervision=True`` **and/or** ``cgm=True``: a :class:`NetworkOutput`:

  - ``logits``: main head, ``[B, out_channels, *spatial]`` at input resolution;
  - ``aux_logits``: deep-supervision heads, ordered **from highest resolution to lowest** (for UNet++,
    whose heads all share full resolution, nearest-to-main first: X^{0,depth-2}, ..., X^{0,1}).
    By default (``aux_resolution="native"``) each head is at the *native* resolution of its decoder
    stage (input size / 2**k, rounded up), which is cheap in 3D; the loss wrapper resizes the target
    per head (nnU-Net style). ``aux_resolution="full"`` upsamples each head (bi/trilinear) to input
    resolution instead (UNet 3+ paper form). Empty list without deep supervision;
  - ``class_logits``: ``[B, 2]`` logits of the CGM presence classifier (column 0 = "no foreground",
    column 1 = "foreground present"; train with ``BCEWithLogitsLoss`` against the one-hot presence
    label, as in the UNet 3+ paper), or ``None`` without CGM.

Logits are never passed through sigmoid/softmax inside the networks: activation belongs to the loss
and to post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["NetworkOutput", "main_logits"]


@dataclass
class NetworkOutput:
    """Training-time output of a network with deep supervision and/or CGM (see module docstring)."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor] = field(default_factory=list)
    class_logits: torch.Tensor | None = None


def main_logits(output: torch.Tensor | NetworkOutput) -> torch.Tensor:
    """Return the main logits whatever form ``output`` takes, so metrics code needs no branching."""
    return output.logits if isinstance(output, NetworkOutput) else output
