"""`make serve` for real: a Prefect server on loopback, `prefect deploy --all` of prefect.yaml, a process
worker; both deployments triggered with `prefect deployment run`, their outputs checked; then the
ordered stop (worker before server), with the nightly schedule still active afterwards."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import nibabel as nib
import pytest
from mlflow import MlflowClient

from tests.conftest import BIN, REPO, cli_env
from tests.operate.helpers import TELEMETRY_OFF, free_port, port_open, stop_process_group, wait_ready

pytestmark = pytest.mark.slow

# One epoch serves the drill, not the hospital: the champion floor (tracking.min_test_score) is lowered so this
# tiny model still becomes the champion the batch job uses.
OVERRIDES = ["train.epochs=1", "model.features=[4,8,16]", "train.overlay_every=0", "train.batch_size=4",
             "tracking.system_metrics=false", "tracking.min_test_score=0"]


def deployment_run(project: Path, env: dict[str, str], name: str, *params: str) -> str:
    """`prefect deployment run NAME --param …` against the served API, waiting for a final state."""
    args = [str(BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-timeout", "240"]
    for param in params:
        args += ["--param", param]
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=300)
    output = done.stdout + done.stderr
    state = project / "outputs" / "serve"
    assert done.returncode == 0 and "Completed" in output, (
        f"{name} did not complete ({done.returncode}):\n{output[-3000:]}\n--- worker\n"
        f"{(state / 'worker.log').read_text()[-5000:]}")
    return output


def test_serve_deploy_run_both_deployments_and_stop(project: Path, tmp_path: Path) -> None:
    from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset

    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    write_synthetic_dataset(project / "data", SyntheticSpec(n_train=10, n_test=2, size=48, cells=(3, 6),
                                                            radius=(4.0, 7.0)))
    port = free_port()
    env = cli_env(tmp_path)  # PREFECT_HOME in tmp_path: the server's database is this test's own
    env.update(TELEMETRY_OFF)
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # pick runs up quickly (default 10 s)
    # No scheduler service: a test that happens to span 02:00 UTC must not get a nightly retrain too.
    # (The schedule is still stored and active; that is checked at the end.)
    env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    env.pop("PREFECT_API_URL", None)
    state = project / "outputs" / "serve"
    serve_log = tmp_path / "serve.out"
    started = time.monotonic()
    with serve_log.open("w") as out:
        serve = subprocess.Popen([str(BIN / "unetflow"), "serve", "--root", str(project), "--port", str(port),
                                  "--no-ui"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    stopped = False
    try:
        wait_ready(state, serve, serve_log, timeout=240)
        print(f"serve ready after {time.monotonic() - started:.0f} s")
        api = (state / "api_url").read_text().strip()
        assert api == f"http://127.0.0.1:{port}/api"

        client_env = {**env, "PREFECT_API_URL": api}

        # Retrain first: it trains, registers and promotes the champion the batch job then uses.
        output = deployment_run(project, client_env, "retrain/scheduled", f"overrides={json.dumps(OVERRIDES)}")
        assert "'overrides': ['train.epochs=1'" in output  # the JSON list arrived as a list
        train = json.loads((project / "outputs" / "model" / "train.json").read_text())
        client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
        champion = client.get_model_version_by_alias("unetflow-segmenter", "champion")
        assert champion.run_id == train["run_id"]
        assert json.loads((project / "outputs" / "metrics" / "test.json").read_text())["cases"] == 2

        inbox, outbox = tmp_path / "hospital" / "in", tmp_path / "hospital" / "out"
        inbox.mkdir(parents=True)
        for image in (project / "data" / "imagesTs").glob("*.nii.gz"):
            shutil.copy(image, inbox / image.name)
        deployment_run(project, client_env, "infer/hospital-batch", f"input={inbox}", f"output={outbox}")
        for image in sorted(inbox.glob("*_0000.nii.gz")):  # nnU-Net channel files: <case>_0000 → <case>
            mask = nib.load(str(outbox / image.name.replace("_0000.nii.gz", ".nii.gz")))
            assert mask.shape == nib.load(str(image)).shape
        assert (outbox / "summary.csv").exists()

        # Stop: `make serve-stop` runs this; the worker goes before the server.
        pids = {name: int((state / f"{name}.pid").read_text()) for name in ("worker", "server")}
        began = time.monotonic()
        done = subprocess.run([str(BIN / "unetflow"), "serve-stop", "--root", str(project)], cwd=project, env=env,
                              capture_output=True, text=True, timeout=150)
        took = time.monotonic() - began
        assert done.returncode == 0, done.stdout + done.stderr
        serve.wait(timeout=30)
        stopped = True
        assert took < 60, f"stopping took {took:.0f} s"
        text = serve_log.read_text()
        assert text.index("stopping worker") < text.index("worker stopped") < text.index("stopping server")
        for pid in pids.values():
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert not port_open(port)
    finally:
        if not stopped:
            subprocess.run([str(BIN / "unetflow"), "serve-stop", "--root", str(project)], cwd=project, env=env,
                           capture_output=True, timeout=150)
            stop_process_group(serve)

    # The schedule is still active and the deployment not paused (a worker never pauses them).
    with sqlite3.connect(tmp_path / ".prefect" / "prefect.db") as db:
        rows = db.execute("SELECT d.name, d.paused, s.active, s.schedule FROM deployment d "
                          "LEFT JOIN deployment_schedule s ON s.deployment_id = d.id").fetchall()
        limits = dict(db.execute('SELECT d.name, l."limit" FROM deployment d '
                                 "JOIN concurrency_limit_v2 l ON l.id = d.concurrency_limit_id").fetchall())
    schedules = {name: (paused, active, json.loads(schedule) if schedule else None)
                 for name, paused, active, schedule in rows}
    assert schedules["scheduled"][:2] == (0, 1)
    assert schedules["scheduled"][2]["cron"] == "0 2 * * *" and schedules["scheduled"][2]["timezone"]
    assert schedules["hospital-batch"][0] == 0
    assert limits == {"scheduled": 1, "pacs-sync": 1}  # at most one retrain, one PACS sync at a time
