"""``unetflow pacs-demo`` (``make pacs-demo``): try ``pacs-sync`` in two minutes, without a hospital.

The parts, as plain functions (the CLI command in ``flows/cli.py`` runs them, then the ``pacs-sync`` flow):

* :func:`ensure_orthanc`: an Orthanc answering on ``127.0.0.1:<http_port>`` is used as it is (``make pacs`` in
  another shell); otherwise one is started in the background (``python -m tasks.pacs.orthanc``, storage in
  ``outputs/pacs-server``) and *left running*, so its Explorer can be browsed afterwards. Its PID is kept in
  ``outputs/pacs-server/demo-server.pid``; :func:`stop_orthanc` (``unetflow pacs-demo --stop``,
  ``make pacs-stop``) stops it, and only it.
* :func:`demo_series` / :func:`upload`: two studies, three synthetic CT series (a bright ellipsoid "organ" in a
  soft-tissue body in air, HU values, full CT headers, patients ``Demo^Patient1``/``2``), with UIDs derived from
  fixed strings, so a second upload stores nothing new; sent with STOW-RS.
* :func:`train_demo_model`: a tiny 3D CT U-Net trained once on matching synthetic NIfTI volumes through the
  normal pipeline functions (ingest → preprocess → ``train_model``) in ``outputs/pacs-demo``; the checkpoint
  ``outputs/pacs-demo/model.pt`` is reused by later runs. Its dataset's channel is ``CT``, so the plan's
  ``channel_modalities`` is ``("CT",)`` and the sync segments exactly the CT series.

Nothing here imports ``flows`` (tasks never do): the flow is called by the CLI command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import requests
import yaml
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tasks.common.atomic import atomic_path, write_text
from tasks.pacs.orthanc import ORTHANC_BIN, dicomweb_url, explorer_url

PROJECT_DIR = Path("outputs/pacs-demo")
SERVER_DIR = Path("outputs/pacs-server")
PID_FILE = "demo-server.pid"
SHAPE = (40, 40, 24)  # x, y, z voxels: both the training volumes and the DICOM series
SPACING = (2.0, 2.0, 3.0)  # mm
AIR, TISSUE, ORGAN, NOISE = -1000.0, 40.0, 180.0, 25.0  # HU
DATASET_NAME = "unetflow-pacs-demo-ct"
DEMO_SALT = "unetflow-pacs-demo"  # data.dicom_id_salt of the demo project: names the results' pseudonyms
#: (patient, study key, study date, series description): 2 studies, 3 CT series
SERIES = (("Demo^Patient1", "S1", "20240305", "Abdomen 3.0 portal venous"),
          ("Demo^Patient1", "S1", "20240305", "Abdomen 3.0 late phase"),
          ("Demo^Patient2", "S2", "20240620", "Abdomen 3.0 portal venous"))


class DemoError(RuntimeError):
    """The demo cannot go on (Orthanc missing or not answering, a port taken by something else)."""


# --------------------------------------------------------------------------------------------- images
def phantom(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume float32 x×y×z, organ mask uint8): an elliptic body of soft tissue in air with one brighter
    ellipsoid "organ" of random size and place inside it, plus Gaussian noise."""
    grid = np.indices(shape, dtype=np.float32)
    centre = [(n - 1) / 2 for n in shape]
    body = ((grid[0] - centre[0]) / (0.45 * shape[0])) ** 2 + ((grid[1] - centre[1]) / (0.38 * shape[1])) ** 2 <= 1
    radii = rng.uniform(0.12, 0.22, 3) * np.array(shape)
    middle = [c + rng.uniform(-0.15, 0.15) * n for c, n in zip(centre, shape, strict=True)]
    organ = sum(((g - m) / r) ** 2 for g, m, r in zip(grid, middle, radii, strict=True)) <= 1
    organ &= body
    image = np.where(body, TISSUE, AIR).astype(np.float32)
    image[organ] = ORGAN + rng.uniform(-20, 20)
    image += rng.normal(0.0, NOISE, shape).astype(np.float32)
    return image, organ.astype(np.uint8)


def _affine() -> np.ndarray:
    return np.diag([*SPACING, 1.0])


def write_ct_inbox(raw_dir: Path, n_train: int = 16, seed: int = 0) -> None:
    """An nnU-Net v2 inbox of ``n_train`` labelled CT volumes (channel ``CT``, classes background/organ)."""
    rng = np.random.default_rng(seed)
    for index in range(n_train):
        image, mask = phantom(rng)
        case = f"ct_{index:03d}"
        for array, path in ((np.round(image).astype(np.int16), raw_dir / "imagesTr" / f"{case}_0000.nii.gz"),
                            (mask, raw_dir / "labelsTr" / f"{case}.nii.gz")):
            with atomic_path(path) as tmp:
                nib.save(nib.Nifti1Image(array, _affine()), tmp)
    description = {"name": DATASET_NAME, "description": "synthetic CT organs (unetflow pacs-demo)",
                   "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
                   "numTraining": n_train, "file_ending": ".nii.gz"}
    write_text(raw_dir / "dataset.json", json.dumps(description, indent=2, sort_keys=True) + "\n")


def _uid(*parts: object) -> str:
    """A UID derived from fixed strings: the same series every run (a second upload adds nothing)."""
    return generate_uid(entropy_srcs=["unetflow-pacs-demo", *map(str, parts)])


def demo_series(seed: int = 100) -> tuple[list[list[pydicom.Dataset]], list[float]]:
    """(:data:`SERIES` as CT Image Storage datasets, one list per series and one dataset per axial slice;
    the true organ volume of each series in ml)."""
    rng = np.random.default_rng(seed)
    out, volumes = [], []
    for number, (patient, study, date, description) in enumerate(SERIES, start=1):
        image, organ = phantom(rng)
        out.append(ct_series(image, number, patient, study, date, description))
        volumes.append(round(float(organ.sum()) * float(np.prod(SPACING)) / 1000.0, 2))
    return out, volumes


def ct_series(hu_xyz: np.ndarray, number: int, patient: str, study: str, date: str,
              description: str) -> list[pydicom.Dataset]:
    """One axial CT series of an x×y×z HU volume (:data:`SPACING`); UIDs derived from ``study`` and ``number``."""
    return [_ct_slice(hu_xyz[:, :, k], k, number, patient, study, date, description) for k in range(hu_xyz.shape[2])]


def _ct_slice(hu_xy: np.ndarray, k: int, number: int, patient: str, study: str, date: str,
              description: str) -> pydicom.Dataset:
    series_uid = _uid(study, number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, _uid(study, number, k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient, f"DEMO-{patient[-1]}"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = _uid(study), series_uid, _uid(study, "frame")
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = date, "101500", study, f"ACC{study}"
    ds.StudyDescription, ds.SeriesDescription = "CT Abdomen (synthetic)", description
    ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, "101500", date, "101500"
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "unetflow pacs-demo", "ABDOMEN"
    ds.ImageType, ds.KVP, ds.ConvolutionKernel = ["ORIGINAL", "PRIMARY", "AXIAL"], 120, "B31f"
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = number, k + 1, 1
    origin = [-SPACING[0] * hu_xy.shape[0] / 2, -SPACING[1] * hu_xy.shape[1] / 2]
    ds.ImagePositionPatient = [origin[0], origin[1], SPACING[2] * k]
    ds.SliceLocation = SPACING[2] * k
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [SPACING[1], SPACING[0]], SPACING[2]
    ds.Rows, ds.Columns = hu_xy.shape[1], hu_xy.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (np.round(hu_xy.T) + 1024).astype(np.int16).tobytes()  # rows = y, columns = x
    return ds


def upload(dicomweb_url: str, series: list[list[pydicom.Dataset]]) -> int:
    """STOW-RS every series (one request each); instances Orthanc already holds are simply stored again."""
    from tasks.pacs.dicomweb import DicomwebTransport

    transport = DicomwebTransport(dicomweb_url)
    for datasets in series:
        transport.store(datasets)
    return sum(len(datasets) for datasets in series)


# ---------------------------------------------------------------------------------------------- model
def demo_params(project: Path, dicomweb_url: str) -> Path:
    """Write the demo project's ``params.yaml``: a tiny CT network, few epochs, the local Orthanc."""
    params: dict[str, Any] = {
        "data": {"dicom_id_salt": DEMO_SALT, "workers": 1, "val_fraction": 0.15, "test_fraction": 0.0},
        "preprocess": {"workers": 1, "weight_maps": False},
        "model": {"features": [8, 16, 32]},
        "train": {"epochs": 6, "batch_size": 2, "device": "cpu", "num_threads": 2, "overlay_every": 0,
                  "val_every": 3, "loss": "ce_dice", "optimizer": "adamw", "learning_rate": 0.01,
                  "scheduler": "constant", "augment": {"enabled": False}},
        "infer": {"device": "cpu", "workers": 1},
        "tracking": {"system_metrics": False, "model_name": "pacs-demo-ct", "min_test_score": 0.0},
        "pacs": {"url": dicomweb_url, "work_dir": "outputs/pacs", "modality": "CT", "retries": 2,
                 "backoff_s": 0.5, "timeout_s": 30.0},
    }
    path = project / "params.yaml"
    header = "# written by `unetflow pacs-demo` (tasks/pacs/demo.py)\n"
    write_text(path, header + yaml.safe_dump(params, sort_keys=False))
    return path


def train_demo_model(project: Path, params_file: Path) -> tuple[Path, bool]:
    """(checkpoint, trained now): ``project/model.pt``, trained through ingest → preprocess → train_model when
    it does not exist yet (well under a minute on two CPU cores), else reused as it is."""
    model = project / "model.pt"
    if model.exists():
        return model, False
    from tasks.config import load_params
    from tasks.ingest.batch import ingest_dataset
    from tasks.preprocess.in_process import preprocess_dataset
    from tasks.tracking.model_package import load_model, save_checkpoint
    from tasks.training.trainer import train_model

    params = load_params(params_file, [])
    write_ct_inbox(project / params.data.raw_dir)
    ingest_dataset(project / params.data.raw_dir, project / params.data.dataset_dir, params.data)
    preprocess_dataset(project, params)
    result = train_model(params, project, register=False, run_name="pacs-demo-ct")
    if result is None:  # only other ranks of a distributed run get None
        raise DemoError("training returned no model")
    network, plan = load_model(str(result.checkpoint), map_location="cpu")
    save_checkpoint(model, {"model": network.state_dict(), "plan": plan.to_json()})
    return model, True


# --------------------------------------------------------------------------------------------- Orthanc
@dataclass(frozen=True)
class Server:
    """The Orthanc the demo talks to: its REST root, and whether this run started it (with that PID)."""

    rest_url: str
    dicom_port: int
    started_pid: int | None

    @property
    def dicomweb_url(self) -> str:
        return dicomweb_url(self.rest_url)

    @property
    def explorer_url(self) -> str:
        return explorer_url(self.rest_url)


def _probe(rest_url: str) -> str:
    """``orthanc`` (an open Orthanc with DICOMweb), ``auth`` (one that wants a login), ``other``, or ``none``."""
    try:
        answer = requests.get(f"{rest_url}/system", timeout=2)
    except requests.RequestException:
        return "none"
    if answer.status_code == 401:
        return "auth"
    try:
        system = answer.json()
    except ValueError:
        return "other"
    return "orthanc" if answer.ok and isinstance(system, dict) and "DicomAet" in system else "other"


def ensure_orthanc(root: Path, http_port: int, dicom_port: int, timeout_s: float = 60.0) -> Server:
    """The Orthanc on ``127.0.0.1:http_port``; started in the background (and left running) when none answers."""
    rest_url = f"http://127.0.0.1:{http_port}"
    found = _probe(rest_url)
    if found == "orthanc":
        return Server(rest_url, dicom_port, None)
    if found != "none":
        what = "an Orthanc that asks for a login" if found == "auth" else "something that is not Orthanc"
        raise DemoError(f"port {http_port} answers, but with {what}: stop it, or pick another port "
                        f"(unetflow pacs-demo --http-port N --dicom-port M)")
    if not ORTHANC_BIN.exists():
        raise DemoError(f"{ORTHANC_BIN} not found: install Debian's orthanc and orthanc-dicomweb "
                        "(apt-get install orthanc orthanc-dicomweb)")
    server_dir = (root / SERVER_DIR).resolve()
    server_dir.mkdir(parents=True, exist_ok=True)
    with open(server_dir / "demo-server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tasks.pacs.orthanc", "--dir", str(server_dir),
                                 "--http-port", str(http_port), "--dicom-port", str(dicom_port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # not stopped by this process's Ctrl-C or exit
    deadline = time.monotonic() + timeout_s
    while _probe(rest_url) != "orthanc":
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            tail = (server_dir / "demo-server.log").read_text(errors="replace").splitlines()[-8:]
            raise DemoError("Orthanc did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.2)
    (server_dir / PID_FILE).write_text(f"{proc.pid}\n")
    return Server(rest_url, dicom_port, proc.pid)


def _demo_server_pid(server_dir: Path) -> int | None:
    """The PID in the pid file when that process is still our ``tasks.pacs.orthanc`` (not a reused PID)."""
    try:
        pid = int((server_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"tasks.pacs.orthanc" in cmdline else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: reaped here when it is this process's child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent reaps it
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_orthanc(root: Path, timeout_s: float = 20.0) -> str:
    """Stop the Orthanc a ``pacs-demo`` left running (SIGTERM: it shuts Orthanc down cleanly); say what happened."""
    server_dir = (root / SERVER_DIR).resolve()
    pid = _demo_server_pid(server_dir)
    (server_dir / PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return "no Orthanc started by pacs-demo is running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    return f"stopped the pacs-demo Orthanc (pid {pid}); its storage stays in {server_dir} (delete it at will)"


def study_links(server: Server, series: list[list[pydicom.Dataset]]) -> list[str]:
    """Orthanc Explorer links to the demo's studies (where the SEG and the report appear beside the images)."""
    links = []
    for study_uid in dict.fromkeys(str(s[0].StudyInstanceUID) for s in series):
        found = requests.post(f"{server.rest_url}/tools/lookup", data=study_uid, timeout=10).json()
        links += [f"{server.explorer_url}#study?uuid={item['ID']}" for item in found if item.get("Type") == "Study"]
    return links


# ----------------------------------------------------------------------------------------- the whole demo
@dataclass(frozen=True)
class Prepared:
    """What the sync needs: the demo project, its params.yaml and model, the server, the uploaded series."""

    project: Path
    params_file: Path
    model: Path
    server: Server
    series: list[list[pydicom.Dataset]]
    true_ml: list[float]


def prepare(root: Path, http_port: int, dicom_port: int, echo: Any = print) -> Prepared:
    """Orthanc up, the studies uploaded, the model trained (or reused); says each step as it goes."""
    clock = time.perf_counter()
    server = ensure_orthanc(root, http_port, dicom_port)
    how = (f"started in the background (pid {server.started_pid})" if server.started_pid
           else "already running: using it")
    echo(f"[pacs-demo] Orthanc on {server.rest_url}: {how}")
    series, true_ml = demo_series()
    count = upload(server.dicomweb_url, series)
    echo(f"[pacs-demo] uploaded {len(series)} CT series ({count} instances, 2 studies, patients Demo^Patient1/2) "
         f"with STOW-RS to {server.dicomweb_url} ({time.perf_counter() - clock:.1f} s)")
    project = (root / PROJECT_DIR).resolve()
    project.mkdir(parents=True, exist_ok=True)
    params_file = demo_params(project, server.dicomweb_url)
    started = time.perf_counter()
    if not (project / "model.pt").exists():
        echo(f"[pacs-demo] training a tiny 3D CT U-Net once in {project} (ingest → preprocess → train) ...")
    model, trained = train_demo_model(project, params_file)
    echo(f"[pacs-demo] model {model}: " + (f"trained in {time.perf_counter() - started:.0f} s" if trained
                                             else "reused (delete it to train again)"))
    echo("[pacs-demo] running pacs-sync (the same flow as `unetflow pacs-sync`) ...")
    return Prepared(project, params_file, model, server, series, true_ml)


def closing_words(prepared: Prepared, result: dict[str, Any], seconds: float) -> str:
    """What to look at now, and how to stop the server, after the sync returned ``result``."""
    counts = result.get("counts", {})
    server = prepared.server
    lines = [f"[pacs-demo] done in {seconds:.0f} s: {counts.get('done', 0)} series segmented and stored, "
             f"{counts.get('skipped', 0)} skipped, {counts.get('failed', 0)} failed "
             f"(summary: {result.get('summary')})",
             f"Open {server.explorer_url} : each study now holds a SEG and an SR (volume report) series "
             "beside its CT images:"]
    lines += [f"  {link}" for link in study_links(server, prepared.series)]
    lines += _volume_lines(prepared, result)
    lines.append("Run it again: nothing is stored twice (every series is skipped as already segmented).")
    pid = server.started_pid or _demo_server_pid(prepared.project.parent.parent / SERVER_DIR)
    if pid:  # started now, or by an earlier pacs-demo (not one of `make pacs`: Ctrl-C stops that one)
        lines.append(f"Orthanc keeps running in the background (pid {pid}): stop it with "
                     "`make pacs-stop` (unetflow pacs-demo --stop).")
    return "\n".join(lines)


def _volume_lines(prepared: Prepared, result: dict[str, Any]) -> list[str]:
    """Per series: the organ volume the model measured (what the SR reports) beside the phantom's true one."""
    from tasks.pacs.results import result_pseudonym

    measured = {row["series"]: row.get("volumes_ml", {}) for row in result.get("series", [])}
    lines = ["Organ volumes (model → SR report, vs the phantom's truth):"]
    for (_, _, _, description), datasets, truth in zip(SERIES, prepared.series, prepared.true_ml, strict=True):
        name = result_pseudonym(DEMO_SALT, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))
        kept = prepared.project / "outputs" / "pacs" / "results" / f"{name}.json"  # from an earlier run
        if not measured.get(name) and kept.exists():
            measured[name] = json.loads(kept.read_text()).get("volumes_ml", {})
        got = measured.get(name, {}).get("organ")
        shown = f"{got:.1f} ml" if got is not None else "(no result kept: see the SR)"
        lines.append(f"  {name} ({description}): {shown}, true {truth:.1f} ml")
    return lines
