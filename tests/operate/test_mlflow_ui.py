"""`make mlflow-ui`: the MLflow UI on 127.0.0.1 over a project's store, where runs of different variants
sit side by side (same metric names, the variant as the `model.name` param, overlays as artifacts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.operate.helpers import TELEMETRY_OFF, free_port, port_open, stop_process_group, wait_http_ok


def two_variant_runs(root: Path) -> str:
    """A store like training leaves it: one run per variant, logged through the project's tracking setup."""
    import mlflow

    from tasks.config import TrackingConfig
    from tasks.tracking.store import configure_tracking

    experiment_id = configure_tracking(TrackingConfig(), root)
    for variant, dice in (("unet", 0.81), ("unetpp", 0.84)):
        with mlflow.start_run(run_name=variant):
            mlflow.log_params({"model.name": variant, "train.epochs": 2})
            mlflow.set_tag("variant", variant)
            for step, value in enumerate((dice - 0.1, dice)):
                mlflow.log_metric("val_dice", value, step=step)
            mlflow.log_metric("test_dice", dice)
            mlflow.log_text("overlay", "overlays/epoch_0001.txt")
    return experiment_id


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_make_mlflow_ui_serves_the_project_store(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = tmp_path / "project"
    root.mkdir()
    experiment_id = two_variant_runs(root)
    port = free_port()
    env = cli_env(tmp_path)
    env.update(TELEMETRY_OFF)
    # -o: never (re)run the setup step from a test; the venv this test runs in is the one to use.
    command = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.unetflow-installed", "mlflow-ui",
               f"MLFLOW_PORT={port}", f"MLFLOW_ROOT={root}"]
    log = tmp_path / "mlflow-ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/health", ui, timeout=150)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log.read_text()[-3000:]}") from None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        found = post_json(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [experiment_id]})["runs"]
        by_variant = {next(p["value"] for p in r["data"]["params"] if p["key"] == "model.name"): r for r in found}
        assert set(by_variant) == {"unet", "unetpp"}
        for run in by_variant.values():
            assert {m["key"] for m in run["data"]["metrics"]} == {"val_dice", "test_dice"}
            query = f"run_id={run['info']['run_id']}&path=overlays"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/artifacts/list?{query}",
                                        timeout=30) as listing:
                files = [f["path"] for f in json.loads(listing.read()).get("files", [])]
            assert files == ["overlays/epoch_0001.txt"]
    finally:
        stop_process_group(ui)
    assert not port_open(port)


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"\n### {title}\n" in text, f"README has no '### {title}' subsection"
    return text.split(f"\n### {title}\n", 1)[1].split("\n#", 1)[0]


def test_readme_says_where_to_click_with_the_labels_of_the_installed_mlflow_ui() -> None:
    """The walkthrough names buttons by their text; each must be a label the bundled UI really shows,
    so an MLflow upgrade that renames one fails here instead of misleading the reader."""
    import mlflow

    section = readme_section("Comparing runs in the MLflow UI")
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(path.read_text(encoding="utf-8", errors="replace") for path in build.glob("*.js"))
    for label in ("GenAI", "Model training", "Columns", "Chart view", "Table view", "Compare", "Artifacts",
                  "Models"):
        assert f"**{label}" in section or f"| {label}**" in section, label
        assert f'defaultMessage:"{label}"' in bundle, f"MLflow {mlflow.__version__}'s UI has no label {label!r}"
    for name in ("unetflow.model", "unetflow.dims", "unetflow.data_version", "unetflow.epochs", "best_val_dice",
                 "test_dice", "comparison.png", "champion", "make mlflow-ui"):
        assert name in section, name
