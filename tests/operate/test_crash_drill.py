"""The operator's failure drill, for real: `unetflow serve` on loopback, a retrain triggered, its worker
killed with SIGKILL while it trains; then the recovery of the README (`serve-stop`, `serve` at once, on
the same port). The killed run and its train sub-run must end `Crashed`, no process of theirs may
survive `serve-stop`, and a new retrain must get the deployment's only concurrency slot and complete,
with no hand-made API call."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.serving.processes import alive, mark, marked_pids
from tasks.serving.recovery import api
from tests.conftest import BIN, REPO, cli_env
from tests.operate.helpers import free_port, serve_env, start_serving, stop_process_group, wait_ready

pytestmark = pytest.mark.slow

TINY = ["model.features=[4,8,16]", "train.overlay_every=0", "train.batch_size=4", "tracking.system_metrics=false"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def trigger(api_url: str, overrides: list[str]) -> dict[str, Any]:
    deployment = api(api_url, "GET", "/deployments/name/retrain/scheduled")
    return api(api_url, "POST", f"/deployments/{deployment['id']}/create_flow_run",
               {"parameters": {"overrides": overrides}})


def wait_for(what: str, check, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout:.0f} s\n"
                         + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists()))


def running_train_run(api_url: str) -> dict[str, Any] | None:
    body = {"flows": {"name": {"any_": ["train"]}}, "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
    found = api(api_url, "POST", "/flow_runs/filter", body)
    return found[0] if found else None


def final_state(api_url: str, run_id: str) -> str | None:
    state = api(api_url, "GET", f"/flow_runs/{run_id}")["state_type"]
    return state if state in FINAL else None


def serve_stop(project: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "unetflow"), "serve-stop", "--root", str(project)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_worker_killed_during_retrain_then_serve_stop_and_serve(project: Path, tmp_path: Path) -> None:
    from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset

    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    write_synthetic_dataset(project / "data", SyntheticSpec(n_train=6, n_test=2, size=32, cells=(2, 4),
                                                            radius=(3.0, 5.0)))
    port, env = free_port(), serve_env(cli_env(tmp_path))
    state, serve_log = project / "outputs" / "serve", tmp_path / "serve.out"
    logs = [serve_log, state / "worker.log", state / "server.log"]
    serve = start_serving(BIN / "unetflow", project, port, env, serve_log)
    try:
        wait_ready(state, serve, serve_log, timeout=240)
        api_url = (state / "api_url").read_text().strip()

        # A retrain long enough to be killed while it trains.
        killed = trigger(api_url, ["train.epochs=500", *TINY])
        train = wait_for("running train sub-flow", lambda: running_train_run(api_url), 240, logs)
        worker = int((state / "worker.pid").read_text())
        flow_run_pids = [pid for pid in marked_pids(mark(project, "worker")) if pid != worker]
        assert flow_run_pids, "no flow-run process carries the worker's mark"
        os.kill(worker, signal.SIGKILL)

        # The supervisor keeps the server, stops the orphans, crashes the runs, restarts the worker.
        for run_id in (killed["id"], train["id"]):
            assert wait_for("final state", lambda r=run_id: final_state(api_url, r), 90, logs) == "CRASHED"
        wait_for("worker restart", lambda: "worker restarted" in serve_log.read_text(), 60, logs)
        assert serve.poll() is None

        # The README's recovery: serve-stop, then serve again at once on the same port.
        stopped = serve_stop(project, env)
        serve.wait(timeout=60)
        assert "stopped" in stopped
        assert not [pid for pid in flow_run_pids if alive(pid)], "a flow-run process survived serve-stop"
        assert not marked_pids(mark(project, "worker")) and not marked_pids(mark(project, "server"))
        serve = start_serving(BIN / "unetflow", project, port, env, serve_log)
        wait_ready(state, serve, serve_log, timeout=240)

        # A new retrain gets the only slot and completes, without any manual API call.
        fresh = trigger(api_url, ["train.epochs=1", *TINY])
        assert wait_for("completed retrain", lambda: final_state(api_url, fresh["id"]), 300, logs) == "COMPLETED"
        assert api(api_url, "GET", f"/flow_runs/{killed['id']}")["state_type"] == "CRASHED"
        serve_stop(project, env)
        serve.wait(timeout=60)
    finally:
        if serve.poll() is None:
            subprocess.run([str(BIN / "unetflow"), "serve-stop", "--root", str(project)], cwd=project, env=env,
                           capture_output=True, timeout=150)
            stop_process_group(serve)
