"""``dataset.json`` of an nnU-Net v2 or MSD inbox: what each label value means and what each channel is.

For these sources it is the source of truth, so it is read strictly: label names and values (nnU-Net v2
``{"background": 0, "liver": 1}`` or MSD ``{"0": "background", "1": "liver"}``, values 0..N-1),
channel names in channel order (v2 ``channel_names``, MSD ``modality``), ``file_ending`` (NIfTI only)
and ``numTraining``. A missing, unreadable or incomplete file refuses the *whole* dataset
(:class:`~tasks.common.errors.DatasetRejected`) before any case is read: ingesting the cases under
guessed meanings (every value "foreground", an unknown modality) would silently change what a label
means. The same goes for ``params.yaml`` keys that contradict it, and for ``data.label_names: auto``
on a source that has no ``dataset.json`` to take the names from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.common.errors import DatasetRejected
from tasks.common.names import printable
from tasks.imaging.nifti_files import NIFTI_SUFFIXES

EXAMPLE = ('{"labels": {"background": 0, "liver": 1}, "channel_names": {"0": "CT"}, '
           '"file_ending": ".nii.gz", "numTraining": 20}')


@dataclass(frozen=True)
class DatasetDescription:
    """What a valid ``dataset.json`` declares (``num_training`` None: not stated, not checked)."""

    labels: dict[str, int]
    channel_names: tuple[str, ...]
    file_ending: str
    num_training: int | None


def read_dataset_json(raw: Path) -> DatasetDescription:
    """The inbox's ``dataset.json``, checked; anything missing or odd refuses the dataset with why."""
    path = raw / "dataset.json"
    if not path.is_file():
        raise DatasetRejected(f"dataset.json: missing; an nnU-Net/MSD inbox needs one naming its label values "
                              f"and image channels, e.g. {EXAMPLE}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetRejected(f"dataset.json: unreadable, not valid JSON - cut off or damaged? "
                              f"({printable(str(error))[:120]})") from None
    except OSError as error:
        raise DatasetRejected(f"dataset.json: cannot be read ({printable(str(error))[:120]})") from None
    if not isinstance(meta, dict):
        raise DatasetRejected(f"dataset.json: holds a JSON {type(meta).__name__}, not an object like {EXAMPLE}")
    return DatasetDescription(parse_labels(meta), parse_channel_names(meta), parse_file_ending(meta),
                              parse_num_training(meta))


def parse_labels(meta: dict[str, Any]) -> dict[str, int]:
    """``labels`` as ``{name: value}`` from either form; region labels and the ignore label are refused."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetRejected('dataset.json: no "labels" naming the label values, e.g. '
                              '{"background": 0, "liver": 1} (nnU-Net v2) or {"0": "background", "1": "liver"} (MSD)')
    regions = {name: value for name, value in labels.items() if isinstance(value, list)}
    if regions or "regions_class_order" in meta:
        shown = ", ".join(f"{printable(repr(n))}: {v}" for n, v in list(regions.items())[:3]) or "regions_class_order"
        raise DatasetRejected(
            f"dataset.json: region labels ({shown}): region-based training is not supported; unetflow trains one "
            f"class per label value. Convert: name each value found in labelsTr/ once, e.g. {{\"background\": 0, "
            f"\"edema\": 1, \"necrosis\": 2, \"enhancing tumor\": 3}}, drop regions_class_order, and build the "
            f"regions from the predicted classes afterwards")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        named = {str(name): int(value) for name, value in labels.items()}
    elif all(isinstance(v, str) and str(k).isdigit() for k, v in labels.items()):
        named = {name: int(value) for value, name in labels.items()}
        if len(named) != len(labels):
            raise DatasetRejected(f"dataset.json: labels name two values alike ({printable(str(labels))[:160]})")
    else:
        raise DatasetRejected(f"dataset.json: labels {printable(str(labels))[:160]} are neither "
                              f'{{"name": value}} (nnU-Net v2) nor {{"value": "name"}} (MSD)')
    if "ignore" in named:
        raise DatasetRejected(f"dataset.json: an \"ignore\" label (value {named['ignore']}, sparse annotation) "
                              f"is not supported: unetflow would train it as a class")
    if sorted(named.values()) != list(range(len(named))) or len(named) < 2:
        raise DatasetRejected(f"dataset.json: label values {sorted(named.values())} must be 0..N-1 "
                              f"(background 0, at least one class)")
    background = [name for name in named if name.lower() == "background"]
    if background and named[background[0]] != 0:
        raise DatasetRejected(f"dataset.json: background is {named[background[0]]}; it must be 0")
    return dict(sorted(named.items(), key=lambda item: item[1]))


def parse_channel_names(meta: dict[str, Any]) -> tuple[str, ...]:
    """Channel names in channel order, from ``channel_names`` (v2) or ``modality`` (MSD): ``{"0": "CT"}``."""
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DatasetRejected('dataset.json: no "channel_names" (nnU-Net v2) or "modality" (MSD) naming the '
                              'image channels, e.g. {"0": "CT"} or {"0": "T2", "1": "ADC"}')
    if set(channels) != {str(c) for c in range(len(channels))}:
        raise DatasetRejected(f"dataset.json: channel keys {sorted(channels)} must be \"0\"..\"{len(channels) - 1}\"")
    names = [channels[str(c)] for c in range(len(channels))]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise DatasetRejected(f"dataset.json: channel names {printable(str(names))[:160]} must be non-empty text")
    return tuple(names)


def parse_file_ending(meta: dict[str, Any]) -> str:
    """``file_ending`` (nnU-Net v2); MSD has none and is ``.nii.gz``. unetflow reads NIfTI only."""
    ending = meta.get("file_ending", NIFTI_SUFFIXES[0])
    if ending not in NIFTI_SUFFIXES:
        raise DatasetRejected(f"dataset.json: file_ending {printable(repr(ending))}: unetflow reads NIfTI only "
                              f"(.nii.gz or .nii); convert the images and labels to NIfTI")
    return str(ending)


def parse_num_training(meta: dict[str, Any]) -> int | None:
    count = meta.get("numTraining")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise DatasetRejected(f"dataset.json: numTraining {printable(repr(count))} is not a number of cases")
    return count


def check_num_training(described: DatasetDescription, found: int, images_dir: str) -> None:
    """``numTraining`` must be the number of training cases found: a difference means files went missing
    (or crept in) since the dataset was described, and the dataset is refused rather than half-trained on."""
    if described.num_training is not None and described.num_training != found:
        raise DatasetRejected(f"dataset.json: numTraining is {described.num_training}, but {images_dir}/ holds "
                              f"{found} case(s)")


def agreed_labels(configured: Literal["auto"] | dict[str, int], declared: dict[str, int] | None,
                  kind: str) -> dict[str, int]:
    """The label names the dataset is ingested with: ``dataset.json``'s, which an explicit
    ``data.label_names`` must repeat; for a source without one, ``data.label_names`` itself."""
    if declared is None:
        if configured == "auto":
            raise DatasetRejected(f"data.label_names is auto, but a {kind} inbox has no dataset.json naming its "
                                  f"classes: set data.label_names in params.yaml, e.g. {{background: 0, liver: 1}}",
                                  code="params")
        return dict(configured)
    if configured != "auto" and dict(configured) != declared:
        raise DatasetRejected(f"data.label_names {dict(configured)} disagrees with dataset.json's labels {declared}: "
                              f"set data.label_names: auto (dataset.json decides) or make them agree", code="params")
    return dict(declared)


def check_modality(configured: str, channel_names: tuple[str, ...] | None) -> None:
    """An explicit ``data.modality`` must name what ``dataset.json`` names every channel."""
    if configured == "auto" or channel_names is None:
        return
    if any(name.lower() != configured.lower() for name in channel_names):
        raise DatasetRejected(f"data.modality {configured!r} disagrees with dataset.json's channel names "
                              f"{list(channel_names)}: set data.modality: auto (dataset.json decides)", code="params")


def check_instance_settings(instance_labels: bool, labels: dict[str, int], instance_folder: str | None) -> None:
    """``data.instance_labels: true`` reads each label as the instance map of one class: it needs exactly
    one foreground class, and cannot be combined with separate instance maps."""
    if not instance_labels:
        return
    classes = [name for name, value in labels.items() if value != 0]
    if len(classes) != 1:
        raise DatasetRejected(f"data.instance_labels is true (labels are instance maps of one class), but the "
                              f"labels name {len(classes)} classes {classes}: set data.instance_labels: false, "
                              f"and give instance maps in instancesTr/ if the weight maps need them", code="params")
    if instance_folder is not None:
        raise DatasetRejected(f"data.instance_labels is true, but the inbox also has {instance_folder}/ with "
                              f"instance maps: set data.instance_labels: false to use those", code="params")
