"""Instance maps from a class-label map: one id per object, so touching objects can be counted apart.

A semantic mask says *what* each voxel is; counting lesions, nuclei or nodules needs *which one*. Two
methods, pure numpy/scipy (scikit-image is not a dependency):

``components``
    Connected components of each class with full connectivity (8-neighbours in 2D, 26 in 3D): two
    voxels touching only at a corner are one object, as a reader would see them. Cheap, exact, but
    objects that touch are one instance.
``watershed``
    Marker-controlled watershed inside each component so touching objects split. The distance from each
    voxel to the class's background (spacing-aware, in mm) peaks at object centres and dips at the neck
    where two objects meet. Markers are the cores where the distance is at least ``core_fraction`` of its
    component's maximum (an h-maxima-like threshold: a neck narrower than that fraction of the largest
    radius separates the cores); the cost flooded from them is the inverted, per-component normalised
    distance, optionally averaged with ``1 − foreground probability``, in :data:`FLOOD_LEVELS` rising levels
    (see :func:`_flood` for why not ``watershed_ift``). Flooding is restricted to the class mask; voxels
    outside it stay 0. Each component with two or more cores is flooded on its own bounding box (so a region
    never crosses into another component); the cost is :data:`FLOOD_LEVELS` distance transforms there.
    Limitation: an object whose radius is below ``core_fraction`` of a touching neighbour's gets no core of
    its own and stays merged with it.

    With a border-core network's rim probability (``border_probability``,
    :mod:`monai_ext.transforms.border_core`) the network draws the cores itself: markers are the connected
    parts of the class where the rim probability is below :data:`CORE_RIM`, and the flood rises through the rim
    probability, so objects split where the network saw a rim between them, whatever their shapes. A core
    smaller than :data:`MIN_CORE_FRACTION` of the median core of its class is no seed: such specks are where
    the network's rim dipped below one half inside a rim or an object, and as seeds they cut objects
    in pieces (on the demo's cells they halved object F1); the flood gives their voxels to the neighbours.
    A component without any core is one object when it is at least that size too; a smaller one (a speck the
    network saw only as rim) is no object: its voxels keep their class in the class map and id 0 here, as
    nnU-Net's border-core conversion drops small isolated rims.

Ids are unique across classes (class 1's objects first, then class 2's, …) and the class of each id is
returned alongside, so the map alone plus ``classes`` say what every object is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi

Method = Literal["none", "components", "watershed"]
CORE_FRACTION = 0.5
#: A border-core network's core: rim probability below this. Not argmax's one half: between touching objects
#: the network is least sure (about 0.4–0.6 on the demo's cells), and a seed must be a sure interior or two
#: cells' seeds join through the seam. Over 7 trainings on the demo's held-out cells, mean object F1 0.87 at
#: 0.5, 0.95 at 0.4, 0.94 at 0.3 and 0.2 (README, "Touching objects").
CORE_RIM = 0.4
MIN_CORE_FRACTION = 0.1  # of the median core's voxels: a smaller core of a border-core network seeds nothing
FLOOD_LEVELS = 32  # cost levels of the flood: the split lies within 1/32 of the radius of the neck


class Instances(NamedTuple):
    """``ids`` (int32, 0 background) and ``classes[i]``, the class of id ``i`` (``classes[0] == 0``)."""

    ids: np.ndarray
    classes: np.ndarray


def instances_from_labels(labels: np.ndarray, method: Method | str, foreground_probability: np.ndarray | None = None,
                          spacing: Sequence[float] | None = None, core_fraction: float = CORE_FRACTION,
                          border_probability: np.ndarray | None = None) -> Instances:
    """One id per object of every foreground class of ``labels`` (2D or 3D integer class map).

    ``spacing`` (voxel size per axis, default 1) makes the watershed's distance physical, so anisotropic
    voxels do not bias the split; ``foreground_probability`` (same shape, 0–1) deepens the valleys where
    the network was unsure; ``border_probability`` (same shape, a border-core network's rims) replaces the
    distance cores and landscape (module docstring). All are ignored by ``components``.
    """
    if method not in ("components", "watershed"):
        raise ValueError(f"instances: unknown method {method!r} (components or watershed)")
    labels = np.asarray(labels)
    for given in (foreground_probability, border_probability):
        if given is not None and given.shape != labels.shape:
            raise ValueError(f"instances: probability shape {given.shape} != labels {labels.shape}")
    sampling = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * labels.ndim
    if len(sampling) != labels.ndim:
        raise ValueError(f"instances: {len(sampling)} spacings for a {labels.ndim}D label map")
    structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    ids = np.zeros(labels.shape, np.int32)
    classes: list[int] = [0]
    for cls in (int(c) for c in np.unique(labels) if c != 0):
        box = _padded_box(labels == cls)
        mask = labels[box] == cls
        if method == "components":
            local, count = ndi.label(mask, structure=structure)
        else:
            probability = None if foreground_probability is None else foreground_probability[box]
            rims = None if border_probability is None else border_probability[box]
            local, count = _watershed(mask, probability, sampling, structure, core_fraction, rims)
        ids[box][mask] = local[mask] + (len(classes) - 1)
        classes.extend([cls] * count)
    return Instances(ids, np.asarray(classes, np.int32))


def measured_method(border_core: bool, asked: Method | str = "none") -> Method:
    """The instance method evaluation and validation score objects with: the one ``infer.instances`` asks
    for, else what suits the model — the watershed from its own cores for a border-core network (its class
    map alone merges touching objects, its rims split them), connected components otherwise."""
    if asked in ("components", "watershed"):
        return asked  # type: ignore[return-value]
    return "watershed" if border_core else "components"


def _padded_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The mask's bounding box grown by one voxel where the image allows.

    The extra layer holds background on every side the image continues, so a distance transform inside
    the box equals the whole image's (the nearest background voxel, clamped into the box, stays nearest).
    """
    (box,) = ndi.find_objects(mask.astype(np.uint8), max_label=1)
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, mask.shape, strict=True))


def _cores_and_cost(mask: np.ndarray, components: np.ndarray, count: int, probability: np.ndarray | None,
                    sampling: tuple[float, ...], structure: np.ndarray, core_fraction: float,
                    rims: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray, float]:
    """(markers, their count, flood cost in [0, 1], the fewest voxels a coreless component needs to be an
    object): the network's cores and rims when it drew them, else the distance map's cores
    (``core_fraction`` of each component's largest radius) and inverted distance (every component counts)."""
    if rims is not None:
        rims = np.clip(rims, 0.0, 1.0)
        markers, marker_count, smallest = _seed_cores(mask & (rims < CORE_RIM), structure)
        return markers, marker_count, rims, smallest
    distance = ndi.distance_transform_edt(mask, sampling=sampling)
    peak = np.zeros(count + 1)
    peak[1:] = ndi.maximum(distance, components, np.arange(1, count + 1))
    relative = np.where(mask, distance / np.maximum(peak[components], 1e-12), 0.0)
    markers, marker_count = ndi.label(relative >= core_fraction, structure=structure)
    markers[~mask] = 0  # the core of a component is inside it (relative is 0 outside)
    cost = 1.0 - relative
    if probability is not None:
        cost = 0.5 * cost + 0.5 * (1.0 - np.clip(probability, 0.0, 1.0))
    return markers, marker_count, cost, 0.0


def _seed_cores(cores: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int, float]:
    """The connected cores of at least :data:`MIN_CORE_FRACTION` of the median core's size, numbered 1..n,
    and that size (0 without cores)."""
    markers, count = ndi.label(cores, structure=structure)
    if count == 0:
        return markers, 0, 0.0
    sizes = np.bincount(markers.ravel())
    smallest = MIN_CORE_FRACTION * float(np.median(sizes[1:]))
    keep = sizes >= smallest
    keep[0] = False
    renumber = np.zeros(count + 1, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[markers], int(keep.sum()), smallest


def _watershed(mask: np.ndarray, probability: np.ndarray | None, sampling: tuple[float, ...],
               structure: np.ndarray, core_fraction: float, rims: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Split each component of ``mask`` at its necks (or the network's rims); ids 1..count, 0 outside the mask."""
    components, count = ndi.label(mask, structure=structure)
    markers, marker_count, cost, smallest = _cores_and_cost(mask, components, count, probability, sampling,
                                                            structure, core_fraction, rims)
    if marker_count == count and rims is None:  # one core per component: the components are the answer
        return components, count
    component_of_core = ndi.maximum(components, markers, np.arange(1, marker_count + 1)).astype(np.int64)
    cores = np.bincount(component_of_core, minlength=count + 1)
    result = np.zeros(mask.shape, np.int32)
    found = 0
    for k, box in enumerate(ndi.find_objects(components), start=1):  # each component flooded on its own
        own = components[box] == k
        if cores[k] == 0 and own.sum() < smallest:  # a speck the network saw only as rim: no object
            continue
        if cores[k] <= 1:  # one core (or none: a large object all rim) — the component is one object
            found += 1
            result[box][own] = found
            continue
        local = np.where(own, markers[box], 0)
        present, renumbered = np.unique(local, return_inverse=True)  # present[0] == 0: not a core
        seeds = renumbered.reshape(local.shape).astype(np.int32)
        result[box][own] = _flood(seeds, own, cost[box], sampling)[own] + found
        found += len(present) - 1
    return result, found


def _flood(labels: np.ndarray, mask: np.ndarray, cost: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Grow the markers over ``mask`` in rising cost levels; each level's new voxels join the nearest region.

    Why not ``scipy.ndimage.watershed_ift``: it orders by the minimax path cost, so above the neck's level
    every voxel is a tie and the first region to get there takes it (one object's rim leaks around the
    other's). Flooding level by level keeps the regions growing in step, and the nearest-region rule
    (spacing-aware) splits each level's ring where the fronts meet: the neck.
    """
    for level in np.linspace(0.0, 1.0, FLOOD_LEVELS + 1)[1:]:
        todo = mask & (labels == 0) & (cost <= level)
        if not todo.any():
            continue
        _, nearest = ndi.distance_transform_edt(labels == 0, sampling=sampling, return_indices=True)
        labels[todo] = labels[tuple(axis[todo] for axis in nearest)]
    labels[~mask] = 0
    return labels


def object_table(instances: Instances, unit_size: float, size_key: str, class_names: dict[int, str], limit: int
                 ) -> tuple[dict[str, int], list[dict[str, object]]]:
    """Objects per class name and the first ``limit`` objects: id, class name, voxels, ``size_key`` (voxels ×
    ``unit_size``: the caller names the unit, e.g. ``volume_ml``)."""
    voxels = np.bincount(instances.ids.ravel(), minlength=len(instances.classes))
    per_class = {name: 0 for value, name in sorted(class_names.items()) if value != 0}
    for cls in instances.classes[1:]:
        name = class_names.get(int(cls), str(int(cls)))
        per_class[name] = per_class.get(name, 0) + 1
    objects = [{"id": i, "class": class_names.get(int(instances.classes[i]), str(int(instances.classes[i]))),
                "voxels": int(voxels[i]), size_key: round(float(voxels[i]) * unit_size, 6)}
               for i in range(1, min(len(instances.classes), limit + 1))]
    return per_class, objects
