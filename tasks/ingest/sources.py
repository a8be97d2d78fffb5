"""Discovery: the three kinds of inbox → a list of cases (and a named problem for every odd file).

* ``nnunet`` — an nnU-Net raw or MSD folder: ``imagesTr/<case>_0000.nii.gz`` (one file per channel,
  stacked to X×Y×Z×C) or ``imagesTr/<case>.nii.gz`` (MSD, possibly already 4D), ``labelsTr/<case>``,
  optionally ``instancesTr/<case>`` (instance maps, each instance inside one class); ``dataset.json``
  (required, :mod:`tasks.ingest.dataset_json`) says what the label values and the channels are.
* ``pairs`` — NIfTI pairs anywhere under the inbox, matched by ``image_pattern``/``label_pattern``.
* ``dicom`` — DICOM trees: series by SeriesInstanceUID across nested folders, labels as NIfTI
  (``label_pattern``, ``{case}`` = the pseudonymous case ID) or as a DICOM SEG referencing the series.

Nothing is lost silently: a file that belongs to no case (an orphan label, an unreadable DICOM
header, a duplicate case) becomes a rejected entry with its own reason.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from tasks.common.names import carries_identity, printable, pseudonym, redact, safe_case_id, unsafe_id
from tasks.config import DataConfig
from tasks.imaging.dicom_headers import SliceHeader, scan
from tasks.imaging.nifti_files import channel_of, strip_nifti_suffix
from tasks.ingest.dataset_json import agreed_labels, check_num_training, read_dataset_json

#: Where an nnU-Net-layout inbox keeps instance maps (beside ``labelsTr/``, same case names).
INSTANCES_DIR = "instancesTr"


@dataclass(frozen=True)
class CaseSource:
    """Everything one case is made from. ``names`` maps each input to how messages may show it."""

    case_id: str
    kind: Literal["nifti", "dicom"]
    images: tuple[Path, ...]  # NIfTI: one per channel; DICOM: the series' files (unordered)
    label: Path | None
    label_kind: Literal["nifti", "seg"] | None = "nifti"
    slices: tuple[SliceHeader, ...] = ()
    names: tuple[tuple[Path, str], ...] = ()
    allowed_tags: tuple[tuple[str, str], ...] = ()
    missing_label: str = ""  # the rejection when there is no label, given once the image itself checks out
    instances: Path | None = None  # an instance map given apart from the label (instancesTr/), never inferred

    @property
    def image(self) -> Path:
        return self.images[0]

    def name(self, path: Path) -> str:
        """The file as shown in messages: relative, patient-identifying folders hidden, escaped."""
        return dict(self.names).get(path) or printable(path.name)

    def inputs(self) -> list[Path]:
        return [*self.images, *(p for p in (self.label, self.instances) if p is not None)]


class Problem(NamedTuple):
    """An input that does not make a case: which case it would have been, why, and the reason code."""

    case_id: str
    reason: str
    code: str


@dataclass
class Discovery:
    kind: str
    sources: list[CaseSource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    modality: str | None = None
    seen: set[Path] = field(default_factory=set)  # every file a case or a problem accounts for
    tokens: set[str] = field(default_factory=set)  # patient name/ID fragments no shown path may carry
    labels: dict[str, int] | None = None  # what dataset.json names the label values (None: the source has none)
    channel_names: tuple[str, ...] | None = None  # dataset.json's channel names, in channel order
    instance_folder: str | None = None  # instancesTr/ when the inbox gives instance maps

    def reject(self, case_id: str, reason: str, code: str) -> None:
        self.problems.append(Problem(case_id, reason, code))


def detect_kind(raw: Path, data: DataConfig) -> str:
    """``auto``: an nnU-Net/MSD folder if it has dataset.json or imagesTr/, pairs if the pattern matches, else DICOM."""
    if data.source != "auto":
        return data.source
    if (raw / "dataset.json").is_file() or (raw / data.images_dir).is_dir():
        return "nnunet"
    if any(_pattern_matches(raw, data.image_pattern)):
        return "pairs"
    return "dicom"


def discover(raw: Path, data: DataConfig) -> Discovery:
    if not raw.is_dir():
        raise FileNotFoundError(f"raw folder {raw} does not exist")
    kind = detect_kind(raw, data)
    if kind == "nnunet":
        return discover_nnunet(raw, data.images_dir, data.labels_dir)
    agreed_labels(data.label_names, None, kind)  # `auto` has nothing to read the names from: refused before any case
    if kind == "pairs":
        return discover_pairs(raw, data.image_pattern, data.label_pattern)
    return discover_dicom(raw, data)


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and strip_nifti_suffix(p.name) is not None)


def _by_stem(folder: Path) -> dict[str, Path]:
    return {strip_nifti_suffix(p.name) or "": p for p in _nifti_files(folder)}


def discover_nnunet(raw: Path, images_dir: str = "imagesTr", labels_dir: str = "labelsTr") -> Discovery:
    """nnU-Net v2 raw (``_XXXX`` channel files) or MSD (4D files); ``dataset.json`` must say what the label
    values and channels are, or the whole dataset is refused (:func:`~tasks.ingest.dataset_json.read_dataset_json`)."""
    found = Discovery("nnunet")
    found.seen.add(raw / "dataset.json")
    described = read_dataset_json(raw)
    found.labels, found.channel_names = described.labels, described.channel_names
    found.modality = described.channel_names[0]
    images = raw / images_dir
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    groups: dict[str, dict[int | None, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in _nifti_files(images):
        stem = strip_nifti_suffix(path.name) or ""
        case, channel = channel_of(stem) or (stem, None)
        groups[case][channel].append(path)
    check_num_training(described, len(groups), images_dir)
    label_files, instance_files = _by_stem(raw / labels_dir), _by_stem(raw / INSTANCES_DIR)
    found.instance_folder = INSTANCES_DIR if instance_files else None
    found.seen.update(_nifti_files(images), label_files.values(), instance_files.values())
    for case, channels in sorted(groups.items()):
        _nnunet_case(found, case, channels, label_files.get(case), instance_files.get(case), (images_dir, labels_dir))
    for folder, files, what in ((labels_dir, label_files, "label"), (INSTANCES_DIR, instance_files, "instance map")):
        for stem, path in sorted(files.items()):
            if stem not in groups:
                found.reject(safe_case_id(stem) or unsafe_id(stem), f"{folder}/{printable(path.name)}: {what} "
                                                                    f"without an image", "label_without_image")
    return found


def _nnunet_case(found: Discovery, case: str, channels: dict[int | None, list[Path]], label: Path | None,
                 instances: Path | None, folders: tuple[str, str]) -> None:
    """One case of an nnU-Net folder: a source, or a problem with its files (duplicates, channel files
    that do not match ``dataset.json``, a label without the instance map the other cases have)."""
    images_dir, labels_dir = folders
    shown = printable(f"{images_dir}/{case}")
    case_id = safe_case_id(case)
    if case_id is None:
        found.reject(unsafe_id(case), f"{shown}: unsafe case ID {printable(repr(case))}", "unsafe_id")
        return
    duplicated = [paths for paths in channels.values() if len(paths) > 1]
    if duplicated or (None in channels and len(channels) > 1):
        files = sorted(p.name for paths in channels.values() for p in paths)
        found.reject(case_id, f"{shown}: duplicate case ID {case_id} ({', '.join(files)})", "duplicate_id")
        return
    order = sorted(k for k in channels if k is not None)
    if order and order != list(range(len(order))):
        found.reject(case_id, f"{shown}: channel files {order}; expected 0..{len(order) - 1}", "channels")
        return
    declared = len(found.channel_names or ())
    if order and len(order) != declared:
        found.reject(case_id, f"{shown}: {len(order)} channel file(s), dataset.json declares {declared}", "channels")
        return
    if label is not None and found.instance_folder is not None and instances is None:
        found.reject(case_id, f"{labels_dir}/{printable(label.name)}: no instance map in {found.instance_folder}/ "
                              f"(it holds the other cases')", "instances")
        return
    paths = tuple(channels[k][0] for k in (order or [None]))
    shown_files = (*paths, *(p for p in (label, instances) if p is not None))
    names = tuple((p, printable(f"{p.parent.name}/{p.name}")) for p in shown_files)
    found.sources.append(CaseSource(case_id, "nifti", paths, label, "nifti" if label else None, names=names,
                                    missing_label=f"{printable(paths[0].name)}: no label in {labels_dir}/",
                                    instances=instances))


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    head, tail = pattern.split("{case}")
    escape = lambda text: re.escape(text).replace(r"\*", "[^/]*")  # noqa: E731
    return re.compile(f"{escape(head)}(?P<case>[^/]+){escape(tail)}", re.DOTALL)


def _pattern_matches(raw: Path, pattern: str) -> list[tuple[str, Path]]:
    regex = _pattern_regex(pattern)
    hits = []
    for path in sorted(raw.glob(pattern.replace("{case}", "*"))):
        match = regex.fullmatch(path.relative_to(raw).as_posix())
        if match and path.is_file() and not path.name.startswith("."):
            hits.append((match["case"], path))
    return hits


def discover_pairs(raw: Path, image_pattern: str, label_pattern: str) -> Discovery:
    """Image/label pairs by pattern: ``images/{case}.nii.gz`` ↔ ``labels/{case}.nii.gz`` (relative to raw)."""
    found = Discovery("pairs")
    by_case: dict[str, list[Path]] = defaultdict(list)
    for case, path in _pattern_matches(raw, image_pattern):
        by_case[case].append(path)
    labels = dict(_pattern_matches(raw, label_pattern))
    found.seen.update(*by_case.values(), labels.values())
    for case, paths in sorted(by_case.items()):
        shown = printable(paths[0].relative_to(raw).as_posix())
        case_id = safe_case_id(case)
        if case_id is None:
            found.reject(unsafe_id(case), f"{shown}: unsafe case ID {printable(repr(case))}", "unsafe_id")
            continue
        if len(paths) > 1:
            found.reject(case_id, f"{shown}: duplicate case ID {case_id} "
                                  f"({', '.join(printable(p.name) for p in paths)})", "duplicate_id")
            continue
        label = labels.get(case)
        names = tuple((p, printable(p.relative_to(raw).as_posix())) for p in (paths[0], *([label] if label else [])))
        found.sources.append(CaseSource(case_id, "nifti", (paths[0],), label, "nifti" if label else None,
                                        names=names, missing_label=f"{shown}: no label matching {label_pattern!r}"))
    for case, label in sorted(labels.items()):
        if case not in by_case:
            found.reject(safe_case_id(case) or unsafe_id(case),
                         f"{printable(label.relative_to(raw).as_posix())}: label without an image",
                         "label_without_image")
    return found


def discover_dicom(raw: Path, data: DataConfig) -> Discovery:
    """Series by SeriesInstanceUID anywhere under ``raw``; case IDs never carry patient identity."""
    found = Discovery("dicom")
    result = scan(raw, skip=lambda p: strip_nifti_suffix(p.name) is not None or p.suffix == ".json")
    found.seen.update(h.path for h in result.headers)
    found.seen.update(path for path, _ in result.unreadable)
    every_token = set().union(*result.tokens.values()) if result.tokens else set()
    found.tokens = every_token
    for path, reason in result.unreadable:
        shown = redact(path, raw, every_token)
        found.reject(unsafe_id(str(path)).replace("unsafe", "file"), f"{shown}: {reason}", "unreadable")
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    segs: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in result.headers:
        if header.is_seg:
            for uid in header.referenced_series or ("",):
                segs[uid].append(header)
        else:
            series[header.series].append(header)
    folders = Counter(_common_folder([h.path for h in slices]) for slices in series.values())
    modalities = Counter(dict(h.allowed).get("Modality", "") for s in series.values() for h in s[:1])
    found.modality = modalities.most_common(1)[0][0] if modalities else None
    seen: dict[str, str] = {}
    for uid, slices in sorted(series.items(), key=lambda item: str(item[1][0].path)):
        tokens = result.tokens.get(uid, set())
        seg_headers = segs.pop(uid, [])
        first = slices[0]
        study_uids = sorted({s.study for s in slices})
        shown = redact(first.path, raw, every_token)
        case_id = pseudonym(data.dicom_id_salt, study_uids[0], uid)
        if data.dicom_case_id == "folder":
            folder = _common_folder([s.path for s in slices])
            relative = folder.relative_to(raw).as_posix() if folder != raw else "root"
            candidate = relative.replace("/", "_")
            if folders[folder] > 1:
                candidate = f"{candidate}_{case_id[4:10]}"
            if carries_identity(candidate, tokens):
                found.reject(case_id, f"{shown}: folder name carries the patient's name or ID; "
                                      f"use data.dicom_case_id: hash", "identity")
                continue
            if safe_case_id(candidate) is None:
                found.reject(case_id, f"{shown}: folder name is not a safe case ID", "unsafe_id")
                continue
            case_id = candidate
        if case_id in seen:
            found.reject(case_id, f"{shown}: duplicate case ID {case_id} (also {seen[case_id]})", "duplicate_id")
            continue
        seen[case_id] = shown
        label_path = raw / data.label_pattern.replace("{case}", case_id)
        if len(seg_headers) > 1:
            found.reject(case_id, f"{shown}: {len(seg_headers)} DICOM SEG objects reference this series "
                                  f"({', '.join(redact(h.path, raw, every_token) for h in seg_headers)})", "seg")
            continue
        label: Path | None = None
        label_kind: Literal["nifti", "seg"] | None = None
        if seg_headers:
            label, label_kind = seg_headers[0].path, "seg"
        elif label_path.is_file():
            label, label_kind = label_path, "nifti"
            found.seen.add(label_path)
        missing = (f"{shown}: no label for series {case_id}: expected "
                   f"{data.label_pattern.replace('{case}', case_id)} or a DICOM SEG")
        files = tuple(s.path for s in slices)
        names = tuple((p, redact(p, raw, every_token)) for p in (*files, *([label] if label else [])))
        found.sources.append(CaseSource(case_id, "dicom", files, label, label_kind, slices=tuple(slices),
                                        names=names, allowed_tags=first.allowed, missing_label=missing))
    for _uid, seg_headers in sorted(segs.items()):
        for header in seg_headers:
            found.reject(unsafe_id(str(header.path)).replace("unsafe", "seg"),
                         f"{redact(header.path, raw, every_token)}: DICOM SEG references no series in the inbox",
                         "seg")
    return found


def _common_folder(paths: list[Path]) -> Path:
    parents = [p.parent for p in paths]
    common = parents[0]
    while not all(common == p or common in p.parents for p in parents):
        common = common.parent
    return common
