"""Optimizer, learning-rate schedule and loss, built from ``train`` settings.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.config import Params, TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # nnU-Net's choice: SGD, Nesterov momentum 0.99.
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.99, nesterov=True,
                           weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    epochs = config.epochs
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if config.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=0.9)


def make_loss(params: Params) -> nn.Module:
    from monai_ext.losses import build_loss

    return build_loss(params.train.loss, **params.train.loss_options)
