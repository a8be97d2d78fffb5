"""A small preprocessed project (synthetic cells → ingest → plan → npz), built with the plain task functions."""

from __future__ import annotations

import json
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


@pytest.fixture
def trained_project(tmp_path: Path, prefect_harness) -> tuple[Path, Params]:
    root = tmp_path / "project"
    root.mkdir()
    return root, prepare_project(root)
