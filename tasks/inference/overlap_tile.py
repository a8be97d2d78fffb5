"""Overlap-tile inference for valid-padding networks (Ronneberger et al. 2015, Fig. 2).

A valid-padding U-Net's output is smaller than its input (unpadded 3x3 convs: 572 in, 388 out), so
MONAI's ``sliding_window_inference``, which assumes an output of the window's own size, cannot stitch
it. Here the image is mirror-padded by the margin (the paper extrapolates missing context by
mirroring), windows of the input tile size are run, and each one's *output* tile is blended into its
own place, so every image size gets a prediction of its own size. Tiles are blended with the same
Gaussian importance map as the same-padding path, so overlapping tiles agree at the seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from monai_ext.networks.unet import valid_unet_output_size

Predictor = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, ...]"]


def is_valid_padding(model: Any) -> bool:
    """True for networks whose output is smaller than their input (the paper-form ``unet``)."""
    return getattr(model, "padding", "same") == "valid" and not getattr(model, "pads_input", True)


def output_tile(model: Any, roi_size: Sequence[int]) -> tuple[int, ...] | None:
    """The output tile a valid-padding network gives for the input tile ``roi_size``; None: same padding.

    Raises ValueError naming the nearest valid sizes when ``roi_size`` does not fit the network, so a
    wrong ``infer.roi_size`` is refused before any window runs.
    """
    if not is_valid_padding(model):
        return None
    depth = int(model.depth)
    try:
        return tuple(valid_unet_output_size(int(size), depth) for size in roi_size)
    except ValueError as error:
        raise ValueError(f"window {list(roi_size)} is not an input tile of this valid-padding network "
                         f"(infer.roi_size / the plan's patch_size): {error}") from None


def mirror_pad(array: np.ndarray, widths: Sequence[tuple[int, int]]) -> np.ndarray:
    """Mirror (reflect, edge not repeated) the trailing ``len(widths)`` axes; any width, even beyond the
    axis length (numpy reflects repeatedly), which small images and large margins need."""
    lead = [(0, 0)] * (array.ndim - len(widths))
    if not any(before or after for before, after in widths):
        return array
    return np.pad(array, lead + [(int(b), int(a)) for b, a in widths], mode="reflect")


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Output-tile origins along one axis of ``size`` (>= ``tile``): a step of ``tile * (1 - overlap)``,
    the last tile flush with the end, as MONAI places its windows."""
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _origins(covered: Sequence[int], tile: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    axes = [tile_starts(c, t, overlap) for c, t in zip(covered, tile, strict=True)]
    grids = np.meshgrid(*[np.asarray(a) for a in axes], indexing="ij")
    return [tuple(int(v) for v in point) for point in zip(*(g.ravel() for g in grids), strict=True)]


def _windows(padded: torch.Tensor, origins: Sequence[tuple[int, ...]], roi: Sequence[int]) -> torch.Tensor:
    """Input windows ``[B, C, *roi]``: in padded coordinates the input for output origin ``p`` starts at ``p``."""
    return torch.stack([padded[(slice(None), *(slice(p, p + r) for p, r in zip(origin, roi, strict=True)))]
                        for origin in origins])


@torch.no_grad()
def overlap_tile_inference(inputs: torch.Tensor, roi_size: Sequence[int], out_size: Sequence[int],
                           predictor: Predictor, overlap: float = 0.25, sw_batch_size: int = 4,
                           sw_device: torch.device | str = "cpu",
                           device: torch.device | str = "cpu") -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Blend ``predictor``'s output tiles over ``inputs`` ``[1, C, *spatial]``; same return form as the predictor.

    ``predictor`` maps windows ``[B, C, *roi_size]`` to ``[B, K, *out_size]`` (or a tuple of such tensors,
    e.g. probabilities and a CGM presence map); each result is ``[1, K, *spatial]`` on ``device``.
    An axis shorter than the output tile is mirrored out to one tile and cropped back afterwards.
    """
    spatial = [int(s) for s in inputs.shape[2:]]
    margin = [(r - o) // 2 for r, o in zip(roi_size, out_size, strict=True)]
    covered = [max(s, o) for s, o in zip(spatial, out_size, strict=True)]
    widths = [(m, m + c - s) for m, c, s in zip(margin, covered, spatial, strict=True)]
    padded = torch.from_numpy(mirror_pad(inputs[0].detach().cpu().numpy(), widths))
    importance = compute_importance_map(list(out_size), mode="gaussian", sigma_scale=0.125,
                                        device=device).float()
    norm = torch.zeros(covered, device=device)
    origins = _origins(covered, out_size, overlap)
    sums: list[torch.Tensor] = []
    single = True
    for first in range(0, len(origins), sw_batch_size):
        chunk = origins[first:first + sw_batch_size]
        result = predictor(_windows(padded, chunk, roi_size).to(sw_device))
        single = isinstance(result, torch.Tensor)
        parts = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        if not sums:
            sums = [torch.zeros((part.shape[1], *covered), device=device) for part in parts]
        for index, origin in enumerate(chunk):
            place = tuple(slice(p, p + o) for p, o in zip(origin, out_size, strict=True))
            for total, part in zip(sums, parts, strict=True):
                total[(slice(None), *place)] += part[index].to(device).float() * importance
            norm[place] += importance
    crop = (slice(None), *(slice(0, s) for s in spatial))
    blended = tuple((total / norm)[crop][None] for total in sums)
    return blended[0] if single else blended
