"""The throwaway Orthanc: addresses, local-only config, clean stop, a clear error when it cannot start, and the
``python -m tasks.pacs.orthanc`` entry point behind ``make pacs``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tasks.pacs.dimse import parse_dimse
from tasks.pacs.orthanc import OrthancError, OrthancServer, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_addresses_answer(orthanc: OrthancServer) -> None:
    assert orthanc.running
    assert requests.get(f"{orthanc.rest_url}/system", timeout=5).json()["DicomAet"] == "ORTHANC"
    assert requests.get(orthanc.explorer_url, timeout=5).status_code == 200
    assert requests.get(f"{orthanc.dicomweb_url}/studies", timeout=5).status_code == 200
    assert parse_dimse(orthanc.dimse) == ("127.0.0.1", orthanc.dicom_port, "ORTHANC")
    assert orthanc.rest_url.startswith("http://127.0.0.1:") and orthanc.explorer_url.endswith("/app/explorer.html")


def test_config_is_local_only(orthanc: OrthancServer) -> None:
    cfg = orthanc.config()
    assert cfg["RemoteAccessAllowed"] is False and cfg["AuthenticationEnabled"] is False
    assert Path(str(cfg["StorageDirectory"])).is_relative_to(orthanc.directory)
    assert (orthanc.directory / "storage").is_dir()


def test_auth_config(orthanc_auth: OrthancServer) -> None:
    assert requests.get(f"{orthanc_auth.rest_url}/system", timeout=5).status_code == 401
    assert requests.get(f"{orthanc_auth.rest_url}/system", auth=orthanc_auth.user, timeout=5).status_code == 200


def test_stop_ends_process_and_frees_ports(tmp_path: Path) -> None:
    server = OrthancServer(tmp_path / "pacs").start()
    assert _listening(server.http_port) and _listening(server.dicom_port)
    server.stop()
    assert not server.running
    assert not _listening(server.http_port) and not _listening(server.dicom_port)
    assert (tmp_path / "pacs" / "orthanc.log").exists(), "a given folder is kept"
    server.stop()  # idempotent


def test_temporary_folder_is_removed(tmp_path: Path) -> None:
    with OrthancServer() as server:
        folder = server.directory
        assert folder.is_dir()
    assert not folder.exists()


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = OrthancServer(tmp_path / "pacs", http_port=port, startup_timeout_s=15)
        start = time.monotonic()
        with pytest.raises(OrthancError, match=r"(?s)Orthanc exited.*\n.*\S"):
            server.start()
        assert time.monotonic() - start < 15
    assert not server.running


def test_main_runs_in_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    http, dicom = free_port(), free_port()
    cmd = [sys.executable, "-m", "tasks.pacs.orthanc", "--dir", str(tmp_path / "pacs"), "--http-port", str(http),
           "--dicom-port", str(dicom)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        assert f"http://127.0.0.1:{http}/dicom-web" in out and f"127.0.0.1:{dicom}:ORTHANC" in out, out
        assert requests.get(f"http://127.0.0.1:{http}/system", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "Orthanc stopped." in rest
        assert not _listening(http) and not _listening(dicom)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_another_server_on_the_port_is_not_mistaken_for_ours(orthanc: OrthancServer, tmp_path: Path) -> None:
    """Our HTTP port taken by a running Orthanc: that one answers /system, but start() must still fail."""
    clash = OrthancServer(tmp_path / "clash", http_port=orthanc.http_port, startup_timeout_s=15)
    with pytest.raises(OrthancError, match="Orthanc exited"):
        clash.start()
    assert orthanc.running
