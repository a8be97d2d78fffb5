"""Train: execute the plan — build the network, fit it, track everything in MLflow.

``train_model`` is a plain function (the Prefect flow only calls it). It checkpoints every epoch
atomically (model, optimizer, scheduler, AMP scaler, RNG state and the MLflow run ID), so a killed
run resumes into the *same* MLflow run; it keeps the weights with the best validation Dice and
logs them as the run's model, registered with the alias ``candidate``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.atomic import write_json
from tasks.config import Params
from tasks.data import load_cases, training_loader
from tasks.inference import dice_per_class, predict_labels
from tasks.model_package import PLAN_FILE, build_model, load_checkpoint, save_checkpoint

log = logging.getLogger("unetflow.train")

CANDIDATE_ALIAS = "candidate"


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: str | None
    best_val_dice: float
    epochs: int
    checkpoint: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_loss(params: Params) -> Any:
    from monai_ext.losses import build_loss

    return build_loss(params.train.loss, **params.train.loss_options)


def validate(model: nn.Module, items: list[dict], plan: dict, device: torch.device) -> dict[str, float]:
    scores: dict[int, list[float]] = {}
    for item in items:
        prediction = predict_labels(model, item["image"], tuple(plan["patch_size"]), device=device)
        for cls, score in dice_per_class(prediction, item["label"][0], plan["num_classes"]).items():
            scores.setdefault(cls, []).append(score)
    metrics = {f"val_dice_{cls}": float(np.mean(values)) for cls, values in scores.items()}
    metrics["val_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    return metrics


def train_model(params: Params, root: Path, resume: bool = False) -> TrainResult:
    import mlflow

    from tasks.tracking import configure_tracking
    from tasks.tracking_artifacts import log_learning_curve, log_overlays, tracking_tags

    preprocessed = root / params.preprocess.output_dir
    output_dir = root / params.train.output_dir
    checkpoint_path = output_dir / "checkpoint.pt"
    plan = json.loads((preprocessed / PLAN_FILE).read_text())
    configure_tracking(params.tracking, root)  # fails here, before any training, if misconfigured

    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    device = pick_device(params.train.device)
    seed_everything(params.train.seed)
    model = build_model(plan).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last) if plan["spatial_dims"] == 2 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=params.train.learning_rate, momentum=0.99,
                                nesterov=True, weight_decay=params.train.weight_decay)
    epochs = params.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 - e / epochs) ** 0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = make_loss(params)

    start_epoch, run_id, history, best = 0, None, [], {"dice": -1.0, "state": None, "epoch": -1}
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, run_id, history = state["epoch"] + 1, state["run_id"], state["history"]
        best = {"dice": state["best_dice"], "state": state["best_model"], "epoch": state["best_epoch"]}
        log.info("resuming run %s at epoch %d", run_id, start_epoch)

    train_items = load_cases(preprocessed, plan["split"]["train"])
    val_items = load_cases(preprocessed, plan["split"]["val"])
    loader = training_loader(train_items, plan, params.train.batch_size, params.train.augment)
    use_weights = bool(plan.get("weight_maps"))

    with mlflow.start_run(run_id=run_id) as run:
        if run_id is None:
            mlflow.log_params(params.flat())
            mlflow.set_tags(tracking_tags(params, root))
            mlflow.log_dict(plan, "plan.json")
            mlflow.log_text((root / "params.yaml").read_text() if (root / "params.yaml").exists()
                            else "", "params.yaml")
        for epoch in range(start_epoch, epochs):
            model.train()
            started, losses = time.perf_counter(), []
            for batch in loader:
                image = batch["image"].to(device, non_blocking=True)
                label = batch["label"].to(device, non_blocking=True).long()
                weight = batch["weight"].to(device) if use_weights else None
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=device.type == "cuda"):
                    output = model(image)
                loss = loss_fn(output, label, weight)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            scheduler.step()
            metrics = {"train_loss": float(np.mean(losses)) if losses else math.nan,
                       "lr": optimizer.param_groups[0]["lr"],
                       "epoch_seconds": time.perf_counter() - started}
            if (epoch + 1) % params.train.val_every == 0 or epoch + 1 == epochs:
                metrics |= validate(model, val_items, plan, device)
                if metrics["val_dice"] > best["dice"]:
                    best = {"dice": metrics["val_dice"], "epoch": epoch,
                            "state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})}
            mlflow.log_metrics(metrics, step=epoch)
            history.append({"epoch": epoch, **metrics})
            log.info("epoch %d/%d loss %.4f val_dice %s", epoch + 1, epochs, metrics["train_loss"],
                     f"{metrics['val_dice']:.4f}" if "val_dice" in metrics else "-")
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                "epoch": epoch, "run_id": run.info.run_id, "history": history, "plan": plan,
                "best_dice": best["dice"], "best_model": best["state"], "best_epoch": best["epoch"],
            })

        if best["state"] is not None:
            model.load_state_dict(best["state"])
        model = model.to("cpu").eval()
        save_checkpoint(output_dir / "model.pt", {"model": model.state_dict(), "plan": plan})
        mlflow.log_metric("best_val_dice", best["dice"])
        log_learning_curve(history)
        log_overlays(model, val_items[:4], plan)
        model_uri, version = log_and_register(model, plan, params, output_dir)
        result = TrainResult(run_id=run.info.run_id, model_uri=model_uri, registered_version=version,
                             best_val_dice=best["dice"], epochs=epochs, checkpoint=str(output_dir / "model.pt"))
    write_json(output_dir / "train.json", result.__dict__)
    return result


def log_and_register(model: nn.Module, plan: dict, params: Params, output_dir: Path) -> tuple[str, str | None]:
    """Log the model pickled (any input size works), with its plan, and alias it ``candidate``."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    plan_file = output_dir / PLAN_FILE
    write_json(plan_file, plan)
    example = np.zeros((1, plan["in_channels"], *plan["patch_size"]), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", extra_files=[str(plan_file)],
        input_example=example, registered_model_name=params.tracking.model_name,
        pip_requirements=["torch", "monai", "unetflow"],
    )
    version = getattr(info, "registered_model_version", None)
    if version is not None:
        MlflowClient().set_registered_model_alias(params.tracking.model_name, CANDIDATE_ALIAS, str(version))
    return info.model_uri, None if version is None else str(version)
