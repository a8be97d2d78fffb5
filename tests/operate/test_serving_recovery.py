"""The pieces of crash-safe serving, each on its own and fast: the port probe against TIME_WAIT, the
reconciliation of runs left active (real Prefect API of the test harness), the worker keeper, and
``serve-stop`` finding a flow run that left the worker's process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.serving.processes import MARK_VAR, alive, mark, port_free, stop_components


def sleeper(env: dict[str, str] | None = None, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env,
                            start_new_session=new_session)


def marked_env(root: Path, role: str) -> dict[str, str]:
    return {**os.environ, MARK_VAR: mark(root, role)}


def test_port_probe_ignores_time_wait_connections() -> None:
    """A stopped server's connections in TIME_WAIT do not make the port look busy (uvicorn can bind)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end (port `port`) goes to TIME_WAIT
        time.sleep(0.1)
        client.close()
    time.sleep(0.1)
    with socket.socket() as plain:  # the situation of the drill: a bind without SO_REUSEADDR fails
        try:
            plain.bind(("127.0.0.1", port))
        except OSError:
            pass
        else:
            pytest.skip("this kernel let a plain bind through despite TIME_WAIT")
    assert port_free("127.0.0.1", port)
    with socket.socket() as busy:  # a listening server still counts as busy
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert not port_free("127.0.0.1", busy.getsockname()[1])


def test_serve_stop_finds_a_flow_run_that_left_the_workers_group(tmp_path: Path) -> None:
    """Prefect starts each flow run in a session of its own: the mark, not the group, finds it."""
    state = tmp_path / "outputs" / "serve"
    state.mkdir(parents=True)
    orphan = sleeper(marked_env(tmp_path, "worker"), new_session=True)
    stranger = sleeper(marked_env(tmp_path / "other", "worker"), new_session=True)
    try:
        time.sleep(0.3)
        stopped = stop_components(state, tmp_path)
        assert any(str(orphan.pid) in line for line in stopped), stopped
        orphan.wait(timeout=10)
        assert not alive(orphan.pid)
        assert stranger.poll() is None  # another project's processes are left alone
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()


def test_keeper_restarts_a_killed_worker_and_the_server_stays(tmp_path: Path) -> None:
    from tasks.serving.keeper import WorkerKeeper
    from tasks.serving.supervisor import watch

    started: list[subprocess.Popen] = []
    recovered: list[int] = []

    def start() -> subprocess.Popen:
        started.append(sleeper())
        return started[-1]

    keeper = WorkerKeeper(start=start, recover=lambda: recovered.append(1), max_restarts=2, window=60)
    keeper.launch()
    server = sleeper()
    stopping: list[int] = []
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(watch(server, keeper, tmp_path, stopping)))
    thread.start()
    try:
        os.kill(started[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(started) == 2 and recovered == [1]
        assert server.poll() is None and started[1].poll() is None
        stopping.append(signal.SIGTERM)
        thread.join(timeout=10)
        assert result == [0]
        keeper.process.kill()  # second death: the second (and last) restart within the window
        keeper.process.wait()
        assert keeper.check() is True
        keeper.process.kill()  # third death within the window: it gives up
        keeper.process.wait()
        assert keeper.check() is False
        assert len(started) == 3
    finally:
        stopping.append(signal.SIGTERM)
        thread.join(timeout=10)
        for process in (*started, server):
            process.kill()
            process.wait()


def make_running_run(client, deployment_id, pid: int):
    from prefect.states import Pending, Running

    run = client.create_flow_run_from_deployment(deployment_id)
    assert client.set_flow_run_state(run.id, Pending()).status.value == "ACCEPT"
    assert client.set_flow_run_state(run.id, Running()).status.value == "ACCEPT"
    client.update_flow_run(run.id, infrastructure_pid=str(pid))
    return run


def test_reconcile_crashes_runs_without_process_and_frees_the_slot(prefect_harness, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    from tasks.serving.recovery import api, reconcile

    api_url = PREFECT_API_URL.value()
    pool = f"pool-{os.getpid()}-{time.monotonic_ns()}"
    lines: list[str] = []
    live = sleeper(marked_env(tmp_path, "worker"))
    dead = sleeper()
    dead.kill()
    dead.wait()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow(flow(lambda: None, name=f"drill-{pool}"))
        deployment_id = client.create_deployment(flow_id, "scheduled", work_pool_name=pool, concurrency_limit=1)
        other = client.create_deployment(flow_id, "other", work_pool_name=pool)
        stale = make_running_run(client, deployment_id, dead.pid)
        alive_run = make_running_run(client, other, live.pid)
        limit_id = client.read_deployment(deployment_id).global_concurrency_limit.id
        assert api(api_url, "GET", f"/v2/concurrency_limits/{limit_id}")["active_slots"] == 1
        try:
            crashed = reconcile(api_url, pool, mark(tmp_path, "worker"), lines.append)
            assert crashed == [str(stale.id)]
            assert client.read_flow_run(stale.id).state.type.value == "CRASHED"
            assert client.read_flow_run(alive_run.id).state.type.value == "RUNNING"
            assert any(str(stale.id) in line and stale.name in line for line in lines), lines
            assert api(api_url, "GET", f"/v2/concurrency_limits/{limit_id}")["active_slots"] == 0

            # A slot still counted with no run holding it (its lease was lost with a server restart).
            api(api_url, "PATCH", f"/v2/concurrency_limits/{limit_id}", {"active_slots": 1})
            lines.clear()
            assert reconcile(api_url, pool, mark(tmp_path, "worker"), lines.append) == []
            assert api(api_url, "GET", f"/v2/concurrency_limits/{limit_id}")["active_slots"] == 0
            assert any("freed 1 concurrency slot" in line for line in lines), lines
        finally:
            live.kill()
            live.wait()


def test_zombie_automation_is_created_once(prefect_harness) -> None:
    from prefect.settings import PREFECT_API_URL

    from tasks.serving.recovery import ZOMBIE_AUTOMATION, api, ensure_zombie_automation

    api_url = PREFECT_API_URL.value()
    first, second = ensure_zombie_automation(api_url), ensure_zombie_automation(api_url)
    assert "created" in first or "exists" in first
    assert "exists" in second
    found = api(api_url, "POST", "/automations/filter", {"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}})
    assert len(found) == 1
    trigger, action = found[0]["trigger"], found[0]["actions"][0]
    assert trigger["posture"] == "Proactive" and trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert action["type"] == "change-flow-run-state" and action["state"] == "CRASHED"
