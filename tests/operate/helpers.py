"""What the operate tests share: free loopback ports, bounded HTTP polling, stopping process groups,
starting ``unetflow serve`` and waiting for it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail when ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"process exited ({process.returncode}) before {url} answered"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL, to the group of a process started with ``start_new_session=True``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    # what the group's leader started may outlive it
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_ready(state: Path, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for ``outputs/serve/ready`` of a ``unetflow serve`` subprocess; fail with its logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state / "ready").exists():
            return
        if process.poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"serve did not become ready ({process.poll()}):\n{log.read_text()[-4000:]}\n"
                         + "\n".join(p.read_text()[-2000:] for p in state.glob("*.log")))


def serve_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for ``unetflow serve`` in a test: telemetry off, quick pick-up, no nightly run."""
    env = {**env, **TELEMETRY_OFF}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # pick runs up quickly (default 10 s)
    # No scheduler service: a test that happens to span 02:00 UTC must not get a nightly retrain too.
    env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    env.pop("PREFECT_API_URL", None)
    return env


def start_serving(unetflow: Path, project: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``unetflow serve --no-ui`` on ``port`` in a session of its own, its output appended to ``log``."""
    with log.open("a") as out:
        return subprocess.Popen([str(unetflow), "serve", "--root", str(project), "--port", str(port), "--no-ui"],
                                cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
