"""serve: a local Prefect server on 127.0.0.1 that runs the deployments of ``prefect.yaml``.

``python -m flows.serve start`` (what ``make serve`` runs), in the foreground:

1. starts ``prefect server start --host 127.0.0.1 --port PORT`` and waits for ``/api/health``;
2. creates the process work pool (``unetflow``) unless it exists;
3. registers every deployment of ``prefect.yaml`` (``prefect deploy --all``) with ``UNETFLOW_ROOT``
   set to the project folder, where the deployments' pull step makes every flow run start;
4. starts a process worker on the pool, which runs each flow run in a subprocess of its own.

Then ``prefect deployment run 'retrain/scheduled'`` and ``prefect deployment run
'infer/hospital-batch' --param input=DIR --param output=DIR`` work against it (with
``PREFECT_API_URL=http://127.0.0.1:PORT/api``), and the nightly schedule fires by itself.

Ctrl-C, SIGTERM or ``python -m flows.serve stop`` (``make serve-stop``) stops the worker first and the
server second (the other order leaves the worker retrying a vanished API for about 80 s). Schedules
are not touched: a worker, unlike ``flow.serve()``, does not pause them on shutdown, so they are still
active when the server starts again. Process IDs and logs are kept in ``outputs/serve/``.
Telemetry stays off in every process (``DO_NOT_TRACK``, Prefect analytics, DVC, MLflow).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import flows  # noqa: F401  (telemetry off before any child environment is copied)

STATE_DIR = Path("outputs") / "serve"
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}
# A component that ignores SIGINT/SIGTERM this long is killed.
GRACE_SECONDS = 20.0


class ServeError(RuntimeError):
    """The server, the deployments or the worker could not be brought up."""


def log(message: str) -> None:
    print(f"unetflow serve: {message}", flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def child_env(root: Path, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TELEMETRY_OFF)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_API_URL"] = api_url
    env["UNETFLOW_ROOT"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONUTF8", "1")
    return env


def prefect_cli() -> list[str]:
    # `python -m prefect` runs the same CLI as the `prefect` script of this environment.
    return [sys.executable, "-m", "prefect"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError, OSError):  # reap our own exited children (no zombies)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:  # an exited child of another process that has not reaped it yet is not running
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1][:4]
    except (OSError, IndexError):
        return True


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker`` (guards against PID reuse)."""
    if not alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        command = done.stdout
    return marker in command


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_group(pid: int, name: str, grace: float = GRACE_SECONDS) -> None:
    """SIGINT (what Ctrl-C would send), then SIGTERM, then SIGKILL to the process group led by ``pid``."""
    for sig, wait in ((signal.SIGINT, grace * 0.75), (signal.SIGTERM, grace * 0.25), (signal.SIGKILL, 5.0)):
        if not alive(pid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    if alive(pid):
        log(f"{name} (pid {pid}) did not stop")
    else:
        log(f"{name} stopped")


def stop_components(state: Path) -> None:
    """Worker first, then server; pid files of what was stopped are removed."""
    for name, marker in (("worker", "worker"), ("server", "server")):
        pid_file = state / f"{name}.pid"
        pid = read_pid(pid_file)
        if pid is not None and is_ours(pid, marker):
            log(f"stopping {name} (pid {pid})")
            stop_group(pid, name)
        pid_file.unlink(missing_ok=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, stopping: list[int]) -> None:
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
    done = subprocess.run(prefect_cli() + args, cwd=root, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)
    output = done.stdout + done.stderr
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write(f"$ prefect {' '.join(args)}\n{output}\n")
    if done.returncode != 0:
        raise ServeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}")
    return output


def ensure_pool(pool: str, root: Path, env: dict[str, str], log_file: Path) -> None:
    try:
        run_cli(["work-pool", "inspect", pool], root, env, log_file, timeout=120)
        log(f"work pool {pool!r} exists")
    except ServeError:
        run_cli(["work-pool", "create", pool, "--type", "process"], root, env, log_file, timeout=120)
        log(f"work pool {pool!r} created (type process)")


def start(root: Path, host: str, port: int, pool: str, startup_timeout: float, ui: bool) -> int:
    root = root.resolve()
    if not (root / "prefect.yaml").exists():
        raise ServeError(f"no prefect.yaml in {root}")
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    supervisor = read_pid(state / "serve.pid")
    if supervisor is not None and supervisor != os.getpid() and is_ours(supervisor, "flows.serve"):
        raise ServeError(f"already serving (pid {supervisor}); stop it with `make serve-stop`")
    stop_components(state)  # leftovers of a supervisor that was killed outright
    if not port_free(host, port):
        raise ServeError(f"port {port} on {host} is in use (choose another: make serve PREFECT_PORT=N)")
    api_url = f"http://{host}:{port}/api"
    env = child_env(root, api_url)
    (state / "serve.pid").write_text(str(os.getpid()))
    (state / "api_url").write_text(api_url + "\n")

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = worker = None
    code = 0
    try:
        log(f"starting the Prefect server on {host}:{port} (log {state / 'server.log'})")
        server_args = ["server", "start", "--host", host, "--port", str(port), "--analytics-off"]
        server_args.append("--ui" if ui else "--no-ui")
        with (state / "server.log").open("w", encoding="utf-8") as out:
            server = subprocess.Popen(prefect_cli() + server_args, cwd=root, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        (state / "server.pid").write_text(str(server.pid))
        wait_healthy(f"{api_url}/health", server, startup_timeout, stopping)
        if stopping:
            return 130
        log(f"server up: {api_url}")
        deploy_log = state / "deploy.log"
        deploy_log.write_text("")
        ensure_pool(pool, root, env, deploy_log)
        run_cli(["--no-prompt", "deploy", "--all"], root, env, deploy_log)
        log(f"deployed prefect.yaml (log {deploy_log})")
        if stopping:
            return 130
        with (state / "worker.log").open("w", encoding="utf-8") as out:
            worker = subprocess.Popen(prefect_cli() + ["worker", "start", "--pool", pool, "--type", "process",
                                                       "--name", f"unetflow-{socket.gethostname()}"],
                                      cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        (state / "worker.pid").write_text(str(worker.pid))
        log(f"worker started on pool {pool!r} (log {state / 'worker.log'})")
        ui_line = f"  UI:  http://{host}:{port}\n" if ui else ""
        print(f"\n{ui_line}  export PREFECT_API_URL={api_url}\n"
              "  prefect deployment run 'retrain/scheduled'\n"
              "  prefect deployment run 'infer/hospital-batch' --param input=DIR --param output=DIR\n"
              "  stop: Ctrl-C here, or `make serve-stop`\n", flush=True)
        (state / "ready").write_text(api_url + "\n")
        while not stopping:
            if server.poll() is not None or worker.poll() is not None:
                which = "server" if server.poll() is not None else "worker"
                log(f"the {which} exited unexpectedly (see {state / (which + '.log')}); stopping")
                code = 1
                break
            time.sleep(0.5)
        return code if not stopping else 0
    finally:
        for sig, handler in previous.items():  # a second Ctrl-C during shutdown must not skip the order
            signal.signal(sig, signal.SIG_IGN if stopping else handler)
        (state / "ready").unlink(missing_ok=True)
        stop_components(state)
        (state / "serve.pid").unlink(missing_ok=True)
        log("stopped")


def stop(root: Path, timeout: float = 90.0) -> int:
    """Ask the supervisor to shut down in order; with no supervisor left, stop what its pid files name."""
    state = root.resolve() / STATE_DIR
    supervisor = read_pid(state / "serve.pid")
    if supervisor is not None and is_ours(supervisor, "flows.serve"):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="server + deployments + worker, in the foreground")
    start_cmd.add_argument("--root", type=Path, default=Path("."))
    start_cmd.add_argument("--host", default="127.0.0.1")
    start_cmd.add_argument("--port", type=int, default=4200)
    start_cmd.add_argument("--pool", default="unetflow", help="the work pool named in prefect.yaml")
    start_cmd.add_argument("--startup-timeout", type=float, default=180.0)
    start_cmd.add_argument("--no-ui", action="store_true", help="API only (no Prefect dashboard)")
    stop_cmd = sub.add_parser("stop", help="stop a running `start` (worker first, then server)")
    stop_cmd.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return start(args.root, args.host, args.port, args.pool, args.startup_timeout, not args.no_ui)
        return stop(args.root)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
