"""What ``--resume`` may change, and how a longer ``train.epochs`` continues the schedule.

A checkpoint stores the training parameters it was started with. Resuming continues the *same* run, so
anything that would make the remaining epochs a different experiment (optimizer, learning rate, loss,
batch, augmentation, the network...) is refused by name: MLflow would still show the old values and the
curve would mix two setups. Keys that only say where or how fast to run (device, threads, logging
cadence) may change.

``train.epochs`` may change, by one rule: the schedule is rebuilt for the new total and advanced to the
epoch reached, so every remaining epoch gets the learning rate a run planned with the new total from the
start would have had there (a finished poly schedule, at LR 0, restarts its decay from that point rather
than training ten epochs at 0). The change is kept as the tag ``unetflow.resumed_epochs`` (``2→12``;
MLflow params are immutable, so ``train.epochs`` keeps the value the run started with).

One run, one registered version: a resumed run whose version already exists updates that version's
weights in place rather than registering a second one, unless the version is the champion, whose
weights only a promotion may change.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tasks.config import Params, TrainConfig
from tasks.training.optim import make_scheduler

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from tasks.common.plan import Plan

RESUMED_EPOCHS_TAG = "unetflow.resumed_epochs"
# Where/how fast/how often to log: free to change on resume. train.epochs has its own rule (above).
FREE_KEYS = frozenset({"train.epochs", "train.output_dir", "train.device", "train.num_threads", "train.compile",
                       "train.overlay_every", "train.val_every", "train.early_stopping_patience",
                       "train.memory_budget_gb", "train.augment.loader_workers", "train.augment.loader_cache"})


class ResumeRefused(ValueError):
    """The checkpoint cannot be continued as the same run with these parameters."""


def training_params(params: Params, batch_size: int) -> dict[str, Any]:
    """The settings a checkpoint is tied to: every ``train.*`` and ``model.*`` key, and the batch trained with."""
    flat = {k: v for k, v in params.flat().items() if k.split(".", 1)[0] in ("train", "model")}
    return {**flat, "batch_size": batch_size}


def changed_keys(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (outside ``FREE_KEYS``) whose value differs between the checkpoint and now, sorted."""
    keys = (set(stored) | set(current)) - FREE_KEYS
    return sorted(k for k in keys if json.dumps(stored.get(k)) != json.dumps(current.get(k)))


def check_resumable(state: dict[str, Any], current: dict[str, Any], epochs: int, checkpoint: Path) -> int:
    """Refuse a resume that would not continue the same experiment; the epochs the checkpoint planned.

    Checkpoints written before the parameters were stored cannot be checked, so they are refused too
    rather than resumed blindly.
    """
    if "params" not in state:
        raise ResumeRefused(f"{checkpoint} does not record the parameters it was trained with: it cannot be "
                            f"resumed safely; train afresh (without --resume)")
    stored = json.loads(state["params"])
    changed = changed_keys(stored, current)
    if changed:
        details = ", ".join(f"{k} ({stored.get(k)!r} → {current.get(k)!r})" for k in changed)
        raise ResumeRefused(f"--resume continues the run in {checkpoint} as it was planned, but these settings "
                            f"changed since: {details}. Restore them, or train afresh without --resume")
    done = int(state["epoch"]) + 1
    if epochs <= done and epochs != int(state["epochs"]):
        raise ResumeRefused(f"train.epochs={epochs} but the checkpoint has already trained {done} epochs: "
                            f"nothing to resume")
    return int(state["epochs"])


def extend_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    start_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule for ``config.epochs`` in total, stepped to ``start_epoch`` exactly as a run planned with
    that total would have stepped it (the same recursive updates, so the same floats)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
        group.pop("initial_lr")
    scheduler = make_scheduler(optimizer, config)
    with warnings.catch_warnings():  # "step() before optimizer.step()": this is replay, not training
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            scheduler.step()
    return scheduler


def log_resumed_epochs(previous: int, epochs: int) -> None:
    """Append ``previous→epochs`` to the active run's ``unetflow.resumed_epochs`` tag (``2→12→20``)."""
    import mlflow

    if previous == epochs:
        return
    run = mlflow.active_run()
    history = mlflow.get_run(run.info.run_id).data.tags.get(RESUMED_EPOCHS_TAG) if run else None
    chain = f"{history}→{epochs}" if history and history.endswith(f"→{previous}") else f"{previous}→{epochs}"
    mlflow.set_tag(RESUMED_EPOCHS_TAG, chain)


def registered_version(model_name: str, run_id: str | None) -> ModelVersion | None:
    """The version ``model_name`` already holds for ``run_id`` (at most one: see the module docstring)."""
    from mlflow import MlflowClient

    if run_id is None:
        return None
    versions = MlflowClient().search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def check_version_updatable(model_name: str, run_id: str | None) -> None:
    """Refuse (before any training) to resume a run whose registered version is the champion."""
    from tasks.tracking.registry import CHAMPION_ALIAS

    version = registered_version(model_name, run_id)
    if version is not None and CHAMPION_ALIAS in (version.aliases or []):
        raise ResumeRefused(f"run {run_id} is registered as {model_name} version {version.version}, the "
                            f"{CHAMPION_ALIAS}: resuming would change the champion's weights without a promotion. "
                            f"Train afresh (without --resume); the new version competes with it")


def update_registered_weights(version: ModelVersion, model: nn.Module, plan: Plan, output_dir: Path) -> str:
    """Write ``model`` over the files of ``version``'s logged model (the run's one version); its URI.

    The weights are logged as the run's model as usual (not registered), then copied onto the version's
    model, so the version and the run's latest model hold the same files in whatever format the packager
    writes; the MLmodel is overwritten, so a loader follows the new files.
    """
    import tempfile

    import mlflow.artifacts
    from mlflow import MlflowClient

    from tasks.tracking.model_package import log_and_register
    from tasks.tracking.registry import CANDIDATE_ALIAS

    logged_uri, _ = log_and_register(model, plan, output_dir, None)
    client = MlflowClient()
    version = client.get_model_version(version.name, str(version.version))  # search leaves model_id empty
    model_id = version.model_id or str(version.source).removeprefix("models:/")
    with tempfile.TemporaryDirectory(prefix="unetflow-resume-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=logged_uri, dst_path=tmp)
        client.log_model_artifacts(model_id, local)
    client.set_registered_model_alias(version.name, CANDIDATE_ALIAS, str(version.version))
    client.set_model_version_tag(version.name, str(version.version), "unetflow.weights_updated_by_resume", "true")
    return f"models:/{model_id}"
