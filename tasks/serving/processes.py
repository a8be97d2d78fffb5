"""The processes ``unetflow serve`` owns, seen from outside: pid files, liveness, ordered stopping.

The server and the worker each run in a session (process group) of their own, so that stopping one
stops whatever it started too, and so that Ctrl-C in the terminal reaches only the supervisor, which
then stops them in order. Their pids are kept in ``outputs/serve/*.pid``; a pid is only acted on when
the process still runs the command it was written for (pids are reused), which also lets
``unetflow serve-stop`` clean up after a supervisor that was killed outright.

A process group is not enough on its own: Prefect's process worker starts each flow run in a session
of its own (``start_new_session`` in ``prefect.runner._workspace_starter``), so a flow run outlives
a killed worker and is out of reach of the worker's group. Every process ``unetflow serve`` starts
therefore carries the environment variable :data:`MARK_VAR` (``<project root>|<role>``), which its
children inherit (Prefect copies the worker's environment into each flow run); :func:`marked_pids`
finds them all in ``/proc``, orphans included. The mark is a tag, not a setting: nothing reads it
to change what it does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# A component that ignores SIGINT/SIGTERM this long is killed.
GRACE_SECONDS = 20.0
# The order of an ordered stop: the worker before the server (the other order leaves the worker
# retrying a vanished API for about 80 s). Name of the pid file, text its command line contains.
COMPONENTS = (("worker", "worker"), ("server", "server"))
MARK_VAR = "UNETFLOW_SERVE_MARK"


def log(message: str) -> None:
    """One progress line of ``unetflow serve`` on stdout, flushed at once (the output may be a pipe)."""
    print(f"unetflow serve: {message}", flush=True)


def port_free(host: str, port: int) -> bool:
    """True when a listening TCP socket could bind ``host:port`` right now.

    ``SO_REUSEADDR``, as the server (uvicorn) sets it: connections of a stopped server left in
    TIME_WAIT do not keep it from binding, so they must not fail the probe either."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited child (ours or another process's zombie) is not running."""
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


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces (``/proc``, else ``ps``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return done.stdout


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker`` (guards against PID reuse)."""
    return alive(pid) and marker in command_line(pid)


def is_supervisor(pid: int) -> bool:
    """True when ``pid`` is alive and runs ``unetflow serve`` (not ``serve-stop``, not another command)."""
    if not alive(pid):
        return False
    words = command_line(pid).split()
    cli = any(Path(word).name == "unetflow" or word == "flows.cli" for word in words)
    return cli and "serve" in words


def read_pid(path: Path) -> int | None:
    """The pid written in ``path``; None when the file is missing or holds no number."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def mark(root: Path, role: str) -> str:
    """The value of :data:`MARK_VAR` for the ``role`` processes (server, worker) serving ``root``."""
    return f"{root.resolve()}|{role}"


def environ_mark(pid: int) -> str | None:
    """The :data:`MARK_VAR` that ``pid`` was started with (``/proc/PID/environ``); None without one."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{MARK_VAR}=".encode()
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def is_marked(pid: int, value: str) -> bool:
    """True when ``pid`` runs and carries the mark ``value``."""
    return alive(pid) and environ_mark(pid) == value


def marked_pids(value: str) -> list[int]:
    """Every live process carrying the mark ``value`` (this one excluded), however it was detached."""
    return sorted(pid for pid in proc_pids() if pid != os.getpid() and is_marked(pid, value))


def stop_marked(value: str, name: str, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, to every process marked ``value``; the pids that were running."""
    pids = marked_pids(value)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = [pid for pid in pids if is_marked(pid, value)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [pid for pid in left if is_marked(pid, value)]
    survivors = [pid for pid in pids if is_marked(pid, value)]
    if pids:
        log(f"stopped {len(pids) - len(survivors)} leftover {name} process(es) (pids {pids})"
            + (f"; still running: {survivors}" if survivors else ""))
    return pids


def proc_pids() -> list[int]:
    """The pids listed in ``/proc`` (empty where there is none)."""
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*") if entry.name.isdigit()]


def pgid_of(pid: int) -> int | None:
    """The process group of ``pid``; None once it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` runs (its leader may be gone already)."""
    if alive(pgid):
        return True
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return any(pgid_of(pid) == pgid and alive(pid) for pid in proc_pids())


def stop_group(pid: int, name: str, grace: float = GRACE_SECONDS) -> None:
    """SIGINT (what Ctrl-C would send), then SIGTERM, then SIGKILL to the process group led by ``pid``."""
    for sig, wait in ((signal.SIGINT, grace * 0.75), (signal.SIGTERM, grace * 0.25), (signal.SIGKILL, 5.0)):
        if not group_alive(pid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    if group_alive(pid):
        log(f"{name} (pid {pid}) did not stop")
    else:
        log(f"{name} stopped")


def stop_components(state: Path, root: Path) -> list[str]:
    """Worker first, then server, each with its group and then every process still carrying its
    mark (a flow run the worker left behind, say); pid files are removed. What was stopped."""
    stopped = []
    for name, marker in COMPONENTS:
        pid_file = state / f"{name}.pid"
        pid = read_pid(pid_file)
        if pid is not None and is_ours(pid, marker):
            log(f"stopping {name} (pid {pid})")
            stop_group(pid, name)
            stopped.append(f"{name} (pid {pid})")
        leftovers = stop_marked(mark(root, name), f"{name}'s")
        stopped += [f"{name}'s process {child}" for child in leftovers if child != pid]
        pid_file.unlink(missing_ok=True)
    return stopped
