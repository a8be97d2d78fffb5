"""Shared fixtures: real Prefect (ephemeral), real MLflow SQLite stores, real dvc, in temp folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def cli_env(home: Path) -> dict[str, str]:
    """Environment for a `unetflow`/`dvc` subprocess: this venv first, Prefect state kept in ``home``."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(home / ".prefect")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], cwd: Path, home: Path, timeout: int = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=cli_env(home), capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder: the pipeline's files in a new git repo with DVC initialised."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("flows", "tasks", "monai_ext"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):  # the repository's own ignores
        shutil.copy(REPO / name, root / name)
    run(["git", "init", "-q"], root, tmp_path)
    run(["git", "config", "user.email", "ci@example.org"], root, tmp_path)
    run(["git", "config", "user.name", "ci"], root, tmp_path)
    run([str(BIN / "dvc"), "init", "-q"], root, tmp_path)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "dvc-remote")], root, tmp_path)
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (its own database) for every in-process flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    import flows  # noqa: F401  (telemetry off, startup timeout long enough for 2 cores)

    with prefect_test_harness(server_startup_timeout=180):
        yield
