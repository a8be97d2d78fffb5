"""One canonical case → ``cases/<id>.npz`` (normalised image, label, weight map), as training reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tasks.common.atomic import atomic_path
from tasks.common.normalization import normalize, to_channel_first
from tasks.common.plan import Plan
from tasks.config import PreprocessConfig
from tasks.preprocess.weight_map_cache import cached_weight_map


def load_case_arrays(dataset_dir: Path, case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image X×Y×Z[×C] float32, class label X×Y×Z uint8, instance label or None) of a canonical case."""
    image = np.asanyarray(nib.load(str(dataset_dir / case["files"]["image"])).dataobj).astype(np.float32)
    label = np.asanyarray(nib.load(str(dataset_dir / case["files"]["label"])).dataobj).astype(np.uint8)
    instances = None
    if "instances" in case["files"]:
        instances = np.asanyarray(nib.load(str(dataset_dir / case["files"]["instances"])).dataobj)
    return image, label, instances


def preprocess_case(dataset_dir: Path, case: dict, plan: Plan, config: PreprocessConfig,
                    output_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Write ``cases/<id>.npz`` holding image (C×…), label (1×…) and weight (1×…) arrays."""
    dims = plan.spatial_dims
    image, label, instances = load_case_arrays(dataset_dir, case)
    arrays = {
        "image": to_channel_first(normalize(image, plan.normalization), dims),
        "label": to_channel_first(label, dims),
    }
    cached = None
    if config.weight_maps:
        # The plan says which objects the border term separates; a case follows it, never its own guess.
        given = instances if plan.weight_map_objects == "instances" else None
        key = case["sha256"]["label"] + (case["sha256"].get("instances", "") if given is not None else "")
        weights, cached = cached_weight_map(given if given is not None else label, key, case["spacing"], config,
                                            cache_dir, dims, labels_are_instances=given is not None,
                                            classes=label if given is not None else None)
        arrays["weight"] = to_channel_first(weights, dims)
    target = output_dir / "cases" / f"{case['case_id']}.npz"
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return {"case_id": case["case_id"], "weight_map_cached": cached}
