"""One canonical case → ``cases/<id>/`` (memory-mappable image, label, instances, weight map), as training reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_ext.transforms.border_core import border_core_labels, core_instances
from tasks.common.normalization import normalize, to_channel_first
from tasks.common.plan import Plan
from tasks.config import PreprocessConfig
from tasks.imaging.resampling import resample_image, resample_instances, resample_labels, resampling_target
from tasks.preprocess.case_store import write_case
from tasks.preprocess.weight_map_cache import cached_weight_map


def load_case_arrays(dataset_dir: Path, case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image X×Y×Z[×C] float32, class label X×Y×Z uint8, instance label or None) of a canonical case."""
    image = np.asanyarray(nib.load(str(dataset_dir / case["files"]["image"])).dataobj).astype(np.float32)
    label = np.asanyarray(nib.load(str(dataset_dir / case["files"]["label"])).dataobj).astype(np.uint8)
    instances = None
    if "instances" in case["files"]:
        instances = np.asanyarray(nib.load(str(dataset_dir / case["files"]["instances"])).dataobj)
    return image, label, instances


@dataclass(frozen=True)
class CaseGrid:
    """A case's spacing and the plan's, over the plan's spatial axes; ``resample`` false: already on it."""

    spacing: tuple[float, ...]
    target: tuple[float, ...]
    resample: bool

    @classmethod
    def of(cls, case: dict, shape: tuple[int, ...], plan: Plan) -> CaseGrid:
        known = case.get("spacing") if len(case.get("spacing") or []) >= 3 else None
        spacing = tuple(float(s) for s in (known or [1.0] * 3)[:len(shape)])
        target = resampling_target(shape, known, plan.target_spacing)
        return cls(spacing, target or spacing, target is not None)

    def distance_spacing(self, case: dict) -> list[float]:
        """The 3-value spacing the weight map's distances use: the grid the map is computed on."""
        full = [float(s) for s in (case.get("spacing") or [1.0] * 3)]
        return [*self.target, *full[len(self.target):]]


def _case_weight_map(arrays: dict[str, np.ndarray], instances: np.ndarray | None, case: dict, plan: Plan,
                     config: PreprocessConfig, grid: CaseGrid, cache_dir: Path) -> tuple[np.ndarray, bool]:
    """The case's weight map (1×…) and whether it came from the cache.

    The plan says which objects the border term separates; a case follows it, never its own guess. With a
    border-core target the objects are the cores and ``w_c`` balances background, classes and rims, so the
    rims between touching objects — the target's background-like separators — get the paper's weight.
    """
    dims = plan.spatial_dims
    given = instances if plan.weight_map_objects == "instances" else None
    label_xyz = arrays["label"][0] if dims == 3 else arrays["label"][0][..., None]
    key = case["sha256"]["label"] + (case["sha256"].get("instances", "") if given is not None else "")
    if grid.resample:  # a map of the resampled label: its grid is part of what it depends on
        key += f"@{list(grid.target)}"
    if given is not None and plan.border_core:
        label_xyz = arrays["target"][0] if dims == 3 else arrays["target"][0][..., None]
        given = core_instances(given, label_xyz, plan.num_classes)
        key += f"#border-core{plan.border_thickness}"
    weights, cached = cached_weight_map(given if given is not None else label_xyz, key,
                                        grid.distance_spacing(case), config, cache_dir, dims,
                                        labels_are_instances=given is not None,
                                        classes=label_xyz if given is not None else None)
    return to_channel_first(weights, dims), cached


def preprocess_case(dataset_dir: Path, case: dict, plan: Plan, config: PreprocessConfig,
                    output_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Write ``cases/<id>/``: image (C×…), label (1×…), instances (1×…, when given), the border-core target
    (1×…, when planned) and weight (1×…), on the plan's target spacing.

    Normalised first, then resampled (nnU-Net v2's order); labels keep every class (one put back where it
    would vanish is reported as ``restored_classes``), instance maps go by nearest neighbour, and the
    weight map is computed on the resampled grid, with the target spacing where σ is in mm.
    """
    dims = plan.spatial_dims
    image, label, instances = load_case_arrays(dataset_dir, case)
    arrays = {"image": to_channel_first(normalize(image, plan.normalization), dims),
              "label": to_channel_first(label, dims)}
    del image
    grid = CaseGrid.of(case, arrays["label"].shape[1:], plan)
    restored: list[int] = []
    if grid.resample:
        arrays["image"] = resample_image(arrays["image"], grid.spacing, grid.target)
        arrays["label"], restored = resample_labels(arrays["label"], grid.spacing, grid.target)
        if instances is not None:
            instances = resample_instances(to_channel_first(instances, dims), grid.spacing, grid.target)
            instances = instances[0] if dims == 3 else instances[0][..., None]
    if instances is not None:  # object-level validation
        arrays["instances"] = to_channel_first(np.asarray(instances).astype(np.int32), dims)
        if plan.border_core:  # what training reads instead of the label (tasks.training.data_loader)
            arrays["target"] = border_core_labels(arrays["label"], arrays["instances"], plan.num_classes,
                                                  plan.border_thickness)
    cached = None
    if config.weight_maps:
        arrays["weight"], cached = _case_weight_map(arrays, instances, case, plan, config, grid, cache_dir)
    write_case(output_dir, case["case_id"], arrays)  # cases/<id>/*.npy + class locations, marker last
    return {"case_id": case["case_id"], "weight_map_cached": cached, "resampled": grid.resample,
            "shape": [int(v) for v in arrays["label"].shape[1:]], "restored_classes": [int(c) for c in restored]}
