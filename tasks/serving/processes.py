"""The processes ``unetflow serve`` owns, seen from outside: pid files, liveness, ordered stopping.

The server and the worker each run in a session (process group) of their own, so that stopping one
stops whatever it started too, and so that Ctrl-C in the terminal reaches only the supervisor, which
then stops them in order. Their pids are kept in ``outputs/serve/*.pid``; a pid is only acted on when
the process still runs the command it was written for (pids are reused), which also lets
``unetflow serve-stop`` clean up after a supervisor that was killed outright.
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


def log(message: str) -> None:
    """One progress line of ``unetflow serve`` on stdout, flushed at once (the output may be a pipe)."""
    print(f"unetflow serve: {message}", flush=True)


def port_free(host: str, port: int) -> bool:
    """True when a TCP socket can bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
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
    for name, marker in COMPONENTS:
        pid_file = state / f"{name}.pid"
        pid = read_pid(pid_file)
        if pid is not None and is_ours(pid, marker):
            log(f"stopping {name} (pid {pid})")
            stop_group(pid, name)
        pid_file.unlink(missing_ok=True)
