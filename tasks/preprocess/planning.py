"""The plan, decided from the data once (as nnU-Net does): dims, channels, classes, normalisation, patch, split.

Everything downstream (the trainer, the evaluator, inference) only executes it; it travels with the
registered model, so inference never re-derives or hard-codes a preprocessing constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from monai_ext.networks.unet import valid_unet_input_size, valid_unet_output_size
from tasks.common.plan import PLAN_FILE, IntensityStatistics, NetworkSpec, Plan, Split
from tasks.config import DataConfig, ModelConfig, PreprocessConfig, TrainConfig
from tasks.preprocess.fingerprint import plan_spacing
from tasks.preprocess.intensity_stats import normalization_from


def split_cases(case_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """A deterministic shuffle-and-cut; at least one case in each non-empty fraction."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n_test = max(1, round(test_fraction * len(ids))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(ids))) if val_fraction > 0 else 0
    if len(ids) - n_test - n_val < 1:
        raise ValueError(f"{len(ids)} cases are too few for val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction}")
    return Split(train=tuple(sorted(shuffled[n_test + n_val:])), val=tuple(sorted(shuffled[n_test:n_test + n_val])),
                 test=tuple(sorted(shuffled[:n_test])))


def choose_patch_size(shapes: list[tuple[int, ...]], depth: int, requested: tuple[int, ...] | None,
                      cap: int = 128) -> list[int]:
    """The median case shape, capped and rounded down to a multiple of 2**(depth-1)."""
    if requested:
        return list(requested)
    factor = 2 ** (depth - 1)
    median = np.median(np.array(shapes), axis=0)
    return [max(factor, int(min(m, cap)) // factor * factor) for m in median]


def choose_valid_tiles(shapes: list[tuple[int, ...]], depth: int, requested: tuple[int, ...] | None,
                       cap: int = 128) -> tuple[list[int], list[int]]:
    """(input tile, output tile) of a valid-padding U-Net (the paper's 572 in, 388 out).

    Why not :func:`choose_patch_size`: a multiple of 2**(depth-1) never fits unpadded convs (every map
    entering a pooling must have even size). The *output* tile is chosen as the same-padding patch would
    be — the median case shape, capped — rounded up to a size the network can give, so one step supervises
    about as much of a case as with same padding; the input tile adds the margin the convs lose. A
    requested ``train.patch_size`` is the input tile and must fit (the error names the nearest sizes).
    """
    if requested:
        try:
            return list(requested), [valid_unet_output_size(int(size), depth) for size in requested]
        except ValueError as error:
            raise ValueError(f"train.patch_size {list(requested)} is not an input tile of the valid-padding "
                             f"U-Net (model.options.padding: valid): {error}") from None
    median = np.median(np.array(shapes), axis=0)
    inputs = [valid_unet_input_size(max(1, int(min(m, cap))), depth) for m in median]
    return inputs, [valid_unet_output_size(size, depth) for size in inputs]


def plan_split(manifest: dict, data: DataConfig) -> Split:
    """The train/val/test split of the manifest's cases, decided before any statistics are taken."""
    return split_cases([c["case_id"] for c in manifest["cases"]], data.val_fraction, data.test_fraction,
                       data.split_seed)


def training_cases(manifest: dict, split: Split) -> list[dict]:
    """The manifest records of the training cases: the only ones intensity statistics may look at."""
    train = set(split.train)
    return [case for case in manifest["cases"] if case["case_id"] in train]


def network_spec(model: ModelConfig) -> NetworkSpec:
    """The one place a ``model`` section becomes the plan's network (``compare`` asks it per variant)."""
    return NetworkSpec(name=model.name, features=tuple(model.features), norm=model.norm, options=dict(model.options))


def make_plan(manifest: dict, data: DataConfig, preprocess: PreprocessConfig, model: ModelConfig,
              train: TrainConfig, stats: list[dict[str, float | None]], split: Split | None = None) -> Plan:
    """Everything downstream executes this; ``stats`` must come from ``split.train`` only, so the
    normalisation never sees validation or test intensities."""
    shapes = [tuple(c["shape"][:3]) for c in manifest["cases"]]
    flat = all(s[2] == 1 for s in shapes)
    spatial_dims = model.spatial_dims if model.spatial_dims != "auto" else (2 if flat else 3)
    if spatial_dims == 2 and not flat:
        raise ValueError("model.spatial_dims=2 on volumes is not supported yet: use 3 or 2D images")
    split = split or plan_split(manifest, data)
    spatial_shapes, depth = [s[:spatial_dims] for s in shapes], len(model.features)
    output_size = None
    if model.options.get("padding") == "valid":
        patch, output_size = choose_valid_tiles(spatial_shapes, depth, train.patch_size)
    else:
        patch = choose_patch_size(spatial_shapes, depth, train.patch_size)
    target_spacing, fingerprint = plan_spacing(manifest, preprocess.target_spacing)  # recorded, not yet applied
    return Plan(
        spatial_dims=spatial_dims,
        in_channels=int(manifest["cases"][0]["channels"]),
        num_classes=len(manifest["labels"]),
        label_names=manifest["labels"],
        normalization=normalization_from(stats, preprocess.normalization, channel_modalities(manifest)),
        intensity_statistics=IntensityStatistics(cases=split.train, channels=tuple(stats)),
        patch_size=tuple(patch),
        output_size=None if output_size is None else tuple(output_size),
        weight_maps=preprocess.weight_maps,
        weight_map_objects=weight_map_objects(manifest, preprocess.weight_maps),
        target_spacing=target_spacing,
        fingerprint=fingerprint,
        split=split,
        network=network_spec(model),
    )


def channel_modalities(manifest: dict) -> list[str] | str:
    """Each channel's modality: ``dataset.json``'s channel names (nnU-Net/MSD sources, in channel order),
    else the one modality of the source (a DICOM Modality tag, ``data.modality``) for every channel."""
    return list(manifest.get("channel_names") or []) or manifest.get("modality", "")


def weight_map_objects(manifest: dict, weight_maps: bool) -> Literal["instances", "connected_components"] | None:
    """What the weight maps' border term separates, said in the plan so nobody has to guess: the given
    instance maps when every case has one, else each class's connected components (touching objects of
    one class are then one object; ``preprocess_case`` follows this, never a mix)."""
    if not weight_maps:
        return None
    if manifest["cases"] and all("instances" in case["files"] for case in manifest["cases"]):
        return "instances"
    return "connected_components"


def write_plan(output_dir: Path, plan: Plan) -> None:
    plan.write(output_dir / PLAN_FILE)
