"""Training a valid-padding U-Net: mirrored context around each case, targets cropped to the output tile.

A valid-padding network (the paper's U-Net: 572 in, 388 out) predicts only the centre of its input, the
plan's ``output_size`` inside ``patch_size``. Two things follow for training, both here so the loader and
the loop stay the same for every other network:

* each case is mirrored by the margin (as the paper extrapolates missing context, and as overlap-tile
  inference in :mod:`tasks.inference.overlap_tile` does), so output tiles reach the case's own borders and
  the network sees at its borders what it will see at inference, not zeros;
* the label and the weight map of a patch are centre-cropped to the network's output before the loss, so
  every loss (weighted CE with its maps, CE + Dice, ...) compares aligned voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from tasks.common.plan import Plan
from tasks.inference.overlap_tile import mirror_pad


class MirrorPadd(MapTransform):
    """Mirror ``keys`` by ``margin`` voxels per side, then further (mirrored too) up to ``min_size``.

    Deterministic, so ``CacheDataset`` keeps the padded case; image, label and weight map are mirrored
    alike, so they stay aligned. Works for any width (numpy mirrors repeatedly past an axis's length).
    """

    def __init__(self, keys: Sequence[str], margin: Sequence[int], min_size: Sequence[int]) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.margin = [int(m) for m in margin]
        self.min_size = [int(s) for s in min_size]

    def widths(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        """(before, after) per spatial axis: the margin, plus an even split of any shortfall to ``min_size``."""
        out = []
        for size, margin, least in zip(spatial, self.margin, self.min_size, strict=True):
            extra = max(0, least - (int(size) + 2 * margin))
            out.append((margin + extra // 2, margin + extra - extra // 2))
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            array = d[key].numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            d[key] = mirror_pad(array, self.widths(array.shape[1:]))
        return d


def valid_padding_steps(plan: Plan, keys: list[str], crop: Sequence[int]) -> list[MapTransform]:
    """The loader's extra deterministic step for a valid-padding plan (none otherwise): mirror every case
    by the margin and up to the random crop's size, so no zero padding reaches a patch."""
    margin = plan.valid_margin
    if margin is None:
        return []
    return [MirrorPadd(keys, margin, crop)]


def centre_crop(tensor: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """The centre ``spatial`` of ``tensor``'s trailing axes; the margin must be whole on each side."""
    shape = tuple(int(s) for s in tensor.shape[-len(spatial):])
    target = tuple(int(s) for s in spatial)
    if shape == target:
        return tensor
    if any(s < t or (s - t) % 2 for s, t in zip(shape, target, strict=True)):
        raise ValueError(f"cannot centre-crop {list(shape)} to the network output {list(target)}")
    return tensor[(..., *(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(shape, target, strict=True)))]


def crop_to_output(output: Any, label: torch.Tensor,
                   weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Label and weight map cropped to the network's main output (a no-op when it has the input's size).

    ``output`` is what the network returned: logits, or a ``NetworkOutput`` carrying them. Deep-supervision
    heads are not cropped: the ``unet`` refuses them with valid padding (their regions differ per stage).
    """
    logits = getattr(output, "logits", output)
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    spatial = logits.shape[2:]
    return centre_crop(label, spatial), None if weight is None else centre_crop(weight, spatial)
