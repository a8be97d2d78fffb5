"""train: fit the planned network, tracked in MLflow, registered with alias ``candidate``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.training.distributed import launch
from tasks.training.trainer import train_model

train_task = task(train_model, name="train-model", cache_policy=NO_CACHE)
train_distributed_task = task(launch, name="train-model-torchrun", cache_policy=NO_CACHE)


@flow(name="train", log_prints=True)
def train_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
               resume: bool = False, nproc: int = 1) -> dict:
    """``nproc`` > 1 trains with DDP in that many ``torchrun`` processes (GPUs, or CPU cores with gloo)."""
    root_path, params = project(root, params_file, overrides)
    if nproc > 1:
        result = train_distributed_task(nproc, root_path, params_file, overrides or [], resume)
    else:
        params_path = None if params_file is None else root_path / params_file
        trained = train_task(params, root_path, resume, params_file=params_path)
        result = {k: v for k, v in asdict(trained).items() if k != "history"}
    print(f"train: run {result['run_id']}, best val Dice {result['best_val_dice']:.4f}, "
          f"model version {result['registered_version']} (alias candidate)")
    return result
