"""A real Orthanc per test session (plain, and one with basic auth) and small synthetic CT studies to fill it.

The studies are uploaded once per transport by the tests themselves (uploading *is* under test); the
expected series are described by :data:`SERIES` so filters can be checked against exactly what was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tasks.pacs.orthanc import ORTHANC_BIN, OrthancServer

PATIENT = ("Doe^Jane", "PID-SECRET-4711")
BASIC_USER = ("unetflow", "hunter2-not-in-logs")


@dataclass(frozen=True)
class SeriesSpec:
    key: str
    study_date: str
    modality: str
    description: str
    study_key: str


#: 2 studies, 3 series: study A (2024-03-05) has a CT and an MR series, study B (2024-06-20) one CT series.
SERIES = (
    SeriesSpec("a_ct", "20240305", "CT", "Thorax 1.0 B31f", "A"),
    SeriesSpec("a_mr", "20240305", "MR", "T1 axial", "A"),
    SeriesSpec("b_ct", "20240620", "CT", "Abdomen 5.0 portal venous", "B"),
)
SLICES = 4


def make_series(spec: SeriesSpec, study_uid: str, series_uid: str, prefix: str, seed: int) -> list[pydicom.Dataset]:
    """``SLICES`` slices of 16×16 int16 with full geometry; SOP class CT Image Storage for every modality
    (MR in a CT object is odd but valid for the archive, and keeps one writer)."""
    rng = np.random.default_rng(seed)
    frame = f"{prefix}.9"
    out = []
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = PATIENT
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = spec.study_date, "101500", "1", ""
        ds.Modality, ds.SeriesDescription = spec.modality, spec.description
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [-8.0, -8.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-1024, 2000, (16, 16), dtype=np.int16).tobytes()
        out.append(ds)
    return out


@dataclass
class Corpus:
    """The synthetic studies for one upload: datasets per series key, and UIDs."""

    datasets: dict[str, list[pydicom.Dataset]]

    def series_uid(self, key: str) -> str:
        return str(self.datasets[key][0].SeriesInstanceUID)

    def study_uid(self, key: str) -> str:
        return str(self.datasets[key][0].StudyInstanceUID)

    def uids(self, *keys: str) -> set[str]:
        return {self.series_uid(k) for k in keys}

    def all(self) -> list[pydicom.Dataset]:
        return [ds for group in self.datasets.values() for ds in group]


def make_corpus(seed: int = 0) -> Corpus:
    """Fresh UIDs every call, so each transport uploads its own copy into the shared Orthanc."""
    root = generate_uid(prefix=None)[:40]
    studies = {"A": f"{root}.1", "B": f"{root}.2"}
    datasets = {}
    for i, spec in enumerate(SERIES):
        study = studies[spec.study_key]
        datasets[spec.key] = make_series(spec, study, f"{study}.{i + 1}", f"{root}.{i + 1}", seed + i)
    return Corpus(datasets)


def require_orthanc() -> None:
    """Fail, never skip: `make test` installs Orthanc, so a missing one is a broken setup, not an optional test."""
    if not ORTHANC_BIN.exists():
        pytest.fail(f"{ORTHANC_BIN} is missing: `make test` installs it (apt-get install orthanc orthanc-dicomweb)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    require_orthanc()
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    require_orthanc()
    with OrthancServer(tmp_path_factory.mktemp("orthanc-auth"), user=BASIC_USER) as server:
        yield server


@pytest.fixture
def fresh_orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """An empty Orthanc for one test (instance counts before/after are exact; a test may stop and restart it)."""
    require_orthanc()
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server
