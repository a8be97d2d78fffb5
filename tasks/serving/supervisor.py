"""``unetflow serve`` and ``unetflow serve-stop``: one foreground supervisor for server, deployments, worker.

:func:`serve` claims ``outputs/serve/`` (refusing a second supervisor or a busy port), starts the
Prefect server, waits for ``/api/health``, creates the work pool, deploys ``prefect.yaml``, starts the
worker, writes ``ready`` and then watches both until Ctrl-C, SIGTERM (what :func:`stop` sends) or one
of them exits. Shutdown always goes worker first, server second, and never touches the schedules: a
worker, unlike ``flow.serve()``, does not pause them, so they are active when the server starts again.

Exit codes: 0 after a requested stop, 130 when the stop came before the worker started, 1 when the
server or the worker exited by itself; :class:`ServeError` for what prevented the start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.serving.prefect_server import (
    ServeError,
    child_env,
    deploy_all,
    ensure_pool,
    start_server,
    start_worker,
    wait_healthy,
)
from tasks.serving.processes import alive, is_supervisor, log, port_free, read_pid, stop_components

STATE_DIR = Path("outputs") / "serve"
INTERRUPTED = 130


def claim_state(root: Path, host: str, port: int) -> Path:
    """Check that ``root`` can be served on ``host:port``; clear leftovers; return its state folder."""
    if not (root / "prefect.yaml").exists():
        raise ServeError(f"no prefect.yaml in {root}")
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    supervisor = read_pid(state / "serve.pid")
    if supervisor is not None and supervisor != os.getpid() and is_supervisor(supervisor):
        raise ServeError(f"already serving (pid {supervisor}); stop it with `make serve-stop`")
    stop_components(state)  # leftovers of a supervisor that was killed outright
    if not port_free(host, port):
        raise ServeError(f"port {port} on {host} is in use (choose another: make serve PREFECT_PORT=N)")
    return state


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in the yielded list instead of raising; while shutting down after one,
    ignore them (a second Ctrl-C must not skip the ordered stop); otherwise restore the handlers."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stopping else handler)


def print_usage(host: str, port: int, api_url: str, ui: bool) -> None:
    """How to use the served deployments, once everything is up."""
    ui_line = f"  UI:  http://{host}:{port}\n" if ui else ""
    print(f"\n{ui_line}  export PREFECT_API_URL={api_url}\n"
          "  prefect deployment run 'retrain/scheduled'\n"
          "  prefect deployment run 'infer/hospital-batch' --param input=DIR --param output=DIR\n"
          "  stop: Ctrl-C here, or `make serve-stop`\n", flush=True)


def watch(server: subprocess.Popen, worker: subprocess.Popen, state: Path, stopping: list[int]) -> int:
    """Until a stop signal (0) or until the server or the worker exits by itself (1)."""
    while not stopping:
        if server.poll() is not None or worker.poll() is not None:
            which = "server" if server.poll() is not None else "worker"
            log(f"the {which} exited unexpectedly (see {state / (which + '.log')}); stopping")
            return 1
        time.sleep(0.5)
    return 0


def bring_up(root: Path, state: Path, host: str, port: int, pool: str, startup_timeout: float, ui: bool,
             stopping: list[int]) -> int:
    """Server, pool, deployments, worker, then :func:`watch`; the caller stops what is left."""
    api_url = f"http://{host}:{port}/api"
    env = child_env(root, api_url)
    log(f"starting the Prefect server on {host}:{port} (log {state / 'server.log'})")
    server = start_server(root, host, port, ui, env, state / "server.log")
    (state / "server.pid").write_text(str(server.pid))
    wait_healthy(f"{api_url}/health", server, startup_timeout, stopping)
    if stopping:
        return INTERRUPTED
    log(f"server up: {api_url}")
    deploy_log = state / "deploy.log"
    deploy_log.write_text("")
    log(ensure_pool(pool, root, env, deploy_log))
    deploy_all(root, env, deploy_log)
    log(f"deployed prefect.yaml (log {deploy_log})")
    if stopping:
        return INTERRUPTED
    worker = start_worker(root, pool, env, state / "worker.log")
    (state / "worker.pid").write_text(str(worker.pid))
    log(f"worker started on pool {pool!r} (log {state / 'worker.log'})")
    print_usage(host, port, api_url, ui)
    (state / "ready").write_text(api_url + "\n")
    return watch(server, worker, state, stopping)


def serve(root: Path, host: str = "127.0.0.1", port: int = 4200, pool: str = "unetflow",
          startup_timeout: float = 180.0, ui: bool = True) -> int:
    """Serve the deployments of ``root/prefect.yaml`` in the foreground; the exit code (see above)."""
    root = root.resolve()
    state = claim_state(root, host, port)
    (state / "serve.pid").write_text(str(os.getpid()))
    (state / "api_url").write_text(f"http://{host}:{port}/api\n")
    try:
        with stop_signals() as stopping:
            return bring_up(root, state, host, port, pool, startup_timeout, ui, stopping)
    finally:
        (state / "ready").unlink(missing_ok=True)
        stop_components(state)
        (state / "serve.pid").unlink(missing_ok=True)
        log("stopped")


def stop(root: Path, timeout: float = 90.0) -> int:
    """Ask the supervisor to shut down in order; with no supervisor left, stop what its pid files name."""
    state = root.resolve() / STATE_DIR
    supervisor = read_pid(state / "serve.pid")
    if supervisor is not None and is_supervisor(supervisor):
        log(f"stopping (pid {supervisor})")
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(supervisor):
            log(f"pid {supervisor} still running after {timeout:.0f} s")
            return 1
    stop_components(state)
    (state / "serve.pid").unlink(missing_ok=True)
    log("nothing left running")
    return 0
