"""What the last ingest made of each case: the settings key, the input fingerprint and the index.

Each case's inputs are fingerprinted (sha256 of every input file and the settings); an unchanged
case whose outputs are intact is not read again. The index (``sources.json``) records the fingerprint,
the verdict and the manifest record per case, and is ignored whole when ``INGEST_VERSION`` changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.common.hashing import json_digest, sha256_file
from tasks.config import DataConfig
from tasks.ingest.sources import CaseSource

#: Bump when the output of an unchanged input would change, so the index does not skip it.
INGEST_VERSION = 4  # 4: labels keep their classes, instance maps only from instancesTr/ or instance_labels


INDEX_FILE = "sources.json"


@dataclass(frozen=True)
class IngestSettings:
    """What validating a case depends on (a plain value, so it maps cheaply onto workers).

    ``label_names`` are the resolved classes (``dataset.json``'s, or ``data.label_names``), never ``auto``.
    """

    label_names: dict[str, int]
    instance_labels: bool
    tolerance: float = 1e-4
    spacing_tolerance: float = 0.01
    max_voxels: int = 1_000_000_000
    spatial_dims: Literal["auto", 2, 3] = "auto"  # declared by data.spatial_dims; 2 lets a DICOM slice be a case

    @classmethod
    def from_config(cls, data: DataConfig, label_names: dict[str, int] | None = None) -> IngestSettings:
        """``label_names``: the classes discovery resolved (:func:`tasks.ingest.batch.plan_ingest` passes
        them); without them ``data.label_names`` must be explicit."""
        if label_names is None:
            if data.label_names == "auto":
                raise ValueError("data.label_names is auto: resolve it from the source first (plan_ingest)")
            label_names = dict(data.label_names)
        return cls(dict(label_names), data.instance_labels, data.geometry_tolerance,
                   data.slice_spacing_tolerance, data.max_voxels, data.spatial_dims)

    def key(self) -> str:
        return json_digest({"version": INGEST_VERSION, "labels": self.label_names,
                              "instances": self.instance_labels, "tolerance": self.tolerance,
                              "spacing": self.spacing_tolerance, "max_voxels": self.max_voxels,
                            "dims": self.spatial_dims}, 16)


def fingerprint(source: CaseSource, settings: IngestSettings) -> str:
    """Content of every input (not paths: they may name the patient) plus the settings."""
    images = [sha256_file(p) for p in source.images]
    if source.kind == "dicom":
        images.sort()  # slice order comes from the headers, not from file names
    payload = {"kind": source.kind, "label_kind": source.label_kind, "settings": settings.key(),
               "images": images, "label": sha256_file(source.label) if source.label else None,
               "instances": sha256_file(source.instances) if source.instances else None}
    return json_digest(payload)


def read_index(output_dir: Path) -> dict[str, dict]:
    try:
        payload = json.loads((output_dir / INDEX_FILE).read_text())
        return payload["cases"] if payload.get("version") == INGEST_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
