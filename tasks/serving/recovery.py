"""Recovery after a crash: flow runs whose process is gone become ``Crashed`` and free their slots.

A flow run whose worker (or whole ``unetflow serve``) was killed stays ``Running``, ``Pending`` or
``Cancelling`` in Prefect's database: nothing is left to report its end, and a later
``prefect flow-run cancel`` waits for a worker that no longer knows the process. With the deployment's
concurrency limit of 1, that run also keeps the only slot, so every new retrain (the nightly one too)
waits in ``AwaitingConcurrencySlot`` for good. Two mechanisms end that:

* :func:`reconcile` (``unetflow serve`` calls it on start and whenever it restarts a dead worker):
  every active run of the pool whose process is not alive is forced to ``Crashed``. A forced
  transition goes through Prefect's ``MinimalFlowPolicy``, whose ``ReleaseFlowConcurrencySlots``
  releases the run's deployment slot, falling back to the deployment's limit when the lease was lost
  with a server restart (leases live in the server's memory by default). A deployment limit that
  still counts more active slots than it has active runs is then set back to that number.
* :func:`ensure_zombie_automation`: Prefect's own detector for runs that die while nobody watches.
  Flow runs send a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (set for the
  worker in ``prefect_server``); this proactive automation marks a run ``Crashed`` when no heartbeat
  and no final state followed its last heartbeat within three periods.

Plain HTTP against Prefect's REST API (no Prefect import): the supervisor stays a small process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tasks.serving.processes import is_marked

ACTIVE = ["PENDING", "RUNNING", "CANCELLING"]
ZOMBIE_AUTOMATION = "unetflow: crash flow runs without heartbeat"
HEARTBEAT_SECONDS = 30  # Prefect's minimum; the automation waits three of them
CRASH_MESSAGE = "its process is gone (worker or `unetflow serve` stopped while it ran)"


class PrefectApiError(RuntimeError):
    """A call to Prefect's REST API failed."""


def api(api_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One JSON request to ``api_url + path``; the decoded answer (None when it has no body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api_url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise PrefectApiError(f"{method} {path}: HTTP {error.code} {detail}") from None
    except OSError as error:
        raise PrefectApiError(f"{method} {path}: {error}") from None
    return json.loads(text) if text.strip() else None


def active_runs(api_url: str) -> list[dict[str, Any]]:
    """Every flow run in a Pending, Running or Cancelling state (sub-flow runs included)."""
    body = {"flow_runs": {"state": {"type": {"any_": ACTIVE}}}, "limit": 200}
    return api(api_url, "POST", "/flow_runs/filter", body)


def root_run(api_url: str, run: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The top-level flow run ``run`` belongs to (a sub-flow runs in its parent's process)."""
    seen = 0
    while run.get("parent_task_run_id") and seen < 20:
        task_run = api(api_url, "GET", f"/task_runs/{run['parent_task_run_id']}")
        parent_id = task_run["flow_run_id"]
        run = runs.get(parent_id) or api(api_url, "GET", f"/flow_runs/{parent_id}")
        seen += 1
    return run


def process_alive(run: dict[str, Any], mark: str) -> bool:
    """True when the run's infrastructure pid is a live process that ``unetflow serve`` started."""
    pid = run.get("infrastructure_pid") or ""
    return pid.isdigit() and is_marked(int(pid), mark)


def stale_runs(api_url: str, pool: str, mark: str) -> list[dict[str, Any]]:
    """Active runs of ``pool`` (and their sub-runs) whose process is gone.

    A top-level run counts when its deployment runs on ``pool``; it is stale when its infrastructure
    pid is not a live process of ours, or when it has none yet (a worker that died between Pending
    and the start of the process). Runs outside the pool (an ad-hoc ``unetflow retrain``) are left."""
    runs = {run["id"]: run for run in active_runs(api_url)}
    stale = []
    for run in runs.values():
        root = root_run(api_url, run, runs)
        if root.get("work_pool_name") != pool or not root.get("deployment_id"):
            continue
        if root.get("state_type") not in ACTIVE or not process_alive(root, mark):
            stale.append(run)
    return stale


def crash(api_url: str, run: dict[str, Any]) -> None:
    """Force ``run`` to ``Crashed`` (Prefect then releases its deployment concurrency slot)."""
    body = {"state": {"type": "CRASHED", "name": "Crashed", "message": f"unetflow serve: {CRASH_MESSAGE}"},
            "force": True}
    api(api_url, "POST", f"/flow_runs/{run['id']}/set_state", body)


def free_slots(api_url: str, pool: str) -> list[str]:
    """Set each deployment limit of ``pool`` that counts more slots than active runs back; what was done."""
    done = []
    deployments = api(api_url, "POST", "/deployments/filter", {"work_pools": {"name": {"any_": [pool]}}})
    for deployment in deployments:
        limit = deployment.get("global_concurrency_limit")
        if not limit:
            continue
        body = {"deployments": {"id": {"any_": [deployment["id"]]}}, "flow_runs": {"state": {"type": {"any_": ACTIVE}}}}
        running = api(api_url, "POST", "/flow_runs/count", body)
        current = api(api_url, "GET", f"/v2/concurrency_limits/{limit['id']}")
        if current["active_slots"] > running:
            api(api_url, "PATCH", f"/v2/concurrency_limits/{limit['id']}", {"active_slots": running})
            done.append(f"freed {current['active_slots'] - running} concurrency slot(s) of deployment "
                        f"{deployment['name']!r} (no active run holds them)")
    return done


def reconcile(api_url: str, pool: str, mark: str, log: Callable[[str], None]) -> list[str]:
    """Crash every stale run of ``pool``, free leaked slots, log each step; the ids of crashed runs."""
    crashed = []
    for run in stale_runs(api_url, pool, mark):
        crash(api_url, run)
        crashed.append(run["id"])
        log(f"flow run {run['name']!r} ({run['id']}) was {run.get('state_name') or run.get('state_type')} "
            f"with no live process: marked Crashed")
    for line in free_slots(api_url, pool):
        log(line)
    if not crashed:
        log("no flow run left behind by a stopped worker")
    return crashed


def zombie_automation() -> dict[str, Any]:
    """Prefect's documented zombie-run detector: no heartbeat and no end within 3 heartbeats → Crashed."""
    finals = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": "Marks a flow run Crashed when its process stopped sending heartbeats "
                       "(created by `unetflow serve`).",
        "enabled": True,
        "trigger": {"type": "event", "posture": "Proactive", "after": ["prefect.flow-run.heartbeat"],
                    "expect": ["prefect.flow-run.heartbeat", *finals],
                    "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                    "for_each": ["prefect.resource.id"], "threshold": 1, "within": 3 * HEARTBEAT_SECONDS},
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED", "force": True,
                     "message": f"No heartbeat for {3 * HEARTBEAT_SECONDS} s: {CRASH_MESSAGE}"}],
    }


def ensure_zombie_automation(api_url: str) -> str:
    """Create the zombie-run automation unless one of that name exists; says which."""
    found = api(api_url, "POST", "/automations/filter", {"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}})
    if found:
        return f"automation {ZOMBIE_AUTOMATION!r} exists"
    api(api_url, "POST", "/automations/", zombie_automation())
    return f"automation {ZOMBIE_AUTOMATION!r} created (flow runs without heartbeat become Crashed)"
