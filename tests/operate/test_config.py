"""Fast checks of what operators rely on: prefect.yaml's deployments fit the flows, and the Makefile's
operate targets run `unetflow serve` and the MLflow UI on loopback; `unetflow serve`/`serve-stop` refuse or
no-op without a server."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import time
from importlib import import_module

import pytest
import yaml

from tasks.config import load_params
from tests.conftest import BIN, REPO


def deployments() -> dict[str, dict]:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in config["deployments"]}


def flow_of(entrypoint: str):  # noqa: ANN201
    path, name = entrypoint.split(":")
    return getattr(import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_prefect_yaml_deployments_match_the_flows() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (pull,) = config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $UNETFLOW_ROOT }}"
    found = deployments()
    assert set(found) == {"scheduled", "hospital-batch", "pacs-sync"}
    for deployment in found.values():
        flow = flow_of(deployment["entrypoint"])
        assert set(deployment["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        assert deployment["work_pool"]["name"] == "unetflow"
    assert flow_of(found["scheduled"]["entrypoint"]).name == "retrain"
    assert flow_of(found["hospital-batch"]["entrypoint"]).name == "infer"

    scheduled = found["scheduled"]
    (schedule,) = scheduled["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] and schedule["active"] is True
    assert scheduled["concurrency_limit"]["limit"] == 1  # at most one retrain at a time…
    assert scheduled["concurrency_limit"]["collision_strategy"] == "ENQUEUE"  # …and none dropped
    batch = found["hospital-batch"]
    assert {"input", "output"} <= set(batch["parameters"])
    assert "schedules" not in batch
    sync = found["pacs-sync"]
    assert flow_of(sync["entrypoint"]).name == "pacs-sync"
    (every,) = sync["schedules"]
    assert every["interval"] == 900  # every 15 minutes, paused until a PACS is configured
    assert sync["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}  # never two at once
    # a date window, valid on top of the repository's params.yaml: a run never scans the whole PACS
    params = load_params(REPO / "params.yaml", sync["parameters"]["overrides"])
    assert params.pacs.recent_days == 2 and params.pacs.study_date is None


def test_make_targets_serve_on_loopback() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "-o", ".venv/.unetflow-installed",
                          "serve", "serve-stop", "mlflow-ui", "PREFECT_PORT=4999", "MLFLOW_PORT=5999"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout
    assert f"unetflow serve --root {REPO} --port 4999" in lines
    assert f"unetflow serve-stop --root {REPO}" in lines
    assert "mlflow ui --backend-store-uri sqlite:///" in lines and "--host 127.0.0.1 --port 5999" in lines
    assert "MLFLOW_DISABLE_TELEMETRY=true" in lines


def test_serve_stop_with_nothing_running_is_a_no_op(tmp_path) -> None:
    done = subprocess.run([str(BIN / "unetflow"), "serve-stop", "--root", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "nothing left running" in done.stdout, done.stdout + done.stderr


def test_serve_start_refuses_a_busy_port(tmp_path) -> None:
    import socket

    shutil.copy(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run([str(BIN / "unetflow"), "serve", "--root", str(tmp_path), "--port", str(port)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"port {port}" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "outputs" / "serve" / "serve.pid").exists()


@pytest.mark.parametrize(("command", "expected"), [("serve", True), ("serve-stop", False), ("demo", False)])
def test_only_unetflow_serve_counts_as_the_supervisor(command: str, expected: bool) -> None:
    from tasks.serving.processes import command_line, is_supervisor

    # A stand-in whose command line reads like `…/bin/unetflow COMMAND --root /x` (the pid in serve.pid).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(BIN / "unetflow"), command,
                                "--root", "/x"])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its cmdline is ours until then)
        while "time.sleep(60)" not in command_line(sleeper.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert is_supervisor(sleeper.pid) is expected
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not is_supervisor(sleeper.pid)
