"""Reproducibility and resumption: seeding, RNG state that loads with ``weights_only``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values, so the checkpoint loads with ``weights_only``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _random_states(obj: Any, found: list[np.random.RandomState], seen: set[int]) -> None:
    """Every ``RandomState`` reachable from ``obj`` (the dataset, its sampler and transforms), in a fixed order."""
    if id(obj) in seen or isinstance(obj, (np.ndarray, torch.Tensor, str, bytes, int, float)) or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _random_states(item, found, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            _random_states(item, found, seen)
    elif hasattr(obj, "__dict__"):
        for item in vars(obj).values():
            _random_states(item, found, seen)


def loader_rng_state(dataset: Any) -> list[list[Any]]:
    """The random states the data pipeline keeps itself (MONAI seeds the dataset's sampler and augmentation
    once, when the loader is built): without them a resumed run would draw other patches than an
    uninterrupted one. Tensors and plain values, so the checkpoint loads with ``weights_only``."""
    found: list[np.random.RandomState] = []
    _random_states(dataset, found, set())
    states = []
    for state in found:
        kind, keys, pos, has_gauss, cached = state.get_state()
        states.append([kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached])
    return states


def set_loader_rng_state(dataset: Any, states: list[list[Any]]) -> None:
    """Restore ``loader_rng_state`` into a data pipeline built the same way (same plan and settings)."""
    found: list[np.random.RandomState] = []
    _random_states(dataset, found, set())
    if len(found) != len(states):
        raise ValueError(f"the data pipeline has {len(found)} random states, the checkpoint {len(states)}")
    for target, (kind, keys, pos, has_gauss, cached) in zip(found, states, strict=True):
        target.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
