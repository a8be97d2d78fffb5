"""Behaviour common to every architecture: input-size handling, CGM, deep supervision, output packing.

Subclasses only implement :meth:`SegmentationNetwork.forward_parts`; everything that must behave the same
across variants (the output convention of :mod:`monai_ext.networks.outputs`, padding of awkward input
sizes, CGM gating) lives here once.

Input sizes (same-padding networks): a U-Net with ``depth`` levels downsamples ``depth - 1`` times, so
each axis must be divisible by its ``size_divisors`` entry, the product of that axis's ``strides``
(2**(depth-1) by default, 32 for EfficientNet; ``size_divisor`` is the one int every axis's divisor
divides). We *handle* other sizes rather than refuse them: the input is zero-padded at the far end of
each axis up to the next multiple of that axis's divisor, and every output is cropped back. This keeps
``sliding_window_inference`` with arbitrary ROI sizes working. The padded border does influence predictions
near it, so for best results pick ROI sizes that are multiples of ``size_divisors``. The paper-form
``unet`` with ``padding="valid"`` cannot be padded meaningfully and instead refuses sizes that do not fit
(see :func:`monai_ext.networks.unet.valid_unet_output_size`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import NORMS, check_features, make_norm, resize_to
from .outputs import NetworkOutput, cgm_probability
from .stages import DROPOUT_POSITIONS, CGMHead, place_dropout
from .topology import Axes, AxisSpec, check_entries, normalise, scales

#: options every registered network accepts (beside the architecture's own); see :func:`build_network`.
COMMON_OPTIONS = ("deep_supervision", "cgm", "cgm_dropout", "cgm_gate", "cgm_gate_threshold", "aux_resolution",
                  "strides", "kernel_sizes")

#: allowed values of string options, wherever a network takes them (checked by ``check_config``).
_CHOICES = {
    "aux_resolution": ("native", "full"),
    "upsample": ("deconv", "nontrainable"),
    "padding": ("same", "valid"),
    "dropout_position": DROPOUT_POSITIONS,
}


class NetworkConfigError(ValueError):
    """A setting a network cannot be built with; ``option`` names it (``features``, ``norm``, ``backbone``...)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def refuse_unless(option: str, check: Callable[..., Any], *args: Any) -> Any:
    """Run a constructor's own check (returning its result), re-raising its ValueError as a
    :class:`NetworkConfigError` for ``option``."""
    try:
        return check(*args)
    except (ValueError, TypeError, LookupError) as error:
        raise NetworkConfigError(option, str(error)) from None


class SegmentationNetwork(nn.Module):
    """Base class: returns logits (eval) or :class:`NetworkOutput` (training with DS/CGM).

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: image channels / number of logit channels.
        deep_supervision: return auxiliary heads in training.
        cgm: add the classification-guided module on the deepest features.
        cgm_dropout: dropout before the CGM 1x1 conv (0.5 in UNet 3+).
        cgm_gate: in eval, suppress foreground of images the CGM classifies as empty. Off by default: the
            pipeline post-filters, and a gate trained on few empty images can delete true lesions.
        cgm_gate_threshold: :func:`~monai_ext.networks.outputs.cgm_probability` below which an image is gated.
        aux_resolution: ``"native"`` (heads at their stage's resolution) or ``"full"`` (upsampled to input).
        strides / kernel_sizes: per-level downsampling factors and conv kernels, per axis (None: 2 and 3
            everywhere, the isotropic networks); see :mod:`monai_ext.networks.topology`. Subclasses call
            :meth:`_init_topology` and build from :attr:`strides` / :attr:`kernel_sizes`.
    """

    #: per-axis resolution factor the input must be divisible by; :meth:`_init_topology` sets it.
    size_divisors: Axes = ()
    #: whether awkward sizes are padded (True) or refused (False, e.g. valid-padding U-Net).
    pads_input: bool = True
    #: how many widths ``features`` may hold (None: no upper bound) and what they are, for messages.
    min_levels: int = 2
    max_levels: int | None = None
    features_meaning: str = "one per level"
    #: how a deep-supervision loss should weight this architecture's heads when the config does not say:
    #: ``"halving"`` (nnU-Net: heads at falling resolution, the coarsest gets 0) or ``"equal"`` (heads
    #: that are not a coarse by-product: UNet++'s selectable sub-networks, UNet 3+'s full-scale supervision).
    deep_supervision_weights: str = "halving"

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        deep_supervision: bool = False,
        cgm: bool = False,
        cgm_dropout: float = 0.5,
        cgm_gate: bool = False,
        cgm_gate_threshold: float = 0.5,
        aux_resolution: str = "native",
        strides: Sequence[AxisSpec] | None = None,
        kernel_sizes: Sequence[AxisSpec] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if aux_resolution not in ("native", "full"):
            raise ValueError(f"aux_resolution must be 'native' or 'full', got {aux_resolution!r}")
        if cgm_gate and not cgm:
            raise ValueError("cgm_gate=True needs cgm=True")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision
        self.cgm_enabled = cgm
        self.cgm_dropout = cgm_dropout
        self.cgm_gate = cgm_gate
        self.cgm_gate_threshold = cgm_gate_threshold
        self.aux_resolution = aux_resolution
        self.cgm_head: CGMHead | None = None
        self._topology_options = (strides, kernel_sizes)
        self.size_divisors = (1,) * spatial_dims
        self.strides: tuple[Axes, ...] = ()
        self.kernel_sizes: tuple[Axes, ...] = ()

    @property
    def size_divisor(self) -> int:
        """One int every axis's divisor divides (``2**(depth-1)`` for isotropic strides), for callers that
        pick one ROI size for all axes; :attr:`size_divisors` is the per-axis requirement."""
        return math.lcm(*self.size_divisors)

    @classmethod
    def topology_lengths(cls, features: Sequence[int] | None) -> tuple[int, int]:
        """How many ``strides`` and ``kernel_sizes`` entries this network takes with ``features``.

        One stride per downsampling and one kernel per resolution level; here ``len(features) - 1`` and
        ``len(features)`` (the constructor's default widths when ``features`` is None). Networks whose
        levels are not their widths (eff_unet) override it.
        """
        if features is None:
            features = inspect.signature(cls.__init__).parameters["features"].default
        return len(features) - 1, len(features)

    def _init_topology(self, features: Sequence[int]) -> None:
        """Normalise ``strides``/``kernel_sizes`` for ``features`` (per-axis tuples) and set the divisors."""
        n_strides, n_kernels = self.topology_lengths(features)
        strides, kernel_sizes = self._topology_options
        self.strides = refuse_unless("strides", normalise, "strides", strides, n_strides, self.spatial_dims)
        self.kernel_sizes = refuse_unless("kernel_sizes", normalise, "kernel_sizes", kernel_sizes, n_kernels,
                                          self.spatial_dims)
        self.size_divisors = scales(self.strides)[-1]

    @classmethod
    def check_config(cls, features: Sequence[int] | None, options: Mapping[str, Any]) -> None:
        """Refuse settings this network cannot be built with, cheaply: nothing is built, no data is needed.

        Why: a pipeline validates its configuration before ingest and preprocessing; the constructor checks
        the same things, but only once the data has been planned, minutes or hours later. Subclasses add
        their own constraints (calling this first). Raises :class:`NetworkConfigError` naming the option.
        """
        if features is not None:
            refuse_unless("features", check_features, features, cls.min_levels, cls.max_levels, cls.features_meaning)
        if "norm" in options:
            refuse_unless("norm", _check_norm, options["norm"])
        for option, allowed in _CHOICES.items():
            if option in options and options[option] not in allowed:
                raise NetworkConfigError(option, f"{option} must be one of {', '.join(allowed)}, "
                                                 f"got {options[option]!r}")
        if "dropout" in options:
            refuse_unless("dropout", place_dropout, 2, options["dropout"])
        if options.get("cgm_gate") and not options.get("cgm"):
            raise NetworkConfigError("cgm_gate", "cgm_gate=True needs cgm=True")
        cls._check_topology(features, options)

    @classmethod
    def _check_topology(cls, features: Sequence[int] | None, options: Mapping[str, Any]) -> None:
        """``strides``/``kernel_sizes``: entry counts for ``features``, per-axis lengths alike (and equal to
        ``options["spatial_dims"]`` when the caller passes it), positive ints, odd kernels."""
        if features is not None and len(features) < cls.min_levels:
            return  # the features check has refused them already
        lengths = dict(zip(("strides", "kernel_sizes"), cls.topology_lengths(features), strict=True))
        given = {option: options[option] for option in lengths if options.get(option) is not None}
        per_axis = {len(v) for values in given.values() if isinstance(values, Sequence) for v in values
                    if isinstance(v, Sequence) and not isinstance(v, str)}
        dims = options.get("spatial_dims") or (per_axis.pop() if len(per_axis) == 1 else None)
        for option, values in given.items():
            refuse_unless(option, check_entries, option, values, lengths[option], dims)

    def _init_cgm(self, bottleneck_channels: int) -> None:
        """Called by subclasses once they know the bottleneck width (the CGM sits on the deepest features)."""
        if self.cgm_enabled:
            self.cgm_head = CGMHead(self.spatial_dims, bottleneck_channels, self.cgm_dropout)

    @property
    def wants_aux(self) -> bool:
        """Whether this forward pass needs deep-supervision heads (training only: heads cost time)."""
        return self.training and self.deep_supervision

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Return (main logits, aux logits high->low resolution, deepest features). Subclasses implement.

        ``x`` is already padded to a multiple of :attr:`size_divisors` (per axis); aux logits may be empty when
        :attr:`wants_aux` is False.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ input size handling
    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs that cannot work, with a message that says what would."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a [B, C, *spatial] tensor with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, d in zip(reversed(x.shape[2:]), reversed(self.size_divisors), strict=True):  # last axis first
            pads += [0, (d - int(size) % d) % d]
        if any(pads):
            x = F.pad(x, pads)
        return x

    @staticmethod
    def _crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(spatial):
            return x
        return x[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial))]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor | NetworkOutput:
        """Apply the network; see :mod:`monai_ext.networks.outputs` for what comes back when."""
        self.check_input(x)
        spatial = [int(s) for s in x.shape[2:]]
        padded = self._pad(x) if self.pads_input else x
        logits, aux, deepest = self.forward_parts(padded)
        if self.pads_input:
            logits = self._crop(logits, spatial)

        need_class = self.cgm_head is not None and (self.training or self.cgm_gate)
        class_logits = self._class_logits(deepest, padded) if need_class else None

        if not self.training:
            if self.cgm_gate and class_logits is not None:
                logits = self._gate(logits, class_logits)
            return logits
        if not aux and class_logits is None:
            return logits
        full = padded.shape[2:] if self.pads_input else logits.shape[2:]
        return NetworkOutput(logits, self._finish_aux(aux, spatial, full), class_logits)

    def forward_with_class(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eval-time logits *and* the CGM presence logits ``[B, 2]`` (None: no CGM head, or not computable).

        Why a separate method: ``forward`` in eval must return one tensor (sliding windows, export), yet
        batch inference post-filters with the classifier's probability (always
        :func:`~monai_ext.networks.outputs.cgm_probability`, the one the loss trains). The logits are exactly
        what ``forward`` returns in the current mode when it returns a tensor (eval: gated only if
        ``cgm_gate``); call it on a model in eval mode. In every mode the CGM classifies the bottleneck
        (a pruned UNet++ finishes its encoder for it), see :meth:`_class_logits`.
        """
        self.check_input(x)
        spatial = [int(s) for s in x.shape[2:]]
        padded = self._pad(x) if self.pads_input else x
        logits, _aux, deepest = self.forward_parts(padded)
        if self.pads_input:
            logits = self._crop(logits, spatial)
        class_logits = self._class_logits(deepest, padded)
        if self.cgm_gate and class_logits is not None:
            logits = self._gate(logits, class_logits)
        return logits, class_logits

    def _class_logits(self, deepest: torch.Tensor, padded: torch.Tensor) -> torch.Tensor | None:
        """The CGM head on ``deepest`` (None: no CGM head), which must be the bottleneck it was built on.

        Why the check: ``forward_parts`` must return the bottleneck as its third value in every mode (a
        pruned UNet++ finishes its encoder for it). A shallower map would crash the head on its width or,
        were the widths equal, be classified at the wrong level without a word, so a network that breaks
        the contract fails loudly here. The bottleneck of a padding network lies at ``padded /
        size_divisors`` (per axis); the valid-padding U-Net cannot be cut short, so only the width is checked there.
        """
        head = self.cgm_head
        if head is None:
            return None
        sizes = zip(deepest.shape[2:], self.size_divisors, padded.shape[2:], strict=True)
        wrong_size = self.pads_input and any(int(d) * k != int(p) for d, k, p in sizes)
        if deepest.shape[1] != head.conv.in_channels or wrong_size:
            raise RuntimeError(f"{type(self).__name__}.forward_parts returned a {tuple(deepest.shape[1:])} map "
                               f"for the CGM, not the bottleneck it classifies")
        return head(deepest)

    def _finish_aux(
        self, aux: list[torch.Tensor], spatial: Sequence[int], padded: Sequence[int]
    ) -> list[torch.Tensor]:
        out = []
        if not self.pads_input:  # nothing was padded: only resizing may be needed
            return [resize_to(a, padded) if self.aux_resolution == "full" else a for a in aux]
        for a in aux:
            if self.aux_resolution == "full":
                out.append(self._crop(resize_to(a, padded), spatial))
            else:  # crop the padded border at the head's own scale
                scales = [int(p) // int(s) for p, s in zip(padded, a.shape[2:], strict=True)]
                out.append(self._crop(a, [math.ceil(s / k) for s, k in zip(spatial, scales, strict=True)]))
        return out

    def _gate(self, logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
        """Suppress foreground logits of images whose CGM says 'no foreground' (eval, opt-in)."""
        present = cgm_probability(class_logits) >= self.cgm_gate_threshold
        present = present.view(-1, *([1] * (logits.dim() - 1)))
        low = torch.full_like(logits, -1e4)
        if logits.shape[1] > 1:  # keep the background channel so softmax picks it
            low = torch.cat([logits[:, :1], low[:, 1:]], dim=1)
        return torch.where(present, logits, low)


def _check_norm(norm: Any) -> None:
    if isinstance(norm, str) and norm.lower() not in (*NORMS, "none"):
        raise ValueError(f"norm must be one of {', '.join(NORMS)} or none, got {norm!r}")
    make_norm(norm, 2, 8)  # a MONAI tuple spec: building one small layer is the cheapest full check
