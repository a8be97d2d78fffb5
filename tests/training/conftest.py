"""A small preprocessed project (synthetic cells → ingest → plan → npz), built with the plain task functions."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.config import Params, load_params
from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset

TINY = {
    "data": {"val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"features": [4, 8, 16]},
    "train": {"epochs": 2, "batch_size": 2, "overlay_every": 0, "num_threads": 1},
    "tracking": {"system_metrics": False},
}


def prepare_project(root: Path, settings: dict | None = None) -> Params:
    """Write tiny synthetic data and run the real ingest and preprocess flows on it."""
    from flows.ingest import ingest_flow
    from flows.preprocess import preprocess_flow

    (root / "params.yaml").write_text(yaml.safe_dump(settings or TINY))
    params = load_params(root / "params.yaml")
    write_synthetic_dataset(root / params.data.raw_dir,
                            SyntheticSpec(n_train=10, n_test=1, size=48, cells=(3, 6), radius=(4.0, 7.0)))
    ingest_flow(root=str(root))
    preprocess_flow(root=str(root))
    plan = json.loads((root / params.preprocess.output_dir / "plan.json").read_text())
    assert plan["spatial_dims"] == 2
    return params


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def preprocessed_project(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Iterator[tuple[Path, Params]]:
    """Ingested and preprocessed, not trained; built once per module and never written to by a test."""
    root = tmp_path_factory.mktemp("preprocessed") / "project"
    root.mkdir()
    params = prepare_project(root)
    before = _files(root)
    yield root, params
    assert _files(root) == before, "a test wrote into the shared preprocessed_project: give it preprocessed_copy"


@pytest.fixture
def preprocessed_copy(preprocessed_project: tuple[Path, Params], tmp_path: Path) -> tuple[Path, Params]:
    """This test's own copy of ``preprocessed_project``: training, resuming and tracking write into it."""
    template, _ = preprocessed_project
    root = tmp_path / "project"
    shutil.copytree(template, root)
    return root, load_params(root / "params.yaml")
