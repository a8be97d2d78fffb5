"""Preprocessed cases as memory-mappable arrays, so training reads a patch without loading its case.

A few hundred CT volumes do not fit in memory, so (as nnU-Net does) every case is a folder of
uncompressed ``.npy`` arrays that ``np.load(..., mmap_mode="r")`` maps without reading::

    cases/<id>/image.npy        C×spatial float32, normalised
    cases/<id>/label.npy        1×spatial uint8
    cases/<id>/weight.npy       1×spatial float32 (only when the plan makes weight maps)
    cases/<id>/locations.npz    class_<k>: N×dims int32 voxel coordinates of class k (a seeded sample)
    cases/<id>/properties.json  shape, arrays, classes present and their voxel counts — written LAST

Foreground-biased sampling needs a voxel of a chosen class; searching the label for one per sample would
read the whole label, so the locations are sampled once here (nnU-Net: up to 10000 per class, at least 1%
of the class). Every file is written through a temporary file and a rename, and ``properties.json`` last:
a case is complete only when it exists, and a rewrite first removes it, so a crash at any point leaves no
complete-looking case with stale or partial arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.atomic import atomic_path, write_json

FORMAT = 1
PROPERTIES = "properties.json"
LOCATIONS = "locations.npz"
MAX_LOCATIONS = 10_000  # per class, as nnU-Net
MIN_COVERAGE = 0.01  # ... but at least this fraction of a large class, so its extent is still covered


class IncompleteCase(FileNotFoundError):
    """A case folder without ``properties.json``: preprocess was interrupted there and must run again."""


def case_dir(preprocessed_dir: Path, case_id: str) -> Path:
    return Path(preprocessed_dir) / "cases" / case_id


def case_seed(case_id: str) -> int:
    """A seed from the case ID alone: a rerun samples the same locations whatever order cases run in."""
    return int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:4], "little")


def class_locations(label: np.ndarray, seed: int, max_per_class: int = MAX_LOCATIONS) -> dict[int, np.ndarray]:
    """``{class: N×dims int32}`` voxel coordinates (spatial, no channel axis) of every foreground class
    in the ``1×spatial`` label, a seeded random subset when the class is larger than the sample."""
    rng = np.random.default_rng(seed)
    spatial = np.asarray(label)[0]
    out = {}
    for cls in (int(c) for c in np.unique(spatial) if c != 0):
        coords = np.argwhere(spatial == cls)
        wanted = min(len(coords), max(max_per_class, math.ceil(len(coords) * MIN_COVERAGE)))
        if wanted < len(coords):
            coords = coords[np.sort(rng.choice(len(coords), wanted, replace=False))]
        out[cls] = coords.astype(np.int32)
    return out


def _save_array(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))


def write_case(output_dir: Path, case_id: str, arrays: dict[str, np.ndarray], seed: int | None = None) -> dict:
    """Write one case (``arrays``: image, label, optional weight) under ``output_dir/cases/<id>/``; returns
    its properties. ``seed`` (default: from the case ID) draws the class locations."""
    folder = case_dir(output_dir, case_id)
    marker = folder / PROPERTIES
    marker.unlink(missing_ok=True)  # from here on the case is incomplete until the new marker lands
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        _save_array(folder / f"{key}.npy", array)
    for stale in folder.glob("*.npy"):  # e.g. a weight map the plan no longer makes
        if stale.stem not in arrays:
            stale.unlink()
    locations = class_locations(arrays["label"], case_seed(case_id) if seed is None else seed)
    with atomic_path(folder / LOCATIONS) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{f"class_{cls}": coords for cls, coords in locations.items()})
    label = np.asarray(arrays["label"])[0]
    properties = {
        "format": FORMAT,
        "case_id": case_id,
        "shape": [int(s) for s in label.shape],
        "arrays": sorted(arrays),
        "channels": int(np.asarray(arrays["image"]).shape[0]),
        "classes": {str(cls): int((label == cls).sum()) for cls in locations},
    }
    write_json(marker, properties)
    return properties


def read_properties(folder: Path) -> dict[str, Any]:
    """A complete case's properties; :class:`IncompleteCase` when its marker is missing."""
    marker = Path(folder) / PROPERTIES
    if not marker.exists():
        raise IncompleteCase(f"{folder} is not a complete preprocessed case (no {PROPERTIES}): "
                             f"run `unetflow preprocess` again")
    return json.loads(marker.read_text(encoding="utf-8"))


def open_case_dir(folder: Path, mmap: bool = True, keys: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the case in ``folder``: read-only memory maps (nothing read yet) or, with
    ``mmap=False``, in-memory copies. ``keys`` restricts them to those of its names the case stores (a name
    it does not store is simply absent): a case also holds instance maps and targets, and a caller reading
    a whole case into memory every epoch should not read arrays it never uses."""
    stored = read_properties(folder)["arrays"]
    wanted = stored if keys is None else [key for key in stored if key in keys]
    return {key: np.load(Path(folder) / f"{key}.npy", mmap_mode="r" if mmap else None) for key in wanted}


def open_case(preprocessed_dir: Path, case_id: str, mmap: bool = True,
              keys: Collection[str] | None = None) -> dict[str, np.ndarray]:
    return open_case_dir(case_dir(preprocessed_dir, case_id), mmap, keys)


def read_locations(folder: Path) -> dict[int, np.ndarray]:
    with np.load(Path(folder) / LOCATIONS) as stored:
        return {int(name.removeprefix("class_")): stored[name] for name in stored.files}


def case_locations(preprocessed_dir: Path, case_id: str) -> dict[int, np.ndarray]:
    """``{class: N×dims}`` precomputed voxel coordinates of each foreground class in the case."""
    return read_locations(case_dir(preprocessed_dir, case_id))
