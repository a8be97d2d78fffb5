"""What every flow does first (resolve the project root, read the validated ``params.yaml``) and the
task runner a stage's ``runner`` / ``workers`` / ``dask_address`` keys ask for."""

from __future__ import annotations

from pathlib import Path

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.config import Params, load_params


def project(root: str | Path, params_file: str | None, overrides: list[str] | None) -> tuple[Path, Params]:
    """(absolute root, params); a relative ``params_file`` is read from the root."""
    root_path = Path(root).resolve()
    path = None if params_file is None else (root_path / params_file)
    return root_path, load_params(path, overrides or [])


def task_runner_for(runner: str, workers: int, dask_address: str | None) -> TaskRunner:
    """``threads``: ``workers`` threads here; ``dask``: the cluster at ``dask_address``, or ``workers``
    local processes (one thread each) when no address is given. Dask is the optional ``dask`` extra."""
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("runner: dask needs the dask extra (pip install 'unetflow[dask]')") from None
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})
