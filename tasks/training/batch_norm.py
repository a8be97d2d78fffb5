"""Batch-norm statistics that match the weights they are used with ("precise BN").

A network in eval mode normalises with *running* statistics, an exponential average of the batches seen
while the weights were still moving. After a short training (the demo's 12 epochs are ~24 optimizer
steps) the average still carries 8% of its initial value (mean 0, variance 1) and the early weights'
statistics; a deep encoder compounds that error over dozens of layers — an EfficientNet encoder's 58
batch norms turned every eval-mode prediction into background while train mode segmented well. So
before a validation (and so before the weights are kept as the best) the statistics are recomputed
for the current weights: a plain average over centre patches of the training images, in train mode,
without gradients. The patches are deterministic, so no random state is consumed and training itself
is unchanged; only what eval mode sees is corrected. Training items are case records: each patch is
cut from the case's memory-mapped image, so only the patch is read, never the whole case.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.preprocess.case_store import open_case_dir


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def centre_patch(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``C×spatial`` cut to ``patch`` around the centre; an axis shorter than the patch is mirrored out first
    (what a valid-padding network's input tiles hold at the border, and closer to real content than zeros).
    The centre is cut first, so a memory-mapped image is read only there."""
    starts = [max(0, (size - want) // 2) for size, want in zip(image.shape[1:], patch, strict=True)]
    window = tuple(slice(start, start + want) for start, want in zip(starts, patch, strict=True))
    image = np.asarray(image[(slice(None), *window)])  # axes shorter than the patch are kept whole
    for axis, want in enumerate(patch, start=1):
        while image.shape[axis] < want:  # numpy's reflect cannot add more than size - 1 at once
            grow = min(want - image.shape[axis], image.shape[axis] - 1) if image.shape[axis] > 1 else want - 1
            widths = [(0, 0)] * image.ndim
            widths[axis] = (grow // 2, grow - grow // 2)
            image = np.pad(image, widths, mode="reflect" if image.shape[axis] > 1 else "edge")
    return np.ascontiguousarray(image, dtype=np.float32)


def _image(item: dict) -> np.ndarray:
    """The item's image: its array, or a record's memory-mapped ``image.npy`` (nothing read yet)."""
    return item["image"] if "image" in item else open_case_dir(Path(item["case_dir"]))["image"]


def _batches(items: Sequence[dict], patch: Sequence[int], batch_size: int, max_batches: int) -> Iterator[np.ndarray]:
    for start in range(0, min(len(items), batch_size * max_batches), batch_size):
        chunk = items[start:start + batch_size]
        if len(chunk) > 1:  # a batch of one has no batch statistics to speak of
            yield np.stack([centre_patch(_image(item), patch) for item in chunk])


def recalibrate_batch_norm(model: nn.Module, items: Sequence[dict], patch: Sequence[int], device: torch.device,
                           batch_size: int, max_batches: int = 16) -> bool:
    """Recompute every batch norm's running mean/variance for the current weights; False when there is
    nothing to do (no batch norm, too few images) or it cannot be done here (SyncBatchNorm: the other DDP
    ranks would have to join each forward pass, so those keep their running averages)."""
    norms = batch_norms(model)
    if not norms or any(isinstance(m, nn.SyncBatchNorm) for m in norms):
        return False
    batches = list(_batches(items, patch, max(batch_size, 2), max_batches))
    if not batches:
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(torch.from_numpy(batch).to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return True
