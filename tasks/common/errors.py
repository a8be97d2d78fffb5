"""The one exception for bad input data: a case that cannot be ingested or segmented, with the file and the reason.

Ingest turns it into a rejected case, inference into a failed case; neither stops the batch. It lives
here because both stages raise it (through the shared readers in ``tasks.imaging``). Besides the text
for people (the file, relative to its inbox, and why), each carries a machine-readable ``code`` that
``rejected.json`` and the inference reports keep, so a script can count or filter rejections by kind.
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
    "no_label": "an image without a label",
    "label_without_image": "a label without an image",
    "unsafe_id": "a case name that is not a safe file name",
    "duplicate_id": "two inputs claim the same case ID",
    "identity": "a name that would carry the patient's identity",
    "dataset_json": "dataset.json is missing, unreadable or contradicts the files",
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
