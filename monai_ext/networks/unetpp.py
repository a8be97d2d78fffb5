"""UNet++ (Zhou et al., DLMIA 2018): nested, densely connected skips with deep supervision and pruning.

Node X^{i,j} (level i, column j) = block(cat[X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})]); column 0 is
the encoder. Heads sit on X^{0,1}, ..., X^{0,depth-1} ("UNet++ L1 ... L{depth-1}").

Pruning: X^{0,L} only depends on nodes with i + j <= L, so at inference the network can be cut down to
the sub-network of head L (fewer encoder levels too), which is what makes UNet++ L1-L3 fast. Set
``prune_level`` (option or :meth:`UNetPlusPlus.prune`); it applies in eval mode only (training always
runs the full network so every head is trained) and its output equals the full network's L-th head
(:meth:`UNetPlusPlus.forward_heads`). Heads other than the last exist only with ``deep_supervision=True``
because an untrained head is useless to prune to.

Deep supervision weights every head equally (``deep_supervision_weights = "equal"``, the paper's rule):
all heads are at full resolution and each is a network inference may select, so nnU-Net's "halving"
(which gives the coarsest head 0) would leave X^{0,1}, the L1 network, untrained.

Head averaging (:meth:`UNetPlusPlus.use_heads` ``"mean"``, the paper's "accurate mode"): in eval the full
network runs and ``forward`` returns the log of the heads' mean softmax, so a softmax of the output is
that mean probability. :meth:`UNetPlusPlus.for_inference` gives a view in one of these modes that shares
the weights, leaving the network itself as it was (inference shares one model across threads).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from .base import NetworkConfigError, SegmentationNetwork
from .blocks import ActSpec, DoubleConv, NormSpec, UpSample, check_features
from .stages import Encoder, SegHead, place_dropout

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(SegmentationNetwork):
    """UNet++ with configurable depth/widths and pruned inference.

    Args:
        features: widths per level, shallow -> deep (paper: 32..512; UNet 3+ comparison: 64..1024).
        norm / act / dropout / dropout_position / bias / upsample / up_kernel_size: as in
            :class:`~monai_ext.networks.unet.UNet` (the bottleneck dropout acts on X^{depth-1,0}).
        prune_level: 1 .. depth-1, or None for the full network (eval only; see module docstring).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`. Every node X^{i,j} convolves
            with ``kernel_sizes[i]`` and upsamples X^{i+1,j-1} by ``strides[i]``.
    """

    #: every head is full resolution and selectable at inference: none may get weight 0 (module docstring)
    deep_supervision_weights = "equal"
    #: eval-time output: ``"last"`` (the selected head) or ``"mean"`` (log mean softmax of all heads)
    HEAD_MODES = ("last", "mean")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        dropout_position: str = "bottleneck",
        bias: bool = True,
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        prune_level: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features)
        self.features = feats
        self.depth = len(feats)
        self._init_topology(feats)
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = partial(DoubleConv, spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias)
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size, bias=bias)

        self.encoder = Encoder(spatial_dims, in_channels, feats, block, self.strides, self.kernel_sizes)
        # nodes[i][j-1] is X^{i,j} (j >= 1), ups[i][j-1] upsamples X^{i+1,j-1} into it
        self.nodes = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(self.depth - 1):
            cols = self.depth - 1 - i
            kernel, scale = self.kernel_sizes[i], self.strides[i]
            self.nodes.append(nn.ModuleList(block((j + 1) * feats[i], feats[i], kernel_size=kernel)
                                            for j in range(1, cols + 1)))
            self.ups.append(nn.ModuleList(up(feats[i + 1], feats[i], scale=scale) for _ in range(cols)))
        # heads[L-1] sits on X^{0,L}; only the last one without deep supervision
        first_head = 1 if self.deep_supervision else self.depth - 1
        self.heads = nn.ModuleDict(
            {
                str(level): SegHead(spatial_dims, feats[0], out_channels)
                for level in range(first_head, self.depth)
            }
        )
        self._init_cgm(feats[-1])
        self.prune_level: int | None = None
        self.prune(prune_level)
        self.head_mode = "last"

    @classmethod
    def check_config(cls, features: Sequence[int] | None, options: Mapping[str, Any]) -> None:
        """Also refuse a ``prune_level`` the network would not have a trained head for."""
        super().check_config(features, options)
        level = options.get("prune_level")
        if level is None or features is None:
            return
        last = len(features) - 1
        if not 1 <= level <= last:
            raise NetworkConfigError("prune_level", f"prune_level must be in 1..{last} or None, got {level}")
        if level < last and not options.get("deep_supervision"):
            raise NetworkConfigError("prune_level", "prune_level below the last level needs deep_supervision=True")

    def prune(self, level: int | None) -> UNetPlusPlus:
        """Select the inference sub-network (UNet++ L``level``); None restores the full network."""
        if level is not None:
            if not 1 <= level <= self.depth - 1:
                raise ValueError(f"prune_level must be in 1..{self.depth - 1} or None, got {level}")
            if str(level) not in self.heads:
                raise ValueError(
                    "pruning below the last level needs deep_supervision=True (heads L1..L{n-1})"
                )
        self.prune_level = level
        return self

    def use_heads(self, mode: str) -> UNetPlusPlus:
        """Eval-time output: ``"last"`` (the head pruning selects) or ``"mean"`` (average of every head).

        ``"mean"`` needs the heads L1..L{depth-2}, which only deep supervision builds and trains, and a
        softmax output (``out_channels >= 2``); it always runs the full network, whatever ``prune_level``.
        """
        if mode not in self.HEAD_MODES:
            raise ValueError(f"heads must be one of {', '.join(self.HEAD_MODES)}, got {mode!r}")
        if mode == "mean" and (len(self.heads) < 2 or self.out_channels < 2):
            raise ValueError("averaging the heads needs deep_supervision=True (heads L1..L{n-1}) and out_channels >= 2")
        self.head_mode = mode
        return self

    def for_inference(self, prune_level: int | None = None, heads: str = "last") -> UNetPlusPlus:
        """A view of this network in one inference mode, sharing its weights; this network stays as it was.

        Why a view: batch inference shares one loaded model between threads (and evaluation scores one model
        at every level); ``prune``/``use_heads`` on it would change what every other user computes.
        ``prune_level=None`` means the full network (not this network's own ``prune_level``).
        """
        view = copy.copy(self)  # own attributes (prune_level, head_mode), the same submodules and weights
        return view.prune(prune_level).use_heads(heads)

    def _nested(self, x: torch.Tensor, level: int) -> list[list[torch.Tensor]]:
        """Compute all nodes X^{i,j} with i + j <= level; returns grid[i][j]."""
        grid = [[f] for f in self.encoder(x, num_levels=level + 1)]
        for j in range(1, level + 1):
            for i in range(level + 1 - j):
                below = grid[i + 1][j - 1]
                if i + 2 == self.depth:  # the bottleneck X^{depth-1,0}: end of the contracting path
                    below = self.bottleneck_dropout(below)
                up = self.ups[i][j - 1](below)
                grid[i].append(self.nodes[i][j - 1](torch.cat([*grid[i][:j], up], dim=1)))
        return grid

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        last = self.depth - 1
        if not self.training and self.head_mode == "mean":
            full = self._nested(x, last)
            return self._mean_of_heads(full), [], full[last][0]
        level = last if self.training or self.prune_level is None else self.prune_level
        grid = self._nested(x, level)
        aux: list[torch.Tensor] = []
        if self.wants_aux:  # nearest-to-main first: X^{0,last-1}, ..., X^{0,1}
            aux = [self.heads[str(j)](grid[0][j]) for j in range(last - 1, 0, -1)]
        deepest = grid[level][0]
        if level < last and self.cgm_head is not None:
            # the CGM classifies the bottleneck, which a pruned decoder never reaches: finish the encoder
            # alone (no nested nodes), so the pruned network filters with the full network's classifier
            deepest = self.encoder.finish(deepest, level + 1)
        return self.heads[str(level)](grid[0][level]), aux, deepest

    def _mean_of_heads(self, grid: list[list[torch.Tensor]]) -> torch.Tensor:
        """Log of the heads' mean softmax: logits whose softmax is the average of the heads' probabilities."""
        probabilities = torch.stack([torch.softmax(self.heads[k](grid[0][int(k)]).float(), dim=1)
                                     for k in self.heads]).mean(dim=0)
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))

    @torch.no_grad()
    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All available heads of the *full* network (L1 .. L{depth-1} order), for checks and ensembling."""
        spatial = [int(s) for s in x.shape[2:]]
        grid = self._nested(self._pad(x), self.depth - 1)
        return [self._crop(self.heads[k](grid[0][int(k)]), spatial) for k in sorted(self.heads, key=int)]
