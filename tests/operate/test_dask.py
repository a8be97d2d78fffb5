"""Scale-out on Dask: preprocess and batch inference with Prefect's DaskTaskRunner against a
dask.distributed cluster given by address (a 2-worker LocalCluster here; a real cluster in production
is the same code with `infer.dask_address: tcp://scheduler:8786`)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


def test_preprocess_and_batch_inference_on_a_two_worker_local_cluster(tmp_path: Path, prefect_harness) -> None:
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("prefect_dask")
    from flows.infer import infer_flow
    from flows.ingest import ingest_flow
    from flows.preprocess import preprocess_flow
    from tasks.common.plan import Plan, build_model
    from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset
    from tasks.tracking.model_package import save_checkpoint

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_synthetic_dataset(root / "data", SyntheticSpec(n_train=6, n_test=3, size=40, cells=(3, 5),
                                                         radius=(4.0, 6.0)))
    ingest_flow(root=str(root))

    # Threads in this process (processes=False): two real Dask workers behind a real scheduler, without
    # two more interpreters importing torch on a 2-core machine.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, distributed.Client(cluster) as client:
        address = cluster.scheduler_address
        with distributed.get_task_stream(client) as stream:
            pre = preprocess_flow(root=str(root), overrides=["preprocess.runner=dask",
                                                             f"preprocess.dask_address={address}"])
        assert pre["cases"] == 6
        # (Dask keys are the task functions' names plus a hash)
        ran = [str(t["key"]).rsplit("-", 1)[0] for t in stream.data]
        assert ran.count("preprocess_case") == 6 and ran.count("case_intensity_sample") >= 1, ran

        plan = Plan.read(root / "outputs" / "preprocessed" / "plan.json")
        torch.manual_seed(0)
        save_checkpoint(root / "model.pt", {"model": build_model(plan).state_dict(), "plan": plan.to_json()})
        with distributed.get_task_stream(client) as stream:
            result = infer_flow(root=str(root), model=str(root / "model.pt"), input="data/imagesTs",
                                output="predictions",
                                overrides=["infer.runner=dask", f"infer.dask_address={address}", "infer.device=cpu",
                                           "tracking.system_metrics=false"])
        # one task per study ran on the cluster's workers
        assert len(stream.data) >= 3, [t["key"] for t in stream.data]
        assert {t["worker"] for t in stream.data} <= set(cluster.scheduler.workers)

    assert (result["done"], result["failed"], result["skipped"]) == (3, 0, 0)
    rows = list(csv.DictReader((root / "predictions" / "summary.csv").open()))
    assert len(rows) == 3 and all(Path(root / "predictions" / f"{r['case_id']}.nii.gz").exists() for r in rows)
