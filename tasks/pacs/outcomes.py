"""What a PACS sync reports (one outcome per series, the run's summary) and remembers between runs.

The summary is the flow run's result and ``summary.json``; the memory (``state.json``) holds the series that
failed for a *data* reason, by pseudonym and with a fingerprint, so an unchanged corrupt series is not fetched
and segmented again on every 15-minute run (:mod:`tasks.pacs.sync`). Neither ever holds a UID or a name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks.common.atomic import write_json
from tasks.pacs.transport import SeriesRef

log = logging.getLogger("unetflow.pacs")
STATE_VERSION = 1
Status = Literal["done", "skipped", "failed"]


@dataclass
class SeriesOutcome:
    """One series' result. ``series`` is its pseudonym, never a UID or patient data."""

    series: str
    status: Status
    reason: str
    seconds: float
    volumes_ml: dict[str, float] = field(default_factory=dict)


@dataclass
class SyncSummary:
    outcomes: list[SeriesOutcome]
    started_at: str
    model_name: str
    model_version: str

    def _count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def all_failed(self) -> bool:
        """True only when there was at least one series and every one failed."""
        return bool(self.outcomes) and self.failed == len(self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "model": {"name": self.model_name, "version": self.model_version},
                "counts": {"done": self.done, "skipped": self.skipped, "failed": self.failed},
                "all_failed": self.all_failed, "series": [dataclasses.asdict(o) for o in self.outcomes]}


class FailureMemory:
    """``state.json``: series that failed for a data reason, or that only their files showed need no work (a
    localizer), by pseudonym, with their fingerprint and status: not fetched again until they change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed: dict[str, dict[str, Any]] = {}
        if path.exists():
            payload = read_json(path)
            self.failed = dict(payload.get("failed", {})) if isinstance(payload, dict) else {}

    def unchanged_before_fetch(self, name: str, ref: SeriesRef) -> str | None:
        """``<status> before and unchanged: <reason>`` when the PACS's instance count says the series did not
        change since it was remembered; else None."""
        prior = self.failed.get(name)
        if prior and ref.instances is not None and prior.get("instances") == ref.instances:
            return _unchanged(prior)
        return None

    def unchanged_after_fetch(self, name: str, ref: SeriesRef, sha256: str) -> str | None:
        """The same when no count could decide and the SOPInstanceUIDs are the same as then."""
        prior = self.failed.get(name)
        undecided = ref.instances is None or (prior or {}).get("instances") is None
        if prior and undecided and prior.get("uids_sha256") == sha256:
            return _unchanged(prior)
        return None

    def remember(self, name: str, reason: str, instances: int | None, uids_sha256: str | None,
                 status: Status = "failed") -> None:
        self.failed[name] = {"status": status, "reason": reason, "instances": instances, "uids_sha256": uids_sha256,
                             "at": datetime.now(UTC).isoformat(timespec="seconds")}

    def forget(self, name: str) -> bool:
        """Forget ``name``; whether it was remembered (the file needs saving only then)."""
        return self.failed.pop(name, None) is not None

    def save(self) -> None:
        write_json(self.path, {"version": STATE_VERSION, "failed": self.failed})


def _unchanged(prior: dict[str, Any]) -> str:
    return f"{prior.get('status', 'failed')} before and unchanged: {prior.get('reason', '')}"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("%s unreadable (%s): starting without remembered failures", path.name, type(error).__name__)
        return {}
