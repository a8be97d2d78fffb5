"""A throwaway local Orthanc: the PACS the tests talk to, and the one ``make pacs`` starts for trying a sync.

Real PACS behaviour (QIDO quirks, C-GET role negotiation, STOW failure reports) cannot be mocked faithfully,
so tests run against the real thing. Everything is kept local: both ports are picked free on loopback,
``RemoteAccessAllowed`` is off (Orthanc 1.10 has no HTTP bind-address option, so this is what keeps other
hosts out of the REST API), and the storage lives in a folder the caller owns.

Unknown calling AEs may C-FIND, C-GET and C-STORE (``DicomAlwaysAllow*``): fine for a loopback test server,
never for a real one. An optional basic-auth user turns on ``AuthenticationEnabled`` for the auth tests.
"""

from __future__ import annotations

import argparse
import atexit
import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType

import requests

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"


def dicomweb_url(rest_url: str) -> str:
    """The DICOMweb root of the Orthanc at ``rest_url`` (the plugin's ``Root`` in :meth:`OrthancServer.config`)."""
    return f"{rest_url}/dicom-web"


def explorer_url(rest_url: str) -> str:
    return f"{rest_url}/app/explorer.html"


class OrthancError(RuntimeError):
    """Orthanc is missing, or did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it; a tiny race with other processes remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """One Orthanc process with its own config, storage and log; use as a context manager or start()/stop()."""

    def __init__(self, directory: str | Path | None = None, http_port: int | None = None,
                 dicom_port: int | None = None, user: tuple[str, str] | None = None,
                 startup_timeout_s: float = 30.0) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="unetflow-orthanc-")
            directory = self._tmp.name
        self.directory = Path(directory).resolve()
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.user = user
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.name = f"unetflow-pacs-{secrets.token_hex(4)}"  # tells our Orthanc from another on a reused port

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return dicomweb_url(self.rest_url)

    @property
    def dimse(self) -> str:
        return f"127.0.0.1:{self.dicom_port}:{AET}"

    @property
    def explorer_url(self) -> str:
        return explorer_url(self.rest_url)

    @property
    def log_path(self) -> Path:
        return self.directory / "orthanc.log"

    # -- lifecycle -------------------------------------------------------------------------------------
    def config(self) -> dict[str, object]:
        """The JSON configuration this server runs with."""
        storage = self.directory / "storage"
        cfg: dict[str, object] = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None,
            "RegisteredUsers": dict([self.user]) if self.user else {},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomCheckCalledAet": True,
            "UnknownSopClassAccepted": False,
            "SaveJobs": False,
            "StableAge": 1,
            "WebDavEnabled": False,
            "HttpThreadsCount": 8,
            "DicomAssociationCloseDelay": 0,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        return cfg

    def start(self) -> OrthancServer:
        """Write the config, launch Orthanc and wait until its REST API answers; raise OrthancError if not."""
        if self._proc is not None:
            return self
        if not ORTHANC_BIN.exists():
            raise OrthancError(f"{ORTHANC_BIN} not found: install Debian's 'orthanc' and 'orthanc-dicomweb'")
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([str(ORTHANC_BIN), str(config_path)], stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True)
        atexit.register(self.stop)  # a test run or script that forgets stop() must not leave Orthanc behind
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        auth = self.user if self.user else None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with code {self._proc.returncode}:\n{self.log_tail()}")
            try:
                answer = requests.get(f"{self.rest_url}/system", auth=auth, timeout=1)
                if answer.status_code == 200 and answer.json().get("Name") == self.name:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise OrthancError(f"Orthanc did not answer on {self.rest_url} within {self.startup_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; wait for the process; drop a temporary storage folder."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run Orthanc in the foreground (``make pacs``), print where to reach it, stop on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tasks.pacs.orthanc", description=main.__doc__)
    parser.add_argument("--dir", default="outputs/pacs", help="config, log and storage folder (kept)")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    args = parser.parse_args(argv)
    if shutil.which(str(ORTHANC_BIN)) is None:
        print(f"{ORTHANC_BIN} not found: apt-get install orthanc orthanc-dicomweb")
        return 1
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = OrthancServer(args.dir, http_port=args.http_port, dicom_port=args.dicom_port)
    try:
        server.start()
    except OrthancError as exc:
        print(f"Orthanc did not start (ports {args.http_port}/{args.dicom_port} in use?): {exc}")
        return 1
    try:
        print(f"Orthanc running: storage {server.directory / 'storage'}, log {server.log_path}")
        print(f"  DICOMweb : {server.dicomweb_url}")
        print(f"  DIMSE    : {server.dimse}   (host:port:AET)")
        print(f"  REST     : {server.rest_url}")
        print(f"  Explorer : {server.explorer_url}")
        print("Ctrl-C to stop.", flush=True)
        while not stopping and server.running:
            time.sleep(0.2)
        if not server.running:
            print(f"Orthanc exited unexpectedly:\n{server.log_tail()}")
            return 1
    finally:
        server.stop()
    print("Orthanc stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
