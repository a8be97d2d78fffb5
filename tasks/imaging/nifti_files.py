"""NIfTI file names, in one place: which names are NIfTI, the stem, and nnU-Net's ``_XXXX`` channel files.

Ingest's discovery and inference's inbox scan both group ``case_0000.nii.gz``, ``case_0001.nii.gz``…
into one multi-channel case; they must agree on what a channel file is.
"""

from __future__ import annotations

import re

#: Longest first: ``a.nii.gz`` is ``a``, not ``a.nii``.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def strip_nifti_suffix(name: str) -> str | None:
    """The name without its NIfTI suffix; None when it is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def channel_of(stem: str) -> tuple[str, int] | None:
    """``(case, channel)`` for an nnU-Net channel file stem (``case_0001`` → ``("case", 1)``); else None."""
    match = _CHANNEL.match(stem)
    return (match["case"], int(match["channel"])) if match else None
