"""``pacs-sync``: find new series on a PACS, segment them, store a DICOM SEG and a volume SR back into their study.

Why it is shaped this way:

* **Rerun-safe.** A sync is rerun after crashes, timeouts and outages. The results' UIDs are derived from
  (source series, model name, model version) (:func:`~tasks.pacs.results.result_uids`), so before working on a
  series the sync asks the PACS whether they exist: nothing is ever stored twice, and a run killed between
  the SEG and the SR only adds the missing one next time. A new model version names new results.
* **Bad data is not retried forever.** A series that failed for a *data* reason (unreadable, not one series,
  no SEG possible), or whose files showed a localizer (scout), is remembered in ``<work_dir>/state.json``
  with a fingerprint (instance count, or the hash of its sorted SOPInstanceUIDs) and skipped until it
  changes. Transport failures are never remembered: the next sync retries them. One series failing never
  stops the others.
* **No patient data kept or logged.** Everything fetched or written that carries identity (the DICOM files,
  the SEG/SR, the infer report) lives in a temporary folder that is removed when the series is finished,
  whatever happened. What stays is named by the series' salted pseudonym: the NIfTI mask and a small
  result JSON per series, ``state.json``, ``summary.json`` and ``runs/<timestamp>.json``. Failure reasons
  are scrubbed of UIDs and the patient's name/ID before they are logged or kept.
* **Overlapped.** A series is fetched while the one before it is segmented, and stored while the one after it
  is (:mod:`tasks.pacs.steps` holds the three steps): the model never waits for the PACS, which matters most
  where each series is small and the round trip large. At most three series are in flight; outcomes are
  recorded, and ``state.json`` saved, in the PACS's order.

Plain functions: the Prefect flow and the CLI wrap :func:`sync_pacs`. One sync per ``work_dir`` at a time
(a lock file refuses a second).
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from torch import nn

from tasks.common.atomic import write_json
from tasks.common.plan import Plan
from tasks.inference.segment import utc_now
from tasks.pacs.outcomes import FailureMemory, SeriesOutcome, SyncSummary
from tasks.pacs.steps import (
    Finished,
    InFlight,
    SyncContext,
    SyncSettings,
    prepare,
    segment,
    store,
)
from tasks.pacs.transport import SeriesRef, Transport

__all__ = ["SyncSettings", "sync_pacs"]
log = logging.getLogger("unetflow.pacs")
T = TypeVar("T")
R = TypeVar("R")


def sync_pacs(transport: Transport, model: nn.Module, plan: Plan, settings: SyncSettings) -> SyncSummary:
    """Sync every series ``settings.filters`` finds; see the module docstring.

    Raises :class:`~tasks.pacs.transport.PacsUnavailable` when the series search itself fails (nothing can be
    done); every failure after that is one series' outcome.
    """
    work_dir = Path(settings.work_dir)
    started = datetime.now(UTC)
    with _exclusive(work_dir):
        _remove_leftovers(work_dir)
        try:
            refs = transport.find_series(settings.filters)
            log.info("pacs-sync: %d series found, model %s v%s", len(refs), settings.model_name,
                     settings.model_version)
            memory = FailureMemory(work_dir / "state.json")
            outcomes = _run_overlapped(SyncContext(transport, model, plan, settings, memory), refs)
        finally:
            _remove_leftovers(work_dir)  # an interrupt between the steps leaves a fetched series behind
        summary = SyncSummary(outcomes, started.isoformat(timespec="seconds"), settings.model_name,
                              settings.model_version)
        _write_summary(work_dir, summary, started)
    log.info("pacs-sync: %d done, %d skipped, %d failed", summary.done, summary.skipped, summary.failed)
    return summary


def _run_overlapped(context: SyncContext, refs: list[SeriesRef]) -> list[SeriesOutcome]:
    """Fetch one series ahead (a worker thread), segment here, store behind (a second worker thread).

    The model runs in the caller's thread, the PACS work in the two others: on a CPU that leaves a core to the
    network, to the PACS on the same host, and to building and sending the results. Outcomes are recorded in
    order as they complete, so a sync killed midway has remembered everything before the kill.
    """
    outcomes: list[SeriesOutcome] = []
    stores: deque[Future[Finished]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="pacs-fetch") as fetcher, \
            ThreadPoolExecutor(1, thread_name_prefix="pacs-store") as storer:
        ahead = _submit(fetcher, prepare, context, refs[0]) if refs else None
        for index in range(len(refs)):
            assert ahead is not None
            step = ahead.result()
            ahead = _submit(fetcher, prepare, context, refs[index + 1]) if index + 1 < len(refs) else None
            if isinstance(step, InFlight):
                step = segment(context, step)
            stores.append(_submit(storer, store, context, step) if isinstance(step, InFlight) else _completed(step))
            while stores and (stores[0].done() or len(stores) > 1):  # one store behind: three series in flight
                outcomes.append(_record(stores.popleft().result(), context.memory))
        outcomes += [_record(future.result(), context.memory) for future in stores]
    return outcomes


def _submit(pool: ThreadPoolExecutor, step: Callable[[SyncContext, T], R], context: SyncContext, item: T) -> Future[R]:
    """``step`` in ``pool`` with this thread's context variables (Prefect's run context: the worker's log lines
    reach the flow run's log)."""
    return pool.submit(contextvars.copy_context().run, step, context, item)


def _completed(finished: Finished) -> Future[Finished]:
    future: Future[Finished] = Future()
    future.set_result(finished)
    return future


def _record(finished: Finished, memory: FailureMemory) -> SeriesOutcome:
    """The outcome as reported, logged and remembered (``state.json`` saved at once when it changed)."""
    series = finished.series
    changed = finished.remember
    if finished.remember:
        memory.remember(series.name, finished.reason, series.ref.instances, series.instances_sha256, finished.status)
    if finished.status == "done":
        changed = memory.forget(series.name)
    if changed:
        memory.save()
    outcome = SeriesOutcome(series.name, finished.status, finished.reason,
                            round(time.perf_counter() - series.started, 3), finished.volumes_ml)
    level = logging.WARNING if finished.status == "failed" else logging.INFO
    log.log(level, "%s: %s%s (%.1f s)", series.name, finished.status,
            f": {finished.reason}" if finished.reason else "", outcome.seconds)
    return outcome


@contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """Hold ``work_dir/.lock``: two syncs on one folder would delete each other's temporary files."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another pacs-sync is running on {work_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(work_dir: Path) -> None:
    """A sync killed hard (SIGKILL, power) cannot run its ``finally``: its fetched files go now."""
    shutil.rmtree(work_dir / "tmp", ignore_errors=True)


def _write_summary(work_dir: Path, summary: SyncSummary, started: datetime) -> None:
    payload = {**summary.to_json(), "finished_at": utc_now()}
    write_json(work_dir / "runs" / f"{started.strftime('%Y%m%dT%H%M%S%fZ')}.json", payload)
    write_json(work_dir / "summary.json", payload)
