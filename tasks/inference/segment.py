"""One study through the model: the plan's preprocessing, sliding windows, CGM gate, the mask on the input's grid.

Preprocessing is the model's plan (normalisation, target spacing, channels, 2D/3D, patch size), never a
constant copied here; the probabilities come back to the input's grid before the argmax
(:mod:`tasks.inference.native_grid`); the mask is reordered back to the input's voxel orientation
(:mod:`tasks.inference.studies`); the CGM
classifier, when the network has one, gates the segmentation (:mod:`tasks.inference.postprocess`) and the
report says how much it removed.

A DICOM series whose SEG cannot be made (no FrameOfReferenceUID, a source highdicom refuses) still
gets its mask and its report: the report says why there is no SEG (``dicom_seg_error``) and, written
last as always, marks the case done — a rerun would only fail the same way. Nothing else degrades.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.atomic import write_json
from tasks.common.devices import resolve_device
from tasks.common.hashing import json_digest
from tasks.common.normalization import normalize, to_channel_first
from tasks.common.plan import Plan
from tasks.config import DataConfig, InferConfig
from tasks.inference.dicom_seg import SegIdentity
from tasks.inference.inputs import InferCase
from tasks.inference.instances import Instances, instances_from_labels, object_table
from tasks.inference.native_grid import model_space_spacing, predict_on_native_grid
from tasks.inference.postprocess import FilterReport, gate_images, gate_voxels, keep_largest_component
from tasks.inference.sliding_window import WindowSettings, has_cgm, roi_size_for
from tasks.inference.studies import LoadedStudy, load_study, shown_name, to_input_space, to_model_space, write_mask
from tasks.inference.unetpp_modes import model_for_mode

log = logging.getLogger("unetflow.infer")

# Provenance: recorded in every report, left out of the key (the weights' hash ``model_id`` decides staleness).
PROVENANCE = ("model_name", "model_version", "model_uri")
MAX_OBJECTS = 10_000  # objects listed in a report's "instances" (the count and per-class counts are complete)
REPORT_VERSION = 3  # bump when an unchanged input would now give a different output (2: CGM cgm_probability,
#                    3: the plan's target spacing and back)


@dataclass(frozen=True)
class InferSettings:
    """Everything a case's output depends on besides its inputs and the weights (plain, picklable)."""

    roi_size: tuple[int, ...] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 4
    mirror_tta: bool = False
    device: str = "auto"
    amp: bool = True
    stitch_device: str = "auto"
    cgm_filter: bool = True
    cgm_threshold: float = 0.5
    keep_largest_component: bool = False
    dicom_seg: bool = True
    prune_level: int | None = None  # UNet++ fast mode (tasks.inference.unetpp_modes)
    unetpp_heads: str = "last"  # UNet++ accurate mode: "mean"
    instances: str = "none"  # instance map: "components" | "watershed" (tasks.inference.instances)
    tolerance: float = 1e-4
    spacing_tolerance: float = 0.01
    max_voxels: int = 1_000_000_000
    model_id: str = ""
    input_root: str = ""
    model_name: str = ""  # the registered model, "" for a run or a checkpoint (provenance, not in key())
    model_version: str = ""  # its registry version, resolved from the alias when the batch started
    model_uri: str = ""  # what the operator asked for: models:/name@alias, runs:/…, a checkpoint path

    @classmethod
    def from_config(cls, infer: InferConfig, data: DataConfig, model_id: str = "",
                    input_root: str | Path = "") -> InferSettings:
        return cls(roi_size=infer.roi_size, overlap=infer.overlap, sw_batch_size=infer.sw_batch_size,
                   mirror_tta=infer.mirror_tta, device=infer.device, amp=infer.amp, stitch_device=infer.stitch_device,
                   cgm_filter=infer.cgm_filter, cgm_threshold=infer.cgm_threshold,
                   keep_largest_component=infer.keep_largest_component, dicom_seg=infer.dicom_seg,
                   prune_level=infer.prune_level, unetpp_heads=infer.unetpp_heads, instances=infer.instances,
                   tolerance=data.geometry_tolerance, spacing_tolerance=data.slice_spacing_tolerance,
                   max_voxels=data.max_voxels, model_id=model_id, input_root=str(input_root))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device, "infer.device")

    def key(self, case: InferCase) -> str:
        """What decides whether an existing report is still this run's result (device/runner excluded)."""
        files = []
        for path in case.files:
            stat = path.stat()
            files.append([path.name, stat.st_size, stat.st_mtime_ns])
        excluded = ("device", "stitch_device", "input_root", *PROVENANCE)
        relevant = {k: v for k, v in asdict(self).items() if k not in excluded}
        if self.prune_level is None and self.unetpp_heads == "last":  # defaults: reports from before stay valid
            del relevant["prune_level"], relevant["unetpp_heads"]
        if self.instances == "none":  # likewise: no instance map asked for, the key is the one before the option
            del relevant["instances"]
        return json_digest({"version": REPORT_VERSION, "settings": relevant, "files": files}, 24)


# ---------------------------------------------------------------------------------------------- one case
def _plan_checks(canonical: np.ndarray, plan: Plan, name: str) -> None:
    if not np.isfinite(canonical).all():
        raise ValueError(f"{name}: image holds NaN or infinite voxels")
    channels = canonical.shape[3] if canonical.ndim == 4 else 1
    if channels != plan.in_channels:
        raise ValueError(f"{name}: {channels} channel(s), the model expects {plan.in_channels}")


Predicted = tuple[np.ndarray, np.ndarray | None, dict[str, Any], FilterReport]


def _predict(model: nn.Module, plan: Plan, canonical: np.ndarray, spacing: tuple[float, ...], settings: InferSettings,
             device: torch.device) -> Predicted:
    """Labels on the canonical grid (of voxel size ``spacing``), a border-core network's rim probability there
    (else None), the CGM record and what the CGM gate removed; the network sees the image on the plan's
    target spacing (:mod:`tasks.inference.native_grid`)."""
    dims = plan.spatial_dims
    window = WindowSettings(roi_size_for(plan, settings.roi_size), settings.overlap, settings.sw_batch_size,
                            settings.mirror_tta, settings.amp, settings.stitch_device)
    cgm = has_cgm(model)
    record: dict[str, Any] = {"available": cgm, "applied": cgm and settings.cgm_filter,
                              "threshold": settings.cgm_threshold}
    if dims == 2:  # each 2D image (or slice of a volume) on its own, as in training
        slices, rims, probabilities = [], [], []
        for z in range(canonical.shape[2]):
            image = to_channel_first(normalize(canonical[:, :, z:z + 1].astype(np.float32), plan.normalization), 2)
            prediction = predict_on_native_grid(model, plan, image, spacing[:2], window, device)
            slices.append(prediction.probabilities.argmax(0).to(torch.uint8).numpy())
            if prediction.border is not None:
                rims.append(prediction.border[0].numpy())
            if prediction.window_probabilities:
                probabilities.append(max(prediction.window_probabilities))
        labels = np.stack(slices, axis=-1)
        border = np.stack(rims, axis=-1) if rims else None
        record.update(level="image" if canonical.shape[2] == 1 else "slice",
                      probabilities=[round(p, 6) for p in probabilities])
        if cgm and settings.cgm_filter:
            labels, report = gate_images(labels, probabilities, settings.cgm_threshold)
            return labels, border, record, report
        return labels, border, record, FilterReport()
    image = to_channel_first(normalize(canonical.astype(np.float32), plan.normalization), 3)
    prediction = predict_on_native_grid(model, plan, image, spacing, window, device)
    labels = prediction.probabilities.argmax(0).to(torch.uint8).numpy()
    border = None if prediction.border is None else prediction.border[0].numpy()
    del image
    record["level"] = "window"
    if prediction.window_probabilities:
        p = np.asarray(prediction.window_probabilities)
        record["windows"] = {"count": int(p.size), "rejected": int((p < settings.cgm_threshold).sum()),
                             "min": round(float(p.min()), 6), "max": round(float(p.max()), 6),
                             "mean": round(float(p.mean()), 6)}
    if cgm and settings.cgm_filter and prediction.presence is not None:
        labels, report = gate_voxels(labels, prediction.presence[0].numpy(), settings.cgm_threshold)
        return labels, border, record, report
    return labels, border, record, FilterReport()


def segment_case(model: nn.Module, plan: Plan, case: InferCase, output_dir: Path, settings: InferSettings,
                 device: torch.device | None = None, seg_identity: SegIdentity | None = None) -> dict[str, Any]:
    """Segment one case and write its outputs; returns the report (also written as ``<case>.json``).

    ``seg_identity`` names the DICOM SEG (UIDs, algorithm, series description) where the caller must know them
    beforehand: ``pacs-sync`` asks the PACS for exactly these UIDs to store a result only once."""
    device = device or settings.torch_device()
    model = model_for_mode(model, plan, settings.prune_level, settings.unetpp_heads)  # refused before any reading
    name = shown_name(Path(settings.input_root)) if settings.input_root else shown_name(case.files[0].parent)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    study: LoadedStudy = load_study(case, name, settings.tolerance, settings.spacing_tolerance, settings.max_voxels)
    canonical = to_model_space(study.data, study.affine)
    _plan_checks(canonical, plan, case.shown)
    timings["read"] = time.perf_counter() - clock

    clock = time.perf_counter()
    labels, border, cgm, cgm_report = _predict(model, plan, canonical, model_space_spacing(study.affine), settings,
                                               device)
    del canonical
    timings["predict"] = time.perf_counter() - clock

    clock = time.perf_counter()
    lcc = FilterReport()
    if settings.keep_largest_component:
        labels, lcc = keep_largest_component(labels)
    found = None
    if settings.instances != "none":
        found = instances_from_labels(labels, settings.instances, spacing=model_space_spacing(study.affine),
                                      border_probability=border)
    del border
    labels = to_input_space(labels, study.affine)
    timings["postprocess"] = time.perf_counter() - clock

    clock = time.perf_counter()
    outputs = {"mask": str(write_mask(output_dir / f"{case.case_id}.nii.gz", labels, study))}
    instance_report: dict[str, Any] | None = None
    if found is not None:
        outputs["instances"] = str(output_dir / f"{case.case_id}_instances.nii.gz")
        instance_report = _write_instances(Path(outputs["instances"]), found, study, plan, settings.instances)
    seg_error: str | None = None
    if study.series is not None and settings.dicom_seg:
        seg_error = _write_seg(output_dir / f"{case.case_id}.seg.dcm", labels, study, plan, settings, case, name,
                               seg_identity)
        if seg_error is None:
            outputs["seg"] = str(output_dir / f"{case.case_id}.seg.dcm")
    timings["write"] = time.perf_counter() - clock

    voxel_ml = float(abs(np.linalg.det(study.affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=plan.num_classes)
    names = _class_names(plan)
    report = {
        "case_id": case.case_id, "source": case.shown, "kind": case.kind, "key": settings.key(case),
        "model_id": settings.model_id, **provenance(settings), "outputs": outputs, "shape": list(study.out_shape),
        "voxel_ml": voxel_ml, "foreground_voxels": int(counts[1:].sum()),
        "class_volumes_ml": {names.get(c, str(c)): round(float(counts[c]) * voxel_ml, 6)
                             for c in range(1, plan.num_classes)},
        "cgm": {**cgm, "removed_voxels": cgm_report.removed_voxels, "removed_slices": cgm_report.removed_slices},
        "keep_largest_component": {"applied": settings.keep_largest_component, "removed_voxels": lcc.removed_voxels},
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if instance_report is not None:
        report["instances"] = instance_report
    if study.series is not None:
        report["frame_of_reference_uid"] = study.series.frame_of_reference
        report["series_instance_uid"] = case.slices[0].series if case.slices else ""
        report["dicom_seg"] = Path(outputs["seg"]).name if "seg" in outputs else None
        report["dicom_seg_error"] = seg_error
    write_json(output_dir / f"{case.case_id}.json", report)  # last: it marks the case done
    return report


def _write_instances(path: Path, found: Instances, study: LoadedStudy, plan: Plan, method: str) -> dict[str, Any]:
    """Write the instance map on the mask's grid (uint16, int32 past 65535 objects); return its report entry.

    Sizes: ``volume_ml`` for volumes, ``area_mm2`` for 2D images (the affine is in mm, as NIfTI and DICOM
    define it). The objects list stops at :data:`MAX_OBJECTS` (``objects_truncated`` says so).
    """
    write_mask(path, to_input_space(found.ids, study.affine), study,
               np.uint16 if len(found.classes) <= 65536 else np.int32)
    axes = np.asarray(study.affine, dtype=float)[:3, :3]
    if len(study.out_shape) == 2:
        size_key, unit = "area_mm2", float(np.linalg.norm(np.cross(axes[:, 0], axes[:, 1])))
    else:
        size_key, unit = "volume_ml", float(abs(np.linalg.det(axes))) / 1000.0
    per_class, objects = object_table(found, unit, size_key, _class_names(plan), MAX_OBJECTS)
    count = len(found.classes) - 1
    return {"method": method, "count": count, "per_class": per_class, "objects": objects,
            "objects_truncated": count > len(objects)}


def _write_seg(path: Path, labels: np.ndarray, study: LoadedStudy, plan: Plan, settings: InferSettings,
               case: InferCase, name: Callable[[Path], str], identity: SegIdentity | None = None) -> str | None:
    """Write the case's DICOM SEG; None when written, else why not (the mask stands, the case is done).

    Only :class:`~tasks.inference.dicom_seg.SegUnavailable` (the sources cannot give a SEG) is caught:
    anything else, a full output disk included, still fails the case.
    """
    from tasks.inference.dicom_seg import SegUnavailable, write_dicom_seg

    assert study.series is not None
    try:
        write_dicom_seg(path, labels.reshape(study.series.shape), study.series.files, plan.label_names,
                        plan.num_classes, settings.model_version or settings.model_id or "1", name, identity)
        return None
    except SegUnavailable as error:
        path.unlink(missing_ok=True)  # an earlier run's SEG would contradict this mask
        log.warning("%s (%s): mask written, DICOM SEG not written: %s", case.case_id, case.shown, error)
        return str(error)


@functools.cache
def unetflow_version() -> str:
    """The installed package's version: which code made an output is part of its audit trail."""
    try:
        return importlib.metadata.version("unetflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def provenance(settings: InferSettings) -> dict[str, Any]:
    """What an audit asks of an output: which model (name, version, URI, weights hash), which code, when (UTC)."""
    return {"model": {"name": settings.model_name, "version": settings.model_version, "uri": settings.model_uri,
                      "id": settings.model_id},
            "unetflow_version": unetflow_version(), "created_at": utc_now()}


def _class_names(plan: Plan) -> dict[int, str]:
    return {value: name for name, value in plan.label_names.items()}
