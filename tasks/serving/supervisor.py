"""``unetflow serve`` and ``unetflow serve-stop``: one foreground supervisor for server, deployments, worker.

:func:`serve` claims ``outputs/serve/`` (refusing a second supervisor or a busy port), starts the
Prefect server, waits for ``/api/health``, creates the work pool, deploys ``prefect.yaml``, starts the
worker, writes ``ready`` and then watches both until Ctrl-C, SIGTERM (what :func:`stop` sends) or
the server exits. Before the worker starts it recovers from a crash (``recovery``): runs left active
with no live process become ``Crashed`` and free their concurrency slots, and the zombie-run
automation is in place. A worker that dies is restarted (``keeper``), its orphaned flow runs stopped
and crashed first. Shutdown always goes worker first, server second, then whatever still carries
their mark, and never touches the schedules: a worker, unlike ``flow.serve()``, does not pause them,
so they are active when the server starts again.

Exit codes: 0 after a requested stop, 130 when the stop came before the worker started, 1 when the
server exited by itself or the worker died too often; :class:`ServeError` for what prevented the start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.serving.keeper import WorkerKeeper
from tasks.serving.prefect_server import (
    ServeError,
    child_env,
    deploy_all,
    ensure_pool,
    start_server,
    start_worker,
    wait_healthy,
)
from tasks.serving.processes import (
    alive,
    is_supervisor,
    log,
    mark,
    port_free,
    read_pid,
    stop_components,
    stop_marked,
)
from tasks.serving.recovery import PrefectApiError, ensure_zombie_automation, reconcile

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
    stop_components(state, root)  # leftovers of a supervisor that was killed outright
    if not port_free(host, port):
        raise ServeError(f"port {port} on {host} is in use by another program "
                         "(choose another: make serve PREFECT_PORT=N)")
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


def watch(server: subprocess.Popen, keeper: WorkerKeeper, state: Path, stopping: list[int]) -> int:
    """Until a stop signal (0), the server's exit or a worker that keeps dying (1)."""
    while not stopping:
        if server.poll() is not None:
            log(f"the server exited unexpectedly (see {state / 'server.log'}); stopping")
            return 1
        if not keeper.check():
            log(f"see {state / 'worker.log'}; stopping")
            return 1
        time.sleep(0.5)
    return 0


def recover(root: Path, api_url: str, pool: str) -> None:
    """Runs left active without a live process (a dead worker's, a killed serve's) become Crashed."""
    stop_marked(mark(root, "worker"), "worker's")
    try:
        reconcile(api_url, pool, mark(root, "worker"), log)
    except PrefectApiError as error:
        log(f"could not check for flow runs left behind: {error}")


def prepare(root: Path, state: Path, pool: str, api_url: str, env: dict[str, str]) -> None:
    """Pool, deployments, the zombie-run automation, and the recovery of what a crash left behind."""
    deploy_log = state / "deploy.log"
    deploy_log.write_text("")
    log(ensure_pool(pool, root, env, deploy_log))
    deploy_all(root, env, deploy_log)
    log(f"deployed prefect.yaml (log {deploy_log})")
    try:
        log(ensure_zombie_automation(api_url))
    except PrefectApiError as error:
        log(f"could not create the zombie-run automation: {error}")
    recover(root, api_url, pool)


def bring_up(root: Path, state: Path, host: str, port: int, pool: str, startup_timeout: float, ui: bool,
             stopping: list[int]) -> int:
    """Server, pool, deployments, recovery, worker, then :func:`watch`; the caller stops what is left."""
    api_url = f"http://{host}:{port}/api"
    env = child_env(root, api_url, "server")
    log(f"starting the Prefect server on {host}:{port} (log {state / 'server.log'})")
    server = start_server(root, host, port, ui, env, state / "server.log")
    (state / "server.pid").write_text(str(server.pid))
    wait_healthy(f"{api_url}/health", server, startup_timeout, stopping)
    if stopping:
        return INTERRUPTED
    log(f"server up: {api_url}")
    prepare(root, state, pool, api_url, env)
    if stopping:
        return INTERRUPTED
    worker_env = child_env(root, api_url, "worker")
    (state / "worker.log").write_text("")

    def launch_worker() -> subprocess.Popen:
        worker = start_worker(root, pool, worker_env, state / "worker.log")
        (state / "worker.pid").write_text(str(worker.pid))
        return worker

    keeper = WorkerKeeper(start=launch_worker, recover=lambda: recover(root, api_url, pool))
    keeper.launch()
    log(f"worker started on pool {pool!r} (log {state / 'worker.log'})")
    print_usage(host, port, api_url, ui)
    (state / "ready").write_text(api_url + "\n")
    return watch(server, keeper, state, stopping)


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
        stop_components(state, root)
        (state / "serve.pid").unlink(missing_ok=True)
        log("stopped")


def stop(root: Path, timeout: float = 90.0) -> int:
    """Ask the supervisor to shut down in order; then stop whatever of ours still runs (its pid files,
    processes carrying the mark: a killed supervisor's server, a dead worker's flow runs)."""
    root = root.resolve()
    state = root / STATE_DIR
    supervisor = read_pid(state / "serve.pid")
    stopped = []
    if supervisor is not None and is_supervisor(supervisor):
        log(f"stopping (pid {supervisor})")
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(supervisor):
            log(f"pid {supervisor} still running after {timeout:.0f} s")
            return 1
        stopped.append(f"supervisor (pid {supervisor})")
    stopped += stop_components(state, root)
    (state / "serve.pid").unlink(missing_ok=True)
    log(f"stopped: {', '.join(stopped)}" if stopped else "nothing left running")
    return 0
