"""One device resolver for training, evaluation and inference, so ``auto``/``cpu``/``cuda`` mean the same everywhere.

``auto`` takes CUDA when present and the CPU otherwise; an explicit ``cuda`` on a machine without one
is an error (a run that silently fell back to the CPU would take hours where minutes were planned).
"""

from __future__ import annotations

import torch


def resolve_device(choice: str, key: str = "device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` (or ``cuda:N``) → a torch device; ``key`` names the setting in errors."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is {choice!r} but no CUDA device is available")
    return device
