"""Keeping the worker up: a dead worker is restarted, not a reason to take the server down.

When the worker dies (``kill -9``, out of memory), the flow runs it started live on in sessions of
their own and stay ``Running`` in Prefect. :class:`WorkerKeeper` then stops those orphans (by their
mark), has the recovery mark their runs ``Crashed`` and free their concurrency slots, and starts a
new worker. Restarts are bounded (``max_restarts`` within ``window`` seconds): a worker that dies
over and over stops ``unetflow serve`` rather than spinning.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.serving.processes import log


@dataclass
class WorkerKeeper:
    """The current worker process, how to start another, and what to do first when one died."""

    start: Callable[[], subprocess.Popen]
    recover: Callable[[], None]
    max_restarts: int = 5
    window: float = 600.0
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def launch(self) -> subprocess.Popen:
        """Start the (first or next) worker."""
        self.process = self.start()
        return self.process

    def check(self) -> bool:
        """True while a worker runs: the current one, or a new one started because it died.

        False when it died once too often within ``window`` (the caller stops serving)."""
        if self.process is None or self.process.poll() is None:
            return True
        now = time.monotonic()
        self.restarts = [when for when in self.restarts if now - when < self.window]
        log(f"the worker (pid {self.process.pid}) exited ({self.process.returncode})")
        if len(self.restarts) >= self.max_restarts:
            log(f"the worker died {len(self.restarts) + 1} times within {self.window:.0f} s; giving up")
            return False
        self.recover()
        self.restarts.append(now)
        self.launch()
        log(f"worker restarted (pid {self.process.pid}; restart {len(self.restarts)} of at most "
            f"{self.max_restarts} per {self.window:.0f} s)")
        return True
