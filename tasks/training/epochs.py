"""One training epoch and one validation pass: the inner loop the trainer repeats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.plan import Plan
from tasks.config import TrainConfig
from tasks.evaluation.metrics import dice_per_class
from tasks.inference.sliding_window import predict_labels
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


def validate(model: nn.Module, items: list[dict], plan: Plan, device: torch.device) -> dict[str, float]:
    scores: dict[int, list[float]] = {}
    for item in items:
        prediction = predict_labels(model, item["image"], plan.patch_size, device=device)
        for cls, score in dice_per_class(prediction, item["label"][0], plan.num_classes).items():
            scores.setdefault(cls, []).append(score)
    metrics = {f"val_dice_{cls}": float(np.mean(values)) for cls, values in scores.items()}
    metrics["val_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    return metrics
