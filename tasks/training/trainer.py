"""Train: execute the plan — build the network, fit it, track everything in MLflow.

``train_model`` is a plain function (the Prefect flows only call it). It checkpoints every epoch
atomically (model, optimizer, scheduler, AMP scaler, RNG state, history and the MLflow run ID), so
a killed run resumes into the *same* MLflow run; it keeps the weights with the best validation
Dice and logs them as the run's model, registered with the alias ``candidate``.

On CUDA it trains with mixed precision, channels-last memory (2D) and, if asked, ``torch.compile``;
on CPU the same loop runs in float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.atomic import write_json
from tasks.config import Params
from tasks.tracking.model_package import PLAN_FILE, build_model, load_checkpoint, save_checkpoint
from tasks.training.checkpoint import rng_state, seed_everything, set_rng_state
from tasks.training.data_loader import load_cases, training_loader
from tasks.training.epochs import run_epoch, validate
from tasks.training.optim import count_parameters, make_loss, make_optimizer, make_scheduler, peak_memory_mb

log = logging.getLogger("unetflow.train")

CANDIDATE_ALIAS = "candidate"


@dataclass
class TrainResult:
    run_id: str
    model_uri: str | None
    registered_version: str | None
    best_val_dice: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    checkpoint: str
    seconds_per_epoch: float
    parameters: int
    peak_memory_mb: float
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeRemainingColumn(), disable=not sys.stderr.isatty(), transient=True)


def train_model(params: Params, root: Path, resume: bool = False, *, output_dir: Path | None = None,
                register: bool = True, run_name: str | None = None, nested: bool = False,
                extra_tags: dict[str, str] | None = None) -> TrainResult | None:
    """Train per ``params`` on the preprocessed plan under ``root``; see the module docstring.

    Under ``torchrun`` every process trains its shard of the cases; rank 0 alone tracks, validates,
    checkpoints and returns the result (other ranks return None).
    """
    import mlflow

    from tasks.tracking.artifacts import log_learning_curve, log_overlays, tracking_tags
    from tasks.tracking.store import configure_tracking
    from tasks.training.distributed import DistributedContext

    config = params.train
    ctx = DistributedContext.from_env()
    main = ctx.is_main
    preprocessed = root / params.preprocess.output_dir
    output_dir = output_dir or root / config.output_dir
    checkpoint_path = output_dir / "checkpoint.pt"
    plan = json.loads((preprocessed / PLAN_FILE).read_text(encoding="utf-8"))
    plan["network"] = {"name": params.model.name, "features": list(params.model.features),
                       "norm": params.model.norm, **params.model.options}
    if main:
        configure_tracking(params.tracking, root)  # fails here, before any training, if misconfigured

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = ctx.device(pick_device(config.device))
    ctx.start(device)
    seed_everything(config.seed + ctx.rank)  # DDP copies rank 0's initial weights; augmentations differ
    model = build_model(plan).to(device)
    if device.type == "cuda" and plan["spatial_dims"] == 2:
        model = model.to(memory_format=torch.channels_last)
    if ctx.enabled and device.type == "cuda":  # SyncBatchNorm runs on GPUs only; with gloo, BN stays per process
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    loss_fn = make_loss(params)

    start_epoch, run_id, history = 0, None, []
    best: dict[str, Any] = {"dice": -1.0, "state": None, "epoch": -1}
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if not ctx.enabled:
            set_rng_state(state["rng"])
        start_epoch, run_id, history = state["epoch"] + 1, state["run_id"], state["history"]
        best = {"dice": state["best_dice"], "state": state["best_model"], "epoch": state["best_epoch"]}
        log.info("resuming MLflow run %s at epoch %d of %d", run_id, start_epoch + 1, config.epochs)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting a new run", checkpoint_path)
    wrapped = ctx.wrap(model, device)
    forward = torch.compile(wrapped) if config.compile and device.type == "cuda" else wrapped

    train_items = ctx.shard(load_cases(preprocessed, plan["split"]["train"]))
    val_items = load_cases(preprocessed, plan["split"]["val"]) if main else []
    loader = training_loader(train_items, plan, config.batch_size, params.train.augment)
    use_weights = bool(plan.get("weight_maps"))
    stopped_early, epoch_seconds = False, []

    tracking = (mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested,
                                 log_system_metrics=params.tracking.system_metrics)
                if main else contextlib.nullcontext())
    with tracking as run:
        if main and run_id is None:
            mlflow.log_params(params.flat())
            mlflow.set_tags({**tracking_tags(params, root), **(extra_tags or {})})
            mlflow.log_params({"model.parameters": count_parameters(model), "device": str(device),
                               "world_size": ctx.world_size})
            mlflow.log_dict(plan, "plan.json")
            config_file = root / "params.yaml"
            mlflow.log_text(config_file.read_text(encoding="utf-8") if config_file.exists() else "", "params.yaml")
            mlflow.log_dict(params.model_dump(mode="json"), "resolved_params.json")
        with _progress() as progress:
            bar = progress.add_task("train", total=config.epochs, completed=start_epoch, status="")
            for epoch in range(start_epoch, config.epochs):
                started = time.perf_counter()
                train_loss = run_epoch(forward, loader, loss_fn, optimizer, scaler, device, config, use_weights)
                scheduler.step()
                if not main:
                    if ctx.broadcast(None):
                        break
                    continue
                metrics = {"train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"]}
                validated = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
                if validated:
                    metrics |= validate(model, val_items, plan, device)
                    if metrics["val_dice"] > best["dice"]:
                        best = {"dice": metrics["val_dice"], "epoch": epoch,
                                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                metrics["epoch_seconds"] = time.perf_counter() - started
                epoch_seconds.append(metrics["epoch_seconds"])
                mlflow.log_metrics(metrics, step=epoch)
                history.append({"epoch": epoch, **metrics})
                if config.overlay_every and (epoch + 1) % config.overlay_every == 0:
                    log_overlays(model, val_items[:4], plan, prefix=f"overlays/epoch_{epoch + 1:03d}")
                log.info("epoch %d/%d loss %.4f val Dice %s", epoch + 1, config.epochs, train_loss,
                         f"{metrics['val_dice']:.4f}" if "val_dice" in metrics else "-")
                progress.update(bar, advance=1, status=f"loss {train_loss:.3f} Dice {best['dice']:.3f}")
                save_checkpoint(checkpoint_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "epoch": epoch, "run_id": run.info.run_id, "history": history, "plan": plan,
                    "best_dice": best["dice"], "best_model": best["state"], "best_epoch": best["epoch"],
                })
                patience = config.early_stopping_patience
                stopped_early = bool(validated and patience and epoch - best["epoch"] >= patience * config.val_every)
                if ctx.broadcast(stopped_early):
                    log.info("early stop: no better validation Dice for %d epochs", epoch - best["epoch"])
                    break
        if not main:
            ctx.stop()
            return None

        # A plain copy of the network (no DDP/SyncBatchNorm wrappers) with the best weights.
        final = build_model(plan)
        final.load_state_dict(best["state"] if best["state"] is not None else
                              {k: v.cpu() for k, v in model.state_dict().items()})
        final.eval()
        save_checkpoint(output_dir / "model.pt", {"model": final.state_dict(), "plan": plan})
        memory = peak_memory_mb(device)
        mlflow.log_metrics({"best_val_dice": best["dice"], "best_epoch": best["epoch"], "peak_memory_mb": memory})
        log_learning_curve(history)
        log_overlays(final, val_items[:4], plan)
        model_uri, version = log_and_register(final, plan, params, output_dir, register)
        result = TrainResult(
            run_id=run.info.run_id, model_uri=model_uri, registered_version=version, best_val_dice=best["dice"],
            best_epoch=best["epoch"], epochs_run=len(history), stopped_early=stopped_early,
            checkpoint=str(output_dir / "model.pt"),
            seconds_per_epoch=float(np.mean(epoch_seconds)) if epoch_seconds else math.nan,
            parameters=count_parameters(final), peak_memory_mb=memory, history=history)
    write_json(output_dir / "train.json", {k: v for k, v in asdict(result).items() if k != "history"})
    ctx.stop()
    return result


def log_and_register(model: nn.Module, plan: dict, params: Params, output_dir: Path,
                     register: bool = True) -> tuple[str, str | None]:
    """Log the model pickled (any input size works), with its plan; register it as ``candidate``."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    plan_file = output_dir / PLAN_FILE
    write_json(plan_file, plan)
    example = np.zeros((1, plan["in_channels"], *plan["patch_size"]), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", extra_files=[str(plan_file)],
        input_example=example, registered_model_name=params.tracking.model_name if register else None,
        pip_requirements=["torch", "monai", "unetflow"],
    )
    version = getattr(info, "registered_model_version", None) if register else None
    if version is not None:
        MlflowClient().set_registered_model_alias(params.tracking.model_name, CANDIDATE_ALIAS, str(version))
    return info.model_uri, None if version is None else str(version)
