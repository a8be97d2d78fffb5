"""The Prefect commands behind ``unetflow serve``: the server, the work pool, the deployments, the worker.

Everything goes through Prefect's own CLI (``python -m prefect`` of this environment) in child
processes rather than its Python API: the server and the worker are long-running processes that must
be stopped on their own, and ``prefect deploy --all`` is exactly what an operator would run by hand
against a server elsewhere (see ``prefect.yaml``). Every child gets the same environment: this
environment's ``bin`` first on ``PATH``, ``PREFECT_API_URL`` of the local server, ``UNETFLOW_ROOT`` (where
the deployments' pull step starts each flow run), telemetry off, and the mark of its role
(``processes.MARK_VAR``) by which ``serve-stop`` finds it and whatever it started. The worker's
environment also sets Prefect's flow-run heartbeat to its minimum, 30 s (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
copied into each flow run), so that the zombie-run automation of ``recovery`` notices a dead run soon.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.serving.processes import MARK_VAR, mark
from tasks.serving.recovery import HEARTBEAT_SECONDS

TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}


class ServeError(RuntimeError):
    """The server, the deployments or the worker could not be brought up."""


def child_env(root: Path, api_url: str, role: str) -> dict[str, str]:
    """The environment of the ``role`` child (server, worker): ours, telemetry off, this venv first,
    the local API, the project, the mark; flow-run heartbeats every 30 s for the worker."""
    env = dict(os.environ)
    env.update(TELEMETRY_OFF)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_API_URL"] = api_url
    env["UNETFLOW_ROOT"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONUTF8", "1")
    env[MARK_VAR] = mark(root, role)
    if role == "worker":
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_SECONDS)
    return env


def prefect_cli() -> list[str]:
    """`python -m prefect` runs the same CLI as the `prefect` script of this environment."""
    return [sys.executable, "-m", "prefect"]


def start_server(root: Path, host: str, port: int, ui: bool, env: dict[str, str],
                 log_file: Path) -> subprocess.Popen:
    """``prefect server start`` in a session of its own, its output in ``log_file``."""
    args = ["server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    args.append("--ui" if ui else "--no-ui")
    with log_file.open("w", encoding="utf-8") as out:
        return subprocess.Popen(prefect_cli() + args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, stopping: list[int]) -> None:
    """Poll ``url`` until it answers 200; return early once ``stopping`` holds a signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping:
        if process.poll() is not None:
            raise ServeError(f"the Prefect server exited ({process.returncode}) before it answered {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    if stopping:
        return
    raise ServeError(f"the Prefect server did not answer {url} within {timeout:.0f} s")


def run_cli(args: list[str], root: Path, env: dict[str, str], log_file: Path, timeout: float = 600) -> str:
    """One ``prefect ARGS`` to completion; its output is appended to ``log_file`` and returned."""
    done = subprocess.run(prefect_cli() + args, cwd=root, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)
    output = done.stdout + done.stderr
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write(f"$ prefect {' '.join(args)}\n{output}\n")
    if done.returncode != 0:
        raise ServeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}")
    return output


def ensure_pool(pool: str, root: Path, env: dict[str, str], log_file: Path) -> str:
    """Create the process work pool ``pool`` unless it exists; says which of the two happened."""
    try:
        run_cli(["work-pool", "inspect", pool], root, env, log_file, timeout=120)
        return f"work pool {pool!r} exists"
    except ServeError:
        run_cli(["work-pool", "create", pool, "--type", "process"], root, env, log_file, timeout=120)
        return f"work pool {pool!r} created (type process)"


def deploy_all(root: Path, env: dict[str, str], log_file: Path) -> None:
    """Register every deployment of ``root/prefect.yaml`` (schedules included, as the file says)."""
    run_cli(["--no-prompt", "deploy", "--all"], root, env, log_file)


def start_worker(root: Path, pool: str, env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """A process worker on ``pool`` in a session of its own, its output appended to ``log_file``."""
    args = ["worker", "start", "--pool", pool, "--type", "process", "--name", f"unetflow-{socket.gethostname()}"]
    with log_file.open("a", encoding="utf-8") as out:
        return subprocess.Popen(prefect_cli() + args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
