"""One training epoch and one validation pass: the inner loop the trainer repeats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.plan import Plan
from tasks.config import TrainConfig
from tasks.evaluation.metrics import dice_per_class
from tasks.evaluation.object_metrics import case_object_row, class_object_scores
from tasks.inference.instances import instances_from_labels, measured_method
from tasks.inference.native_grid import predict_native
from tasks.training.valid_padding import crop_to_output


def run_epoch(model: nn.Module, loader: Any, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, device: torch.device, config: TrainConfig,
              use_weights: bool) -> float:
    """One pass over the loader; returns the mean loss."""
    model.train()
    amp = config.amp and device.type == "cuda"
    losses = []
    for step, batch in enumerate(loader):
        if config.max_steps_per_epoch and step >= config.max_steps_per_epoch:
            break
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True).long()
        weight = batch["weight"].to(device, non_blocking=True) if use_weights else None
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            output = model(image)
        label, weight = crop_to_output(output, label, weight)  # valid padding: the output is the centre
        loss = loss_fn(output, label, weight)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else math.nan


def validate(model: nn.Module, items: Iterable[dict], plan: Plan, device: torch.device) -> dict[str, float]:
    """Dice per class over the validation cases, whole, through the inference windows; where every case has an
    instance map, object F1 (IoU ≥ 0.5) and PQ too, of the objects inference would write for this model
    (:func:`~tasks.inference.instances.measured_method`): what the trainer keeps the best weights by."""
    scores: dict[int, list[float]] = {}
    objects: list[dict[str, float | int]] | None = []
    spacing = None if plan.target_spacing is None else plan.target_spacing[:plan.spatial_dims]
    for item in items:  # already on the plan's spacing: predict_native resamples nothing (spacing None)
        labels, border = predict_native(model, plan, item["image"], None, device=device)
        truth = np.asarray(item["label"])[0]
        for cls, score in dice_per_class(labels, truth, plan.num_classes).items():
            scores.setdefault(cls, []).append(score)
        if objects is None or item.get("instances") is None:
            objects = None  # a case without instances: object scores would describe only some cases
            continue
        found = instances_from_labels(labels, measured_method(plan.border_core), spacing=spacing,
                                      border_probability=border)
        objects.append(case_object_row(class_object_scores(labels, truth, np.asarray(item["instances"])[0],
                                                           plan.num_classes, found.ids)))
    metrics = {f"val_dice_{cls}": float(np.mean(values)) for cls, values in scores.items()}
    metrics["val_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    if objects:
        metrics["val_object_f1"] = float(np.mean([row["object_f1"] for row in objects]))
        metrics["val_pq"] = float(np.mean([row["pq"] for row in objects]))
    return metrics
