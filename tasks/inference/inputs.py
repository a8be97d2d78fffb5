"""What an inference inbox holds: NIfTI files, nnU-Net ``imagesTs`` channel files, DICOM series in nested folders.

* a NIfTI file is one case named after the file (``case.nii.gz`` → ``case``);
* nnU-Net channel files ``case_0000.nii.gz``, ``case_0001.nii.gz``… are one multi-channel case;
* DICOM files anywhere below the folder (any name) are grouped by SeriesInstanceUID, one case per
  series, named by the same salted pseudonym ingest uses (``dcm-…``), never by patient folders.

Nothing is dropped silently: an odd file (channel gap, unsafe name, unreadable DICOM header) becomes
a *problem* with its name and the reason, and DICOM SEG objects (e.g. an earlier run's output) are
listed as ignored. Series discovery reuses :mod:`tasks.imaging.dicom_series` (the ingest reader).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.common.names import printable, pseudonym, safe_case_id, unsafe_id
from tasks.imaging.dicom_headers import SliceHeader, looks_like_dicom, scan
from tasks.imaging.nifti_files import channel_of, strip_nifti_suffix


@dataclass(frozen=True)
class InferCase:
    """One study to segment. ``files``: NIfTI channel files in channel order, or the series' DICOM files."""

    case_id: str
    kind: Literal["nifti", "dicom"]
    files: tuple[Path, ...]
    shown: str  # how reports name it: the file, or the series' folder, relative to the inbox
    slices: tuple[SliceHeader, ...] = ()


@dataclass(frozen=True)
class InputProblem:
    case_id: str
    reason: str
    status: Literal["failed", "ignored"] = "failed"


def _relative(path: Path, root: Path) -> str:
    try:
        return printable(path.relative_to(root).as_posix())
    except ValueError:
        return printable(path.name)


def _nifti_cases(root: Path) -> tuple[list[InferCase], list[InputProblem]]:
    groups: dict[str, dict[int | None, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.iterdir()):
        stem = strip_nifti_suffix(path.name)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        case, channel = channel_of(stem) or (stem, None)
        groups[case][channel].append(path)
    cases, problems = [], []
    for case, channels in sorted(groups.items()):
        files = sorted(p for paths in channels.values() for p in paths)
        shown = ", ".join(_relative(p, root) for p in files)
        case_id = safe_case_id(case)
        if case_id is None:
            problems.append(InputProblem(unsafe_id(case), f"{shown}: unsafe case name {printable(repr(case))}"))
            continue
        order = sorted(k for k in channels if k is not None)
        if any(len(p) > 1 for p in channels.values()) or (None in channels and order):
            problems.append(InputProblem(case_id, f"{shown}: two files for one case {case_id}"))
            continue
        if order and order != list(range(len(order))):
            problems.append(InputProblem(case_id, f"{shown}: channel files {order}, expected 0..{len(order) - 1}"))
            continue
        ordered = tuple(channels[k][0] for k in (order or [None]))
        cases.append(InferCase(case_id, "nifti", ordered, shown))
    return cases, problems


def _dicom_cases(root: Path, exclude: Path | None, salt: str) -> tuple[list[InferCase], list[InputProblem]]:
    def skip(path: Path) -> bool:
        return strip_nifti_suffix(path.name) is not None or path.suffix in (".json", ".csv") or (
            exclude is not None and exclude in path.parents)

    result = scan(root, skip=skip)
    problems = [InputProblem(unsafe_id(str(path)).replace("unsafe", "file"), f"{_relative(path, root)}: {reason}")
                for path, reason in result.unreadable]
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in result.headers:
        if header.is_seg:
            problems.append(InputProblem(unsafe_id(str(header.path)).replace("unsafe", "seg"),
                                         f"{_relative(header.path, root)}: a DICOM SEG, not an image", "ignored"))
        else:
            series[header.series].append(header)
    cases = []
    for uid, slices in sorted(series.items(), key=lambda item: str(item[1][0].path)):
        folder = slices[0].path.parent
        shown = f"{_relative(folder, root) if folder != root else '.'}/ (series of {len(slices)} file(s))"
        cases.append(InferCase(pseudonym(salt, slices[0].study, uid), "dicom",
                               tuple(sorted(s.path for s in slices)), shown, tuple(slices)))
    return cases, problems


def _other_files(root: Path, exclude: Path | None) -> list[InputProblem]:
    """Files that are neither NIfTI nor DICOM: listed as ignored, so nothing disappears unreported."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or Path(folder, d) != exclude))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or strip_nifti_suffix(name) is not None or looks_like_dicom(path):
                continue
            found.append(InputProblem(unsafe_id(str(path)).replace("unsafe", "file"),
                                      f"{_relative(path, root)}: neither NIfTI nor DICOM", "ignored"))
    return found


def discover_cases(input_dir: Path, exclude: Path | None = None,
                   salt: str = "unetflow") -> tuple[list[InferCase], list[InputProblem]]:
    """(cases sorted by ID, problems); ``exclude`` (the output folder, if inside) is not scanned."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    cases, problems = _nifti_cases(input_dir)
    dicom, dicom_problems = _dicom_cases(input_dir, exclude, salt)
    seen: dict[str, str] = {}
    unique = []
    for case in [*cases, *dicom]:
        if case.case_id in seen:
            problems.append(InputProblem(case.case_id, f"{case.shown}: duplicate case ID {case.case_id} "
                                                       f"(also {seen[case.case_id]})"))
            continue
        seen[case.case_id] = case.shown
        unique.append(case)
    return sorted(unique, key=lambda c: c.case_id), problems + dicom_problems + _other_files(input_dir, exclude)
