"""train: fit the planned network, tracked in MLflow, registered with alias ``candidate``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.train import train_model

train_task = task(train_model, name="train-model", cache_policy=NO_CACHE)


@flow(name="train", log_prints=True)
def train_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
               resume: bool = False) -> dict:
    root_path, params = project(root, params_file, overrides)
    result = train_task(params, root_path, resume)
    print(f"train: run {result.run_id}, best val Dice {result.best_val_dice:.4f}, "
          f"model version {result.registered_version} (alias candidate)")
    return asdict(result)
