"""The plan, decided from the data once (as nnU-Net does): dims, channels, classes, normalisation, target
spacing, topology, patch and batch, split.

Everything downstream (the trainer, the evaluator, inference) only executes it; it travels with the
registered model, so inference never re-derives or hard-codes a preprocessing constant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from monai_ext.networks.unet import valid_unet_input_size, valid_unet_output_size
from tasks.common.devices import resolve_device
from tasks.common.plan import PLAN_FILE, IntensityStatistics, NetworkSpec, Plan, Split
from tasks.config import DataConfig, ModelConfig, Params, PreprocessConfig, TrainConfig
from tasks.preprocess.fingerprint import plan_spacing
from tasks.preprocess.intensity_stats import intensity_statistics, normalization_from
from tasks.preprocess.memory_budget import GIB, BudgetRequest, FittedPatch, fit_to_budget
from tasks.preprocess.topology import Topology, plan_topology


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


def choose_valid_tiles(patch: Sequence[int], topology: Topology) -> tuple[list[int], list[int]]:
    """(input tile, output tile) of a valid-padding U-Net (the paper's 572 in, 388 out) around ``patch``.

    Why not ``patch`` itself: a same-padding size never fits unpadded convs (every map entering a pooling
    must have an even size). The *output* tile is the planned patch, rounded up to a size the network can
    give, so one step supervises about as much of a case as with same padding; the input tile adds the
    margin the convs lose (none along an axis whose kernels are all 1)."""
    inputs = []
    for axis, size in enumerate(patch):
        strides = [stride[axis] for stride in topology.strides]
        kernels = [kernel[axis] for kernel in topology.kernel_sizes]
        inputs.append(valid_unet_input_size(max(1, int(size)), len(topology.kernel_sizes), strides, kernels))
    return inputs, valid_tile_outputs(inputs, topology)


def valid_tile_outputs(inputs: Sequence[int], topology: Topology) -> list[int]:
    """The output tile a valid-padding U-Net gives for input tile ``inputs`` (per axis, with its topology)."""
    depth = len(topology.kernel_sizes)
    return [valid_unet_output_size(int(size), depth, [s[axis] for s in topology.strides],
                                   [k[axis] for k in topology.kernel_sizes]) for axis, size in enumerate(inputs)]


def plan_split(manifest: dict, data: DataConfig) -> Split:
    """The train/val/test split of the manifest's cases, decided before any statistics are taken."""
    return split_cases([c["case_id"] for c in manifest["cases"]], data.val_fraction, data.test_fraction,
                       data.split_seed)


def training_cases(manifest: dict, split: Split) -> list[dict]:
    """The manifest records of the training cases: the only ones intensity statistics may look at."""
    train = set(split.train)
    return [case for case in manifest["cases"] if case["case_id"] in train]


def network_spec(model: ModelConfig, topology: Topology | None = None) -> NetworkSpec:
    """The one place a ``model`` section becomes the plan's network (``compare`` asks it per variant); the
    topology (per-level strides and kernels) is the plan's, decided from the data (:func:`make_plan`)."""
    strides = kernels = None
    if topology is not None:
        strides, kernels = topology.strides, topology.kernel_sizes
    return NetworkSpec(name=model.name, features=tuple(model.features), norm=model.norm, options=dict(model.options),
                       strides=strides, kernel_sizes=kernels)


def variant_network(plan: Plan, model: ModelConfig) -> NetworkSpec:
    """Another network on the same plan (``compare``): the plan's topology when the depth is the same, else
    the same rule for its depth on the plan's patch and target spacing."""
    depth = network_depth(model)
    kernels = plan.network.kernel_sizes
    if plan.network.strides is not None and kernels is not None and len(kernels) == depth:
        return network_spec(model, Topology(plan.network.strides, kernels))
    spacing = tuple(plan.target_spacing or (1.0,) * 3)[:plan.spatial_dims]
    return network_spec(model, plan_topology(spacing, plan.patch_size, depth))


def network_factory(spec: NetworkSpec, spatial_dims: int, in_channels: int,
                    num_classes: int) -> Callable[[Topology], nn.Module]:
    """Builds ``spec``'s network with a candidate topology: what the memory fit sizes."""
    from monai_ext.networks import build_network

    def build(topology: Topology) -> nn.Module:
        return build_network(spec.name, spatial_dims, in_channels, num_classes, features=spec.features,
                             norm=spec.norm, strides=topology.strides, kernel_sizes=topology.kernel_sizes,
                             **spec.options)

    return build


def make_plan(manifest: dict, data: DataConfig, preprocess: PreprocessConfig, model: ModelConfig,
              train: TrainConfig, stats: list[dict[str, float | None]], split: Split | None = None,
              nonzero_shapes: dict[str, list[int]] | None = None) -> Plan:
    """Everything downstream executes this; ``stats`` must come from ``split.train`` only, so the
    normalisation never sees validation or test intensities. ``nonzero_shapes`` (case ID → shape of the
    bounding box of its non-zero voxels, from the intensity pass) size the patch as nnU-Net's cropped shapes do."""
    shapes = [tuple(c["shape"][:3]) for c in manifest["cases"]]
    flat = all(s[2] == 1 for s in shapes)
    spatial_dims = model.spatial_dims if model.spatial_dims != "auto" else (2 if flat else 3)
    if spatial_dims == 2 and not flat:
        raise ValueError("model.spatial_dims=2 on volumes is not supported yet: use 3 or 2D images")
    split = split or plan_split(manifest, data)
    target_spacing, fingerprint = plan_spacing(manifest, preprocess.target_spacing, nonzero_shapes)
    num_classes, in_channels = len(manifest["labels"]), int(manifest["cases"][0]["channels"])
    # A valid-padding U-Net is sized as its same-padding twin (same convolutions, inputs of any multiple of the
    # strides); its tiles are then placed around the fitted patch.
    sized = network_spec(model).model_copy(update={"options": {k: v for k, v in model.options.items()
                                                               if k != "padding"}})
    # The median case on the grid training will see (no spacings known: the shapes as stored).
    median = np.asarray(fingerprint["median_shape_resampled"] if fingerprint else np.median(shapes, axis=0))
    border = border_core(manifest, preprocess.border_core)
    fitted = fit_to_budget(network_factory(sized, spatial_dims, in_channels, num_classes + int(border)), BudgetRequest(
        spacing=tuple(target_spacing or (1.0,) * 3)[:spatial_dims],
        median_shape=tuple(float(v) for v in median[:spatial_dims]),
        dataset_voxels=float(np.prod(median)) * len(shapes),
        depth=network_depth(model), in_channels=in_channels, num_classes=num_classes,
        budget_gb=train.memory_budget_gb, device=resolve_device(train.device, "train.device"), amp=train.amp,
        patch=None if train.patch_size is None or model.options.get("padding") == "valid" else train.patch_size,
        batch_size=train.batch_size))
    patch, output_size = list(fitted.patch), None
    if model.options.get("padding") == "valid":
        patch, output_size = _valid_tiles(fitted, train.patch_size)
    modalities = channel_modalities(manifest)
    per_channel = modalities
    if isinstance(modalities, str):  # the source's one modality for every channel ("" when it names none)
        per_channel = [modalities] * in_channels if modalities else []
    return Plan(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
        channel_modalities=tuple(per_channel),
        label_names=manifest["labels"],
        normalization=normalization_from(stats, preprocess.normalization, modalities),
        intensity_statistics=IntensityStatistics(cases=split.train, channels=tuple(stats)),
        patch_size=tuple(patch), output_size=None if output_size is None else tuple(output_size),
        batch_size=fitted.batch_size, memory=memory_record(fitted, train.memory_budget_gb),
        weight_maps=preprocess.weight_maps, weight_map_objects=weight_map_objects(manifest, preprocess.weight_maps),
        border_core=border, border_thickness=preprocess.border_thickness,
        target_spacing=target_spacing, fingerprint=fingerprint, split=split,
        network=network_spec(model, fitted.topology),
    )


def plan_from_samples(manifest: dict, params: Params, split: Split, samples: list[dict[str, Any]]) -> Plan:
    """The plan from the training cases' intensity samples (``case_intensity_sample`` per training case)."""
    stats = intensity_statistics([sample["values"] for sample in samples])
    return make_plan(manifest, params.data, params.preprocess, params.model, params.train, stats, split,
                     nonzero_shapes={sample["case_id"]: sample["nonzero_shape"] for sample in samples})


def network_depth(model: ModelConfig) -> int:
    """Resolution levels of the network (the topology gives ``depth - 1`` downsamplings): one per width for
    most variants; eff_unet's backbone has six whatever its decoder widths (the network says)."""
    from monai_ext.networks import network_topology_lengths

    downsamplings, _kernels = network_topology_lengths(model.name, tuple(model.features))
    return downsamplings + 1


def _valid_tiles(fitted: FittedPatch, requested: tuple[int, ...] | None) -> tuple[list[int], list[int]]:
    """A valid-padding U-Net's tiles: around the fitted patch, or ``train.patch_size`` as the input tile."""
    if requested is None:
        return choose_valid_tiles(fitted.patch, fitted.topology)
    try:
        return list(requested), valid_tile_outputs(requested, fitted.topology)
    except ValueError as error:
        raise ValueError(f"train.patch_size {list(requested)} is not an input tile of the valid-padding "
                         f"U-Net (model.options.padding: valid): {error}") from None


def memory_record(fitted: FittedPatch, budget_gb: float) -> dict[str, Any]:
    """What the plan says about memory: the budget, how the cost was found, and the figure at its batch."""
    return {"budget_gb": budget_gb, "method": fitted.cost.method, "fits": fitted.fits,
            "gb_at_batch_size": round(fitted.cost.at(fitted.batch_size) / GIB, 3),
            "gb_per_sample": round(fitted.cost.per_sample / GIB, 4)}


def channel_modalities(manifest: dict) -> list[str] | str:
    """Each channel's modality: ``dataset.json``'s channel names (nnU-Net/MSD sources, in channel order),
    else the one modality of the source (a DICOM Modality tag, ``data.modality``) for every channel."""
    return list(manifest.get("channel_names") or []) or manifest.get("modality", "")


def every_case_has_instances(manifest: dict) -> bool:
    """Whether instance maps come with every case (a mix would train some cases on objects, others not)."""
    return bool(manifest["cases"]) and all("instances" in case["files"] for case in manifest["cases"])


def weight_map_objects(manifest: dict, weight_maps: bool) -> Literal["instances", "connected_components"] | None:
    """What the weight maps' border term separates, said in the plan so nobody has to guess: the given
    instance maps when every case has one, else each class's connected components (touching objects of
    one class are then one object; ``preprocess_case`` follows this, never a mix)."""
    if not weight_maps:
        return None
    if every_case_has_instances(manifest):
        return "instances"
    return "connected_components"


def border_core(manifest: dict, choice: bool | str) -> bool:
    """Whether training uses the border-core target: ``auto`` when every case has an instance map (the rims
    come from them); ``true`` without them is refused, there would be no objects to draw rims around."""
    every = every_case_has_instances(manifest)
    if choice is True and not every:
        raise ValueError("preprocess.border_core: true needs an instance map for every case (instancesTr/ or "
                         "data.instance_labels); use auto or false")
    return every if choice == "auto" else bool(choice)


def write_plan(output_dir: Path, plan: Plan) -> None:
    plan.write(output_dir / PLAN_FILE)
