"""What a trained network costs: its parameter count and the peak memory training took.

Reported per run (MLflow params/metrics, ``train.json``) and compared across variants by ``compare``,
so the numbers must be measured the same way everywhere.
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not: the model's size on disk and in memory, not its degrees of freedom."""
    return sum(p.numel() for p in model.parameters())


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by torch. CPU: the process's peak resident set (a high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
