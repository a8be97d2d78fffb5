"""``unetflow pacs-sync`` as a user runs it: a subprocess in a project folder, against a real Orthanc.

Over DICOMweb and DIMSE the CLI exits 0, prints the JSON summary and leaves a SEG and a volume SR in each CT
study (the MR series is skipped: the model reads CT). Against an Orthanc with a basic-auth user, the sync fails
cleanly without ``UNETFLOW_PACS_USER``/``_PASSWORD`` and works with them, and the password shows up nowhere.
A password in ``params.yaml`` is refused by the schema. ``make pacs``/``pacs-demo`` run on loopback ports.

The model is a real (untrained) CT network: the plan's own ``build_model`` and ``save_checkpoint``, as a
checkpoint of a trained one would be written; what it segments does not matter here, that it is stored does.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
import torch
import yaml

from tasks.common.plan import build_model
from tasks.pacs.orthanc import OrthancServer
from tasks.tracking.model_package import save_checkpoint
from tests.conftest import BIN, REPO, cli_env
from tests.infer.helpers import plan_for
from tests.pacs.conftest import BASIC_USER, PATIENT, Corpus, make_corpus, require_orthanc

#: the CLI's own retry settings, shortened: an auth failure is not retried anyway, the rest never fails here
FAST = ["--set", "pacs.retries=2", "--set", "pacs.backoff_s=0.1"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module: its database is migrated once, not per command."""
    return tmp_path_factory.mktemp("pacs-cli-home")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D CT network (the conftest series are 16×16×4) as a ``.pt`` checkpoint {"model", "plan"}."""
    torch.manual_seed(0)
    plan = plan_for(3, [16, 16, 4]).model_copy(update={"channel_modalities": ("CT",)})
    path = tmp_path_factory.mktemp("pacs-model") / "ct-model.pt"
    save_checkpoint(path, {"model": build_model(plan).state_dict(), "plan": plan.to_json()})
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding the repository's own params.yaml (nothing else)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture
def auth_orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    require_orthanc()
    with OrthancServer(tmp_path / "orthanc-auth", user=BASIC_USER) as server:
        yield server


# ------------------------------------------------------------------------------------------------ helpers
def upload(server: OrthancServer, corpus: Corpus) -> None:
    """Through Orthanc's REST API (not a transport under test)."""
    for ds in corpus.all():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        requests.post(f"{server.rest_url}/instances", data=buffer.getvalue(), auth=server.user,
                      timeout=10).raise_for_status()


def pacs_sync(root: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in cli_env(home).items() if not k.startswith("UNETFLOW_PACS_")}
    return subprocess.run([str(BIN / "unetflow"), "pacs-sync", "--root", str(root), *FAST, *args],
                          cwd=root, env={**base, **(env or {})}, capture_output=True, text=True, encoding="utf-8",
                          timeout=300)


def printed_summary(stdout: str) -> dict:
    """The JSON object the command prints (from a line ``{`` to the line ``}``; log lines may surround it)."""
    lines = stdout.splitlines()
    start = lines.index("{")
    end = len(lines) - 1 - lines[::-1].index("}")
    return json.loads("\n".join(lines[start:end + 1]))


def results_by_study(server: OrthancServer) -> dict[str, list[str]]:
    """StudyInstanceUID → the modalities of the SEG/SR series Orthanc holds in that study."""
    found: dict[str, list[str]] = {}
    series = requests.get(f"{server.rest_url}/series?expand", auth=server.user, timeout=10).json()
    studies = {s["ID"]: s for s in requests.get(f"{server.rest_url}/studies?expand", auth=server.user,
                                                 timeout=10).json()}
    for row in series:
        modality = row["MainDicomTags"].get("Modality")
        if modality in ("SEG", "SR"):
            study_uid = studies[row["ParentStudy"]]["MainDicomTags"]["StudyInstanceUID"]
            found.setdefault(study_uid, []).append(modality)
    return {k: sorted(v) for k, v in found.items()}


def assert_synced(done: subprocess.CompletedProcess, server: OrthancServer, corpus: Corpus) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = printed_summary(done.stdout)
    assert summary["counts"] == {"done": 2, "skipped": 1, "failed": 0}, summary
    skipped = [s for s in summary["series"] if s["status"] == "skipped"]
    assert "modality MR" in skipped[0]["reason"]
    # one SEG and one SR per CT series, in that series' study (study A: its CT; study B: its CT)
    assert results_by_study(server) == {corpus.study_uid("a_ct"): ["SEG", "SR"],
                                        corpus.study_uid("b_ct"): ["SEG", "SR"]}
    return summary


def texts_under(folder: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file's bytes (gzip files opened), for looking for what must not be there."""
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            yield path, data


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_pacs_sync_cli_over_dicomweb(project: Path, home: Path, checkpoint: Path, fresh_orthanc) -> None:
    corpus = make_corpus(seed=1)
    upload(fresh_orthanc, corpus)
    # a date window on the command line replaces params.yaml's (which would find nothing: 1999)
    done = pacs_sync(project, home, "--url", fresh_orthanc.dicomweb_url, "--model", str(checkpoint),
                     "--set", "pacs.study_date=19990101", "--recent-days", "36500")
    summary = assert_synced(done, fresh_orthanc, corpus)
    assert summary["model_uri"] == str(checkpoint)
    work_dir = project / "outputs" / "pacs"
    assert json.loads((work_dir / "summary.json").read_text())["counts"] == summary["counts"]
    assert len(list((work_dir / "results").glob("*.nii.gz"))) == 2
    for _, data in texts_under(work_dir):  # pseudonymous: no patient name/ID kept
        assert PATIENT[0].encode() not in data and PATIENT[1].encode() not in data


#: Registers the checkpoint (argv[2]) as the champion of the project (argv[1]) the way training does: a real MLflow
#: store, written by another process, as a training run would have written it.
REGISTER_CHAMPION = """
import sys
from pathlib import Path

import mlflow

from tasks.config.loading import load_params
from tasks.tracking.model_package import load_model, log_and_register
from tasks.tracking.registry import CHAMPION_ALIAS
from tasks.tracking.store import configure_tracking

root = Path(sys.argv[1])
params = load_params(root / "params.yaml")
configure_tracking(params.tracking, root)
model, plan = load_model(sys.argv[2])
with mlflow.start_run():
    _, version = log_and_register(model, plan, root / "registered", params.tracking.model_name)
mlflow.MlflowClient().set_registered_model_alias(params.tracking.model_name, CHAMPION_ALIAS, version)
"""


@pytest.mark.slow
def test_pacs_sync_with_the_champion_leaves_no_patient_data(project: Path, home: Path, checkpoint: Path,
                                                            fresh_orthanc) -> None:
    """No --model: the champion comes from the project's MLflow registry. Nothing under the project (MLflow's
    database and artifacts, outputs) or Prefect's home (database, logs) holds the patient's name or ID or a
    source UID afterwards."""
    registered = subprocess.run([str(BIN / "python"), "-c", REGISTER_CHAMPION, str(project), str(checkpoint)],
                                cwd=project, env=cli_env(home), capture_output=True, text=True, timeout=300)
    assert registered.returncode == 0, registered.stderr[-3000:]
    corpus = make_corpus(seed=4)
    upload(fresh_orthanc, corpus)
    done = pacs_sync(project, home, "--url", fresh_orthanc.dicomweb_url)
    summary = assert_synced(done, fresh_orthanc, corpus)
    assert summary["model_uri"].endswith("@champion"), summary["model_uri"]
    assert (project / "mlruns.db").is_file() and list(project.rglob("weights.pt")), "no MLflow store was used"
    secrets = {*PATIENT, *(str(getattr(ds, key)) for ds in corpus.all()
                           for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))}
    for folder in (project, home):
        for path, data in texts_under(folder):
            leaked = [secret for secret in secrets if secret.encode() in data]
            assert not leaked, f"{path} holds {leaked[:3]}"
    assert not [s for s in secrets if s in done.stdout + done.stderr]


@pytest.mark.slow
def test_pacs_sync_cli_over_dimse(project: Path, home: Path, checkpoint: Path, fresh_orthanc) -> None:
    corpus = make_corpus(seed=2)
    upload(fresh_orthanc, corpus)
    done = pacs_sync(project, home, "--dimse", fresh_orthanc.dimse, "--model", str(checkpoint),
                     "--set", "pacs.recent_days=2", "--study-date", "20240101-20241231")  # the window: 2024
    assert_synced(done, fresh_orthanc, corpus)


@pytest.mark.slow
def test_pacs_sync_cli_credentials_from_the_environment_only(project: Path, home: Path, checkpoint: Path,
                                                             auth_orthanc: OrthancServer) -> None:
    user, password = BASIC_USER
    corpus = make_corpus(seed=3)
    upload(auth_orthanc, corpus)
    args = ("--url", auth_orthanc.dicomweb_url, "--model", str(checkpoint))

    refused = pacs_sync(project, home, *args)
    output = refused.stdout + refused.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert refused.returncode == 1, output[-3000:]
    assert len(errors) == 1 and "HTTP 401" in errors[0] and "UNETFLOW_PACS_USER" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert results_by_study(auth_orthanc) == {}

    done = pacs_sync(project, home, *args, env={"UNETFLOW_PACS_USER": user, "UNETFLOW_PACS_PASSWORD": password})
    assert_synced(done, auth_orthanc, corpus)
    for run in (refused, done):
        assert password not in run.stdout and password not in run.stderr
    for folder in (project, home):  # the work_dir, anything else the project got, Prefect's database and logs
        leaked = [str(path) for path, data in texts_under(folder) if password.encode() in data]
        assert not leaked, leaked


def test_a_password_in_params_yaml_is_refused_by_the_schema(project: Path, home: Path, checkpoint: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pacs"]["password"] = "x-not-echoed-4711"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    done = pacs_sync(project, home, "--url", "http://127.0.0.1:9/dicom-web", "--model", str(checkpoint))
    assert done.returncode == 2
    assert "pacs.password" in done.stderr
    assert "x-not-echoed-4711" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # refused before any work


@pytest.mark.parametrize("both", [("--url", "http://127.0.0.1:9/dicom-web", "--dimse", "127.0.0.1:9:PACS"),
                                  ("--study-date", "20240101", "--recent-days", "2")])
def test_two_exclusive_flags_are_refused_not_one_silently_dropped(project: Path, home: Path, both) -> None:
    done = pacs_sync(project, home, *both)
    assert done.returncode == 2 and "not both" in done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_make_pacs_targets_run_on_loopback_ports() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "-o", ".venv/.unetflow-installed",
                          "pacs", "pacs-demo", "pacs-stop", "PACS_HTTP_PORT=8999", "PACS_DICOM_PORT=4999"],
                         capture_output=True, text=True, encoding="utf-8", timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")})
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert ".venv/bin/python -m tasks.pacs.orthanc --dir outputs/pacs-server --http-port 8999 --dicom-port 4999" \
        in lines
    assert f".venv/bin/unetflow pacs-demo --root {REPO} --http-port 8999 --dicom-port 4999" in lines
    assert f".venv/bin/unetflow pacs-demo --stop --root {REPO}" in lines
    # what `python -m tasks.pacs.orthanc` runs: Orthanc refuses other hosts, on exactly these ports
    config = OrthancServer(REPO / "outputs" / "pacs-server", http_port=8999, dicom_port=4999).config()
    assert (config["RemoteAccessAllowed"], config["HttpPort"], config["DicomPort"]) == (False, 8999, 4999)


def test_pacs_demo_series_are_proper_ct_and_the_same_every_run() -> None:
    from tasks.pacs.demo import SERIES, demo_series

    series, truth = demo_series()
    again, _ = demo_series()
    assert len(series) == len(SERIES) == 3 and len(truth) == 3 and all(v > 0 for v in truth)
    assert len({str(s[0].StudyInstanceUID) for s in series}) == 2
    assert [[ds.SOPInstanceUID for ds in s] for s in series] == [[ds.SOPInstanceUID for ds in s] for s in again]
    for datasets in series:
        first = datasets[0]
        assert first.Modality == "CT" and first.SOPClassUID == pydicom.uid.CTImageStorage
        assert str(first.PatientName).startswith("Demo^Patient")
        hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
        assert hu.min() < -800 and hu.max() > 100  # air around a body with a bright organ
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        pydicom.dcmread(_round_trip(first))  # a valid Part 10 file


def _round_trip(ds: pydicom.Dataset) -> io.BytesIO:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


@pytest.mark.slow
def test_pacs_demo_leaves_its_orthanc_running_until_stopped(tmp_path: Path) -> None:
    """``ensure_orthanc`` starts one in the background when none answers (and it outlives the call), reuses one
    that answers, and ``stop_orthanc`` stops exactly the one it started."""
    if not Path("/usr/sbin/Orthanc").exists():
        pytest.fail("Orthanc is not installed: `make test` installs it (apt-get install orthanc orthanc-dicomweb)")
    from tasks.pacs.demo import SERVER_DIR, alive, ensure_orthanc, stop_orthanc
    from tasks.pacs.orthanc import free_port

    http_port, dicom_port = free_port(), free_port()
    started = ensure_orthanc(tmp_path, http_port, dicom_port)
    try:
        assert started.started_pid and started.rest_url == f"http://127.0.0.1:{http_port}"
        assert (tmp_path / SERVER_DIR / "storage").is_dir()
        assert requests.get(f"{started.rest_url}/system", timeout=5).json()["DicomPort"] == dicom_port
        again = ensure_orthanc(tmp_path, http_port, dicom_port)
        assert again.started_pid is None  # answered: used as it is, nothing started
    finally:
        message = stop_orthanc(tmp_path)
    assert f"pid {started.started_pid}" in message
    assert not alive(started.started_pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{started.rest_url}/system", timeout=5)
    assert stop_orthanc(tmp_path) == "no Orthanc started by pacs-demo is running"


@pytest.mark.slow
def test_credentials_from_a_prefect_secret_block(tmp_path: Path, checkpoint: Path, auth_orthanc: OrthancServer,
                                                 prefect_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pacs.credentials_block`` names a Prefect Secret holding {"user", "password"}: the flow reads it, the
    environment holds nothing, and the password reaches neither the flow's result nor the work_dir."""
    from prefect.blocks.system import Secret

    from flows.infer import pacs_sync_flow

    for name in ("UNETFLOW_PACS_TOKEN", "UNETFLOW_PACS_USER", "UNETFLOW_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    user, password = BASIC_USER
    Secret(value={"user": user, "password": password}).save("pacs-test-credentials", overwrite=True)
    corpus = make_corpus(seed=4)
    upload(auth_orthanc, corpus)
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    result = pacs_sync_flow(root=str(root), model=str(checkpoint), overrides=[
        f"pacs.url={auth_orthanc.dicomweb_url}", "pacs.credentials_block=pacs-test-credentials", "pacs.retries=2",
        "pacs.backoff_s=0.1"])
    assert result["counts"]["done"] >= 2 and result["counts"]["failed"] == 0, result
    assert password not in json.dumps(result)
    assert not [path for path, data in texts_under(root) if password.encode() in data]
