"""Multi-process training (DDP) through ``torchrun``: one process per GPU, or per CPU core with gloo.

``torchrun`` starts ``python -m tasks.training.ddp_worker`` once per process; each process runs the same
``train_model`` on its shard of the training cases. Only rank 0 talks to MLflow, validates and
writes checkpoints; gradients are averaged by DDP (on GPUs batch-norm statistics are synchronised too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        """What ``torchrun`` put in the environment; a single process without it."""
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                    int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def start(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank::self.world_size] if self.enabled else items

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (e.g. the early-stopping decision)."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(nproc: int, root: Path, params_file: str | None, overrides: list[str], resume: bool) -> dict:
    """Run ``torchrun`` with ``nproc`` processes; returns rank 0's ``train.json``."""
    from tasks.config import load_params

    params = load_params(None if params_file is None else root / params_file, overrides)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tasks.training.ddp_worker", "--root", str(root)]
    if params_file is not None:
        command += ["--params", str(params_file)]
    for override in overrides:
        command += ["--set", override]
    if resume:
        command.append("--resume")
    subprocess.run(command, cwd=root, check=True)
    return json.loads((root / params.train.output_dir / "train.json").read_text(encoding="utf-8"))
