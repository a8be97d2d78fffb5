"""train: fit the planned network as a candidate, tracked in MLflow, registered with alias ``candidate``.

The training runs in ``outputs/candidates/training`` (what ``--resume`` continues) and the registered
version N is kept in ``outputs/candidates/vN``. Then, unless ``promote`` is off (``retrain`` scores and
promotes itself), the candidate is scored on the test set and promoted by the same rule as ``retrain``:
only a promoted model's files replace the champion's in ``outputs/model`` and ``outputs/metrics``. So
``unetflow train`` (the DVC ``train`` stage) and the scheduled retrain leave the same folders behind.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.tracking.published import keep_version, promote_candidate, promotion_score, training_dir
from tasks.training.distributed import launch
from tasks.training.trainer import train_model

train_task = task(train_model, name="train-model", cache_policy=NO_CACHE)
train_distributed_task = task(launch, name="train-model-torchrun", cache_policy=NO_CACHE)


@flow(name="train", log_prints=True)
def train_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
               resume: bool = False, nproc: int = 1, promote: bool = True) -> dict:
    """``nproc`` > 1 trains with DDP in that many ``torchrun`` processes (GPUs, or CPU cores with gloo)."""
    root_path, params = project(root, params_file, overrides)
    scratch = training_dir(params, root_path)
    # every process (torchrun's too) trains into the candidates' folder, never the champion's
    where = scratch.relative_to(root_path).as_posix() if scratch.is_relative_to(root_path) else str(scratch)
    training_overrides = [*(overrides or []), f"train.output_dir={where}"]
    _, training = project(root, params_file, training_overrides)
    if nproc > 1:
        result = train_distributed_task(nproc, root_path, params_file, training_overrides, resume)
    else:
        params_path = None if params_file is None else root_path / params_file
        trained = train_task(training, root_path, resume, params_file=params_path)
        result = {k: v for k, v in asdict(trained).items() if k != "history"}
    version = result["registered_version"]
    result["version_dir"] = str(keep_version(params, root_path, scratch, version))
    print(f"train: run {result['run_id']}, best val Dice {result['best_val_dice']:.4f}, "
          f"model version {version} (alias candidate) in {result['version_dir']}")
    if promote:
        from flows.evaluate import evaluate_flow

        evaluated = evaluate_flow(root=root, params_file=params_file, overrides=overrides, version=version)
        decision = promote_candidate(params, root_path, version, result["run_id"],
                                     promotion_score(params, evaluated))  # tracking.promote_on's value
        print(f"train: version {version} {'promoted to champion' if decision.promoted else 'not promoted'}"
              f" ({decision.reason})")
        result |= {"test_dice": evaluated["test_dice"], "promoted": decision.promoted, "reason": decision.reason}
    return result
