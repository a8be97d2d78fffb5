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
    stage (input size / 2**k, rounded up; per axis, divided by the product of the ``strides`` above it),
    which is cheap in 3D; the loss wrapper resizes the target per head (nnU-Net style).
    ``aux_resolution="full"`` upsamples each head (bi/trilinear) to input resolution instead (UNet 3+
    paper form). Empty list without deep supervision;
  - ``class_logits``: ``[B, 2]`` logits of the CGM presence classifier (column 0 = "no foreground",
    column 1 = "foreground present"), or ``None`` without CGM. What they *mean* is
    :func:`cgm_probability` and nothing else (see below).

Logits are never passed through sigmoid/softmax inside the networks: activation belongs to the loss
and to post-processing.

**What the CGM logits mean** (one definition, used by the loss *and* every gate): the probability that
an image holds foreground is the 2-class softmax of its logits, ``P(present) = softmax(l)[:, 1] =
sigmoid(l_present − l_absent)`` (:func:`cgm_probability`; :func:`cgm_presence_logit` is the log-odds
inside it). The CGM loss (:class:`monai_ext.losses.CGMLoss`) is the binary cross-entropy of exactly
this probability, and the network's eval gate (``cgm_gate``) and the pipeline's inference post-filter
threshold exactly this probability. Why one function: the loss only ever sees the *difference* of the
two logits (softmax is blind to a common shift), so any other reading — ``sigmoid(l_present)`` alone,
as the gates once used — depends on an offset training never pins down: logits (absent 5, present 3)
mean 0.12 to the loss but passed such a gate at 0.95, and (−4, −2), 0.88 to the loss, were gated at
0.12, deleting true lesions. Why the softmax form rather than a BCE on column 1 alone: it is what the
CE-trained checkpoints already learned, it agrees with the UNet 3+ reference's ``argmax`` (P > 0.5 iff
the present logit wins), and it keeps the ``[B, 2]`` head that exported models carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["NetworkOutput", "cgm_presence_logit", "cgm_probability", "main_logits"]


@dataclass
class NetworkOutput:
    """Training-time output of a network with deep supervision and/or CGM (see module docstring)."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor] = field(default_factory=list)
    class_logits: torch.Tensor | None = None


def main_logits(output: torch.Tensor | NetworkOutput) -> torch.Tensor:
    """Return the main logits whatever form ``output`` takes, so metrics code needs no branching."""
    return output.logits if isinstance(output, NetworkOutput) else output


def cgm_presence_logit(class_logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` log-odds that each image holds foreground: ``present − absent`` for ``[B, 2]`` CGM logits.

    Why it exists beside :func:`cgm_probability`: the loss needs the log-odds itself (``BCEWithLogits``
    stays finite and keeps its gradient where the probability rounds to 0 or 1). A one-logit classifier
    (``[B]`` or ``[B, 1]``) already is the log-odds. Anything else is refused rather than guessed at.
    """
    if class_logits.ndim == 1:
        return class_logits
    if class_logits.ndim == 2 and class_logits.shape[1] == 1:
        return class_logits[:, 0]
    if class_logits.ndim == 2 and class_logits.shape[1] == 2:
        return class_logits[:, 1] - class_logits[:, 0]
    raise ValueError(f"CGM class logits must be [B], [B, 1] or [B, 2], got {tuple(class_logits.shape)}")


def cgm_probability(class_logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` float probability that each image holds foreground, as the CGM loss trains it.

    ``softmax(class_logits)[:, 1] = sigmoid(present − absent)`` for ``[B, 2]`` logits (see the module
    docstring for why this is the only reading); computed in float32 so an AMP half-precision forward
    and a float one threshold alike.
    """
    return torch.sigmoid(cgm_presence_logit(class_logits.float()))
