"""Batch inference: segment every study in a folder, each on its own, resumable.

Each case is independent: a corrupt or unsupported file is reported by name and skipped, outputs
are written atomically, and a case whose mask already exists is skipped, so rerunning after a crash
only does what is missing. Masks are written on the input's exact grid (shape, affine, header).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from torch import nn

from tasks.atomic import atomic_path, write_json, write_text
from tasks.inference import predict_labels
from tasks.ingest import NIFTI_SUFFIXES, safe_case_id, strip_nifti_suffix
from tasks.preprocess import normalize, to_channel_first


@dataclass
class CaseOutcome:
    case_id: str
    status: str  # "done", "skipped" (already done), "failed"
    output: str = ""
    error: str = ""
    seconds: float = 0.0
    foreground_voxels: int = 0


def discover_inputs(input_dir: Path) -> list[tuple[str, Path]]:
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    found = []
    for path in sorted(input_dir.iterdir()):
        stem = strip_nifti_suffix(path.name)
        if stem is None or path.name.startswith("."):
            continue
        case = stem[:-5] if stem.endswith("_0000") else stem
        found.append((safe_case_id(case) or "", path))
    return found


def _load_as_canonical(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    original = nib.load(str(path))
    data = np.asanyarray(original.dataobj)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ValueError(f"{path.name}: expected a 2D or 3D image, got shape {original.shape}")
    image = nib.Nifti1Image(data, original.affine)
    return original, np.asanyarray(nib.as_closest_canonical(image).dataobj)


def segment_case(model: nn.Module, plan: dict, path: Path, output: Path, roi_size: tuple[int, ...],
                 overlap: float, sw_batch_size: int, device: torch.device) -> int:
    original, canonical = _load_as_canonical(path)
    if not np.isfinite(canonical).all():
        raise ValueError(f"{path.name}: image holds NaN or infinite voxels")
    dims = plan["spatial_dims"]
    if dims == 2 and canonical.shape[2] != 1:
        raise ValueError(f"{path.name}: a 2D model cannot segment a volume of shape {canonical.shape}")
    image = to_channel_first(normalize(canonical.astype(np.float32), plan["normalization"]), dims)
    if image.shape[0] != plan["in_channels"]:
        raise ValueError(f"{path.name}: {image.shape[0]} channels, the model expects {plan['in_channels']}")
    labels = predict_labels(model, image, roi_size, overlap, sw_batch_size, device)
    if dims == 2:
        labels = labels[..., None]
    # Undo the reorientation so the mask lies on the input's own voxel grid.
    to_input = ornt_transform(axcodes2ornt("RAS"), io_orientation(original.affine))
    labels = apply_orientation(labels, to_input).astype(np.uint8).reshape(original.shape[:3]
                                                                          if len(original.shape) >= 3
                                                                          else original.shape)
    header = original.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    mask = nib.Nifti1Image(labels, original.affine, header)
    with atomic_path(output) as tmp:
        nib.save(mask, tmp)
    return int((labels > 0).sum())


def run_case(model: nn.Module, plan: dict, case_id: str, path: Path, output_dir: Path,
             roi_size: tuple[int, ...], overlap: float, sw_batch_size: int,
             device: torch.device) -> CaseOutcome:
    """Never raises for a bad input: the outcome says what happened to the case."""
    if not case_id:
        return CaseOutcome(repr(path.name), "failed", error=f"{path.name!r}: unsafe case name")
    output = output_dir / f"{case_id}.nii.gz"
    if output.exists():
        return CaseOutcome(case_id, "skipped", output=str(output))
    started = time.perf_counter()
    try:
        voxels = segment_case(model, plan, path, output, roi_size, overlap, sw_batch_size, device)
    except Exception as error:  # one bad study never stops the batch
        return CaseOutcome(case_id, "failed", error=f"{path.name}: {error}")
    return CaseOutcome(case_id, "done", output=str(output), seconds=time.perf_counter() - started,
                       foreground_voxels=voxels)


def write_summary(output_dir: Path, outcomes: list[CaseOutcome]) -> Path:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(asdict(outcomes[0])) if outcomes else ["case_id"])
    writer.writeheader()
    writer.writerows(asdict(o) for o in outcomes)
    path = output_dir / "summary.csv"
    write_text(path, table.getvalue())
    write_json(output_dir / "summary.json", {
        "done": sum(o.status == "done" for o in outcomes),
        "skipped": sum(o.status == "skipped" for o in outcomes),
        "failed": [{"case_id": o.case_id, "error": o.error} for o in outcomes if o.status == "failed"],
    })
    return path


__all__ = ["NIFTI_SUFFIXES", "CaseOutcome", "discover_inputs", "run_case", "write_summary"]
