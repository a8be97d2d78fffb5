"""Patch and batch size fitted to a memory budget (``train.memory_budget_gb``), nnU-Net's way but measured.

nnU-Net v2 starts from a patch with the aspect ratio of the target spacing and the volume of 256³ (2D: 2048²)
voxels, clipped to the median shape, and shrinks the axis that is largest relative to the median shape until
its static estimate of the network's feature maps fits the reference (8 GB holds 560 M conv-output values at
batch 2 in 3D, 85 M at batch 12 in 2D); the batch then uses what is left, capped so one batch covers at most
5% of the dataset's voxels, and never below 2. Here the same loop sizes *the planned network* (any of the
variants, with the plan's strides and kernels):

- on CUDA it is **measured**: a real forward and backward (AMP as training runs it) at batch 1 and 2 gives
  the fixed and the per-sample bytes (``torch.cuda.max_memory_allocated``);
- on the CPU it is **estimated** from activation sizes: the network runs on PyTorch's ``meta`` device (shapes
  only, no memory, no arithmetic), every convolution's output is counted, and nnU-Net's calibration (bytes
  per conv-output value under AMP, from the reference above) turns the count into bytes, plus 16 bytes per
  parameter (weights, gradients, optimizer state). The estimate is what an 8 GB GPU would hold, so a plan
  made on a laptop trains on the cluster's GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.preprocess.topology import Topology, fit_topology, plan_topology

GIB = 2 ** 30
#: nnU-Net v2's reference: conv-output values (one sample) that fit ``REFERENCE_GB`` at ``REFERENCE_BATCH``.
REFERENCE_UNITS = {2: 85_000_000, 3: 560_000_000}
REFERENCE_BATCH = {2: 12, 3: 2}
REFERENCE_GB = 8.0
INITIAL_PATCH_VOXELS = {2: 2048 ** 2, 3: 256 ** 3}
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05
BYTES_PER_PARAMETER = 16

NetworkFactory = Callable[[Topology], nn.Module]


@dataclass(frozen=True)
class MemoryCost:
    """Bytes a training step needs: ``fixed`` (weights, optimizer state) + ``per_sample`` × batch."""

    fixed: float
    per_sample: float
    method: str  # "measured (cuda)" | "estimated (activation sizes)"

    def at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch


def bytes_per_unit(spatial_dims: int) -> float:
    """nnU-Net's calibration: bytes per conv-output value of one sample, under AMP on a GPU."""
    return REFERENCE_GB * GIB / (REFERENCE_UNITS[spatial_dims] * REFERENCE_BATCH[spatial_dims])


def conv_output_units(network: nn.Module, in_channels: int, patch: Sequence[int]) -> int:
    """Values all convolutions of ``network`` (built on the ``meta`` device) output for one sample of ``patch``."""
    counted = [0]

    def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        counted[0] += int(output.numel())

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, nn.modules.conv._ConvNd)]
    network.train()
    with torch.no_grad():
        network(torch.empty((1, in_channels, *patch), device="meta"))
    for hook in hooks:
        hook.remove()
    return counted[0]


def estimated_cost(factory: NetworkFactory, topology: Topology, in_channels: int, patch: Sequence[int]) -> MemoryCost:
    """The CPU's estimate (module docstring); also what the CUDA path shrinks with before measuring. The
    network is built once, on the ``meta`` device: shapes only, no memory, no arithmetic."""
    with torch.device("meta"):
        network = factory(topology)
    parameters = sum(p.numel() for p in network.parameters())
    units = conv_output_units(network, in_channels, patch)
    return MemoryCost(fixed=parameters * BYTES_PER_PARAMETER, per_sample=units * bytes_per_unit(len(patch)),
                      method="estimated (activation sizes)")


def measured_cost(factory: NetworkFactory, topology: Topology, in_channels: int, num_classes: int,
                  patch: Sequence[int], device: torch.device, amp: bool) -> MemoryCost:
    """Peak CUDA memory of a real forward + backward at batch 1 and 2 (the difference is one sample)."""
    network = factory(topology).to(device).train()
    peaks = []
    for batch in (1, 2):
        network.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        image = torch.randn((batch, in_channels, *patch), device=device)
        label = torch.randint(0, num_classes, (batch, *patch), device=device)
        with torch.autocast("cuda", enabled=amp):
            output = network(image)
            logits = output if isinstance(output, torch.Tensor) else output.logits
            loss = nn.functional.cross_entropy(logits.float(), label)
        loss.backward()
        torch.cuda.synchronize(device)
        peaks.append(float(torch.cuda.max_memory_allocated(device)))
        del image, label, output, logits, loss
    del network
    torch.cuda.empty_cache()
    per_sample = max(peaks[1] - peaks[0], 1.0)
    return MemoryCost(fixed=max(peaks[0] - per_sample, 0.0), per_sample=per_sample, method="measured (cuda)")


def initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """nnU-Net v2: the target spacing's aspect ratio at 256³ (2D: 2048²) voxels, clipped to the median shape."""
    dims = len(spacing)
    inverse = 1.0 / np.asarray(spacing, dtype=float)
    scaled = inverse * (INITIAL_PATCH_VOXELS[dims] / np.prod(inverse)) ** (1.0 / dims)
    return [max(1, int(min(round(s), round(m)))) for s, m in zip(scaled, median_shape, strict=True)]


def shrink_once(spacing: Sequence[float], patch: Sequence[int], median_shape: Sequence[float],
                depth: int) -> tuple[Topology, tuple[int, ...]] | None:
    """nnU-Net's step: the axis largest relative to the median shape loses one divisor; None: cannot shrink."""
    topology = plan_topology(spacing, patch, depth)
    ratios = [p / max(m, 1.0) for p, m in zip(patch, median_shape, strict=True)]
    for axis in np.argsort(ratios)[::-1]:
        trial = list(patch)
        trial[axis] -= topology.divisors[axis]
        if trial[axis] < 1:
            continue
        step = plan_topology(spacing, trial, depth).divisors[axis]  # smaller patch: maybe fewer poolings
        smaller = list(patch)
        smaller[axis] = max(1, patch[axis] - step)
        if smaller[axis] < patch[axis]:
            return fit_topology(spacing, smaller, depth)
    return None


def batch_for(cost: MemoryCost, budget_bytes: float, patch: Sequence[int], dataset_voxels: float) -> int:
    """What fits beside the network, capped at 5% of the dataset's voxels per batch, never below 2."""
    fitting = math.floor((budget_bytes - cost.fixed) / cost.per_sample) if cost.per_sample > 0 else MIN_BATCH
    covered = round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(patch, dtype=np.float64)))
    return max(min(fitting, covered), MIN_BATCH)


@dataclass(frozen=True)
class FittedPatch:
    """The plan's patch, topology and batch, and what the memory check found (``fits`` false: even the
    smallest patch at batch 2 exceeds the budget; training still runs with it, the plan says so)."""

    patch: tuple[int, ...]
    topology: Topology
    batch_size: int
    cost: MemoryCost
    fits: bool


@dataclass(frozen=True)
class BudgetRequest:
    """What the fit works from: the data (spacing, median shape, dataset voxels), the network, the budget."""

    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    dataset_voxels: float
    depth: int
    in_channels: int
    num_classes: int
    budget_gb: float
    device: torch.device
    amp: bool = True
    patch: tuple[int, ...] | None = None  # train.patch_size: kept as given (the network pads other sizes)
    batch_size: int | None = None  # train.batch_size: kept as given


def fit_to_budget(factory: NetworkFactory, request: BudgetRequest) -> FittedPatch:
    """The largest patch (nnU-Net's shrinking order) whose batch of 2 fits, then the batch that fits it."""
    budget = request.budget_gb * GIB
    spacing, depth = request.spacing, request.depth
    per_voxel: dict[Topology, MemoryCost] = {}

    def cost_of(topology: Topology, patch: Sequence[int], measure: bool) -> MemoryCost:
        if measure:
            return measured_cost(factory, topology, request.in_channels, request.num_classes, patch,
                                 request.device, request.amp)
        if any(p % d for p, d in zip(patch, topology.divisors, strict=True)):
            return estimated_cost(factory, topology, request.in_channels, patch)
        # Every level's map is then patch / divisor exactly, so the count is linear in the patch's voxels:
        # one meta pass per topology, not per candidate patch.
        voxels = float(np.prod(patch, dtype=np.float64))
        if topology not in per_voxel:
            found = estimated_cost(factory, topology, request.in_channels, patch)
            per_voxel[topology] = MemoryCost(found.fixed, found.per_sample / voxels, found.method)
        unit = per_voxel[topology]
        return MemoryCost(unit.fixed, unit.per_sample * voxels, unit.method)

    if request.patch is not None:
        topology, patch = plan_topology(spacing, request.patch, depth), tuple(request.patch)
        cost = cost_of(topology, patch, request.device.type == "cuda")
    else:
        topology, patch = fit_topology(spacing, initial_patch(spacing, request.median_shape), depth)
        # Shrink on the (free) estimate first; on CUDA, then measure and keep shrinking while it does not fit.
        for measure in ((False, True) if request.device.type == "cuda" else (False,)):
            cost = cost_of(topology, patch, measure)
            while cost.at(MIN_BATCH) > budget:
                smaller = shrink_once(spacing, patch, request.median_shape, depth)
                if smaller is None:
                    break
                topology, patch = smaller
                cost = cost_of(topology, patch, measure)
    batch = request.batch_size or batch_for(cost, budget, patch, request.dataset_voxels)
    return FittedPatch(patch=tuple(int(p) for p in patch), topology=topology, batch_size=int(batch), cost=cost,
                       fits=cost.at(batch) <= budget)
