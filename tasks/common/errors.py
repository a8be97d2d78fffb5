"""The exceptions for bad input data: a case that cannot be ingested or segmented, or a whole dataset that cannot.

``CaseRejected``: ingest turns it into a rejected case, inference into a failed case; neither stops the
batch. It lives here because both stages raise it (through the shared readers in ``tasks.imaging``).
Besides the text for people (the file, relative to its inbox, and why), each carries a machine-readable
``code`` that ``rejected.json`` and the inference reports keep, so a script can count or filter rejections.

``DatasetRejected``: what the cases *mean* is unknown or contradictory (a missing or broken ``dataset.json``,
label names that disagree with it), so no case can be taken at all — guessing would change what a label means.
"""

from __future__ import annotations

#: The reason codes, and what each means.
REASON_CODES: dict[str, str] = {
    "unreadable": "the file cannot be opened or parsed as what it claims to be",
    "truncated": "the file is shorter than its header says",
    "too_large": "the header claims more voxels than data.max_voxels",
    "dimensions": "the image has a number of axes the dataset cannot take",
    "voxel_type": "voxels are not finite real numbers",
    "geometry": "grids that must agree do not (image vs label, nibabel vs SimpleITK, qform vs sform)",
    "channels": "channel files are missing, extra or inconsistent",
    "dicom_series": "the slices do not form one evenly spaced series",
    "dicom_unsupported": "a DICOM form unetflow does not read (multi-frame, colour)",
    "seg": "a DICOM SEG label that cannot be mapped onto its series",
    "label_values": "label values that are not the declared classes",
    "instances": "an instance map that is missing, or disagrees with its label (foreground, one class per instance)",
    "no_label": "an image without a label",
    "label_without_image": "a label without an image",
    "unsafe_id": "a case name that is not a safe file name",
    "duplicate_id": "two inputs claim the same case ID",
    "identity": "a name that would carry the patient's identity",
    "dataset_json": "dataset.json is missing, unreadable, incomplete or contradicts the files",
    "params": "params.yaml contradicts dataset.json, or leaves unset what the source cannot tell (data.label_names)",
    "memory": "the case is too large to load on this machine",
}


class CaseRejected(Exception):
    """A case that cannot be used as it is; the message names the file (relative to its inbox) and why,
    ``code`` (one of :data:`REASON_CODES`) says what kind of problem it is."""

    def __init__(self, message: str, code: str = "unreadable") -> None:
        if code not in REASON_CODES:
            raise ValueError(f"unknown reason code {code!r}")
        super().__init__(message)
        self.code = code


class DatasetRejected(Exception):
    """The whole dataset refused before any case is read or written: the message names the file (or the
    ``params.yaml`` key) and why, ``code`` (one of :data:`REASON_CODES`) the kind of problem."""

    def __init__(self, message: str, code: str = "dataset_json") -> None:
        if code not in REASON_CODES:
            raise ValueError(f"unknown reason code {code!r}")
        super().__init__(message)
        self.code = code
