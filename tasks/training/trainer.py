"""Train: execute the plan — build the network, fit it, track everything in MLflow.

``train_model`` is a plain function (the Prefect flows only call it) that drives a ``Trainer`` through
its steps: set up (network, optimizer, schedule, AMP scaler and loss on the device), ``resume_from``
a checkpoint, ``fit`` (one ``_epoch`` at a time) and ``finish``. Every epoch is checkpointed
atomically (model, optimizer, scheduler, AMP scaler, RNG state, history and the MLflow run ID), so a
killed run resumes into the *same* MLflow run; the weights with the best validation Dice are logged
as the run's model, registered with the alias ``candidate``.

On CUDA it trains with mixed precision, channels-last memory (2D) and, if asked, ``torch.compile``;
on CPU the same loop runs in float32.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.atomic import write_json
from tasks.common.devices import resolve_device
from tasks.common.plan import PLAN_FILE, Plan, build_model
from tasks.config import Params
from tasks.preprocess.case_store import read_properties
from tasks.preprocess.planning import network_spec
from tasks.tracking.artifacts import log_learning_curve, log_overlays, tracking_tags
from tasks.tracking.model_package import load_checkpoint, log_and_register, save_checkpoint
from tasks.tracking.run_names import column_tags
from tasks.tracking.run_names import run_name as new_run_name
from tasks.training import resume as resuming
from tasks.training.batch_norm import recalibrate_batch_norm
from tasks.training.checkpoint import loader_rng_state, rng_state, seed_everything, set_loader_rng_state, set_rng_state
from tasks.training.data_loader import case_records, iter_cases, training_loader
from tasks.training.distributed import DistributedContext
from tasks.training.epochs import run_epoch, validate
from tasks.training.measures import count_parameters, peak_memory_mb
from tasks.training.optim import make_loss, make_optimizer, make_scheduler

log = logging.getLogger("unetflow.train")
KEPT_BY = {"dice": "val_dice", "object_f1": "val_object_f1", "pq": "val_pq"}


def kept_by(choice: str, val_items: list[dict[str, Any]]) -> str:
    """The validation metric the best weights are kept by (``train.keep_best_by``): ``auto`` is object F1 when
    every validation case has an instance map (touching cells counted apart is what such data is for), Dice
    otherwise. Object metrics asked for without instance maps are refused before the first epoch."""
    with_instances = bool(val_items) and all("instances" in read_properties(Path(item["case_dir"]))["arrays"]
                                             for item in val_items)
    if choice == "auto":
        return "val_object_f1" if with_instances else "val_dice"
    if choice != "dice" and not with_instances:
        raise ValueError(f"train.keep_best_by: {choice} needs an instance map in every validation case "
                         f"(instancesTr/ or data.instance_labels); use auto or dice")
    return KEPT_BY[choice]


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
    kept_by: str = "val_dice"
    best_score: float = math.nan


@dataclass
class BestWeights:
    """The best validation score so far (``kept_by``: ``val_dice``, ``val_object_f1`` or ``val_pq``), its
    epoch, the validation Dice there, and a CPU copy of the weights that reached it (``None`` until a
    validation beats -1, so a run that never validated ends with its last weights)."""

    score: float = -1.0
    epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    dice: float = -1.0


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeRemainingColumn(), disable=not sys.stderr.isatty(), transient=True)


class PlanMismatch(ValueError):
    """``params.yaml``'s model is not the network preprocess planned: preprocess must run again."""


def read_plan(preprocessed: Path, params: Params) -> Plan:
    """Preprocess's plan, which the trainer executes and never edits; a ``model`` section changed since
    preprocess ran is refused (``dvc repro`` or ``unetflow preprocess`` re-plans), not patched over."""
    plan = Plan.read(preprocessed / PLAN_FILE)
    wanted = network_spec(params.model)
    if not plan.network.same_model(wanted):
        changed = [key for key in ("name", "features", "norm", "options")
                   if getattr(plan.network, key) != getattr(wanted, key)]
        raise PlanMismatch(f"params.yaml's model ({', '.join(f'model.{k}' for k in changed)}) differs from the "
                           f"network in {PLAN_FILE}, planned by preprocess: run `unetflow preprocess` "
                           f"(or `dvc repro`) first")
    return plan


def train_model(params: Params, root: Path, resume: bool = False, *, output_dir: Path | None = None,
                register: bool = True, run_name: str | None = None, nested: bool = False,
                extra_tags: dict[str, str] | None = None, plan: Plan | None = None,
                params_file: Path | None = None) -> TrainResult | None:
    """Train per ``params`` on the preprocessed plan under ``root``; see the module docstring.

    ``plan`` defaults to preprocess's ``plan.json``; ``compare`` passes the same plan with another network.
    ``params_file`` is the YAML file ``params`` was read from, kept with the run as ``params.yaml``
    (``None``: only ``resolved_params.json`` is kept). Under ``torchrun`` every process trains its shard
    of the cases; rank 0 alone tracks, validates, checkpoints and returns the result (other ranks: None).
    """
    import mlflow

    from tasks.tracking.store import configure_tracking

    ctx = DistributedContext.from_env()
    plan = plan or read_plan(root / params.preprocess.output_dir, params)
    if ctx.is_main:
        configure_tracking(params.tracking, root)  # fails here, before any training, if misconfigured
    trainer = Trainer(params, root, plan, ctx, output_dir or root / params.train.output_dir)
    if resume and trainer.resume_from(trainer.checkpoint_path) and ctx.is_main:
        resuming.check_version_updatable(params.tracking.model_name, trainer.run_id)
    trainer.prepare_loop()
    if getattr(trainer, "resumed_rng", None) is not None and not ctx.enabled:  # see Trainer.resume_from
        set_rng_state(trainer.resumed_rng[0])
        if trainer.resumed_rng[1] is not None:
            set_loader_rng_state(trainer.loader.dataset, trainer.resumed_rng[1])
    if not ctx.is_main:
        trainer.fit(run_id=None)
        ctx.stop()
        return None
    with mlflow.start_run(run_id=trainer.run_id, nested=nested,  # a resumed run keeps its name
                          run_name=None if trainer.run_id else run_name or new_run_name(params, plan, root),
                          log_system_metrics=params.tracking.system_metrics) as run:
        if trainer.run_id is None:
            trainer.log_new_run(params_file, extra_tags)
        else:
            resuming.log_resumed_epochs(trainer.planned_epochs, params.train.epochs)
        trainer.fit(run_id=run.info.run_id)
        result = trainer.finish(register)
    write_json(trainer.output_dir / "train.json", {k: v for k, v in asdict(result).items() if k != "history"})
    ctx.stop()
    return result


class Trainer:
    """One training run's state between epochs: what a checkpoint holds and what ``finish`` reports.

    Steps, in order: construct (set up), ``resume_from`` (optional), ``prepare_loop``, ``fit``,
    ``finish`` (rank 0, inside the MLflow run). Only rank 0 validates, logs and checkpoints.
    """

    def __init__(self, params: Params, root: Path, plan: Plan, ctx: DistributedContext, output_dir: Path) -> None:
        """Seed, then build network, optimizer, schedule, AMP scaler and loss on this process's device."""
        self.params, self.config, self.root, self.plan, self.ctx = params, params.train, root, plan, ctx
        self.output_dir = output_dir
        self.checkpoint_path = output_dir / "checkpoint.pt"
        # The plan's batch (fitted to train.memory_budget_gb); train.batch_size, when set, is what it planned.
        self.batch_size = self.config.batch_size or plan.batch_size or 2
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.device = ctx.device(resolve_device(self.config.device, "train.device"))
        ctx.start(self.device)
        seed_everything(self.config.seed + ctx.rank)  # DDP copies rank 0's initial weights; augmentations differ
        self.model = self._network()
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = make_scheduler(self.optimizer, self.config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.config.amp and self.device.type == "cuda")
        self.loss_fn = make_loss(params)
        self.start_epoch = 0
        self.run_id: str | None = None  # the MLflow run: from the checkpoint when resuming, else set by fit
        self.history: list[dict[str, float]] = []
        self.best = BestWeights()
        self.kept_by = "val_dice"
        self.stopped_early = False
        self.epoch_seconds: list[float] = []  # this process's epochs only: a resumed run's speed is its own
        self.forward: nn.Module = self.model
        self.loader: Any = None
        self.val_items: list[dict] = []
        self.train_items: list[dict] = []

    def _network(self) -> nn.Module:
        model = build_model(self.plan).to(self.device)
        if self.device.type == "cuda" and self.plan.spatial_dims == 2:
            model = model.to(memory_format=torch.channels_last)
        if self.ctx.enabled and self.device.type == "cuda":  # SyncBatchNorm runs on GPUs only; gloo keeps BN local
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def resume_from(self, checkpoint: Path) -> bool:
        """Continue where ``checkpoint`` stopped, in its MLflow run; without one, warn and start afresh.

        Changed training settings are refused (``ResumeRefused``, naming them); a changed ``train.epochs``
        rebuilds the schedule for the new total at the epoch reached (see tasks/training/resume.py).
        """
        if not checkpoint.exists():
            log.warning("--resume: no checkpoint at %s, starting a new run", checkpoint)
            return False
        state = load_checkpoint(checkpoint, self.device)
        current = resuming.training_params(self.params, self.batch_size)
        self.planned_epochs = resuming.check_resumable(state, current, self.config.epochs, checkpoint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if not self.ctx.enabled:  # the checkpoint holds rank 0's RNG only; DDP ranks keep their own seeds
            set_rng_state(state["rng"])
        self.start_epoch, self.run_id, self.history = state["epoch"] + 1, state["run_id"], state["history"]
        if self.planned_epochs == self.config.epochs:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.scheduler = resuming.extend_schedule(self.optimizer, self.config, self.start_epoch)
            log.warning("--resume: train.epochs %d → %d: the schedule continues as one planned for %d epochs "
                        "(LR %.3g at epoch %d)", self.planned_epochs, self.config.epochs, self.config.epochs,
                        self.optimizer.param_groups[0]["lr"], self.start_epoch + 1)
        # every checkpoint check_resumable lets through stores best_score: older ones lack train.keep_best_by
        self.best = BestWeights(state["best_score"], state["best_epoch"], state["best_model"], state["best_dice"])
        # restored again once prepare_loop built the loader: MONAI's DataLoader re-seeds torch's RNG when built
        self.resumed_rng = (state["rng"], state.get("loader_rng"))
        log.info("resuming MLflow run %s at epoch %d of %d", self.run_id, self.start_epoch + 1, self.config.epochs)
        return True

    def prepare_loop(self) -> None:
        """Wrap the network (DDP, ``torch.compile``) and build the loader. After ``resume_from``: DDP
        broadcasts rank 0's weights when wrapping, and the loader must start from the restored RNG.
        Train and val items are case records (folders), not arrays: the loader, validation and overlays
        open a case only while they use it, so memory does not grow with the dataset."""
        wrapped = self.ctx.wrap(self.model, self.device)
        self.forward = torch.compile(wrapped) if self.config.compile and self.device.type == "cuda" else wrapped
        preprocessed = self.root / self.params.preprocess.output_dir
        train_items = self.train_items = self.ctx.shard(case_records(preprocessed, self.plan.split.train))
        self.val_items = case_records(preprocessed, self.plan.split.val) if self.ctx.is_main else []
        self.loader = training_loader(train_items, self.plan, self.batch_size, self.config.augment)
        self.kept_by = kept_by(self.config.keep_best_by, self.val_items) if self.ctx.is_main else "val_dice"

    def log_new_run(self, params_file: Path | None, extra_tags: dict[str, str] | None) -> None:
        """What a new run records once (a resumed run has it already): params, tags (``unetflow.*`` ones short
        enough to be columns in the runs list), the plan, and the parameters both as the file the user wrote
        (``params.yaml``) and as validated (with overrides)."""
        import mlflow

        mlflow.log_params(self.params.flat())
        mlflow.set_tags({**tracking_tags(self.params, self.root), **column_tags(self.params, self.plan, self.root),
                         **(extra_tags or {})})
        # MLflow 3 opens an experiment of unknown kind as GenAI; these are model-training runs.
        mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
        mlflow.log_params({"model.parameters": count_parameters(self.model), "device": str(self.device),
                           "world_size": self.ctx.world_size})
        # The classes as resolved (data.label_names may say only "auto"): what the outputs of this model mean.
        mlflow.log_params({"plan.num_classes": self.plan.num_classes,
                           "plan.label_names": json.dumps(dict(sorted(self.plan.label_names.items(),
                                                                      key=lambda item: item[1]))),
                           "plan.weight_map_objects": str(self.plan.weight_map_objects),
                           "plan.border_core": str(self.plan.border_core),
                           # what the plan fitted to the data and the memory budget, as this run trains it
                           "plan.target_spacing": json.dumps(self.plan.target_spacing),
                           "plan.patch_size": json.dumps(list(self.plan.patch_size)), "batch_size": self.batch_size,
                           "plan.strides": json.dumps(self.plan.network.strides)})
        mlflow.log_dict(self.plan.to_json(), PLAN_FILE)
        if params_file is not None:  # a missing file means all defaults, as load_params reads it
            text = params_file.read_text(encoding="utf-8") if params_file.exists() else ""
            mlflow.log_text(text, "params.yaml")
        mlflow.log_dict(self.params.model_dump(mode="json"), "resolved_params.json")

    def fit(self, run_id: str | None) -> None:
        """Epochs from ``start_epoch`` up to ``train.epochs``, or until early stopping; ``run_id`` is
        the active MLflow run the checkpoints name (rank 0; other ranks pass None)."""
        self.run_id = run_id
        with _progress() as progress:
            bar = progress.add_task("train", total=self.config.epochs, completed=self.start_epoch, status="")
            for epoch in range(self.start_epoch, self.config.epochs):
                if self._epoch(epoch, lambda status: progress.update(bar, advance=1, status=status)):
                    break

    def _epoch(self, epoch: int, advance: Callable[[str], None]) -> bool:
        """Train one epoch; rank 0 then validates, logs and checkpoints. True: stop early (on every rank)."""
        started = time.perf_counter()
        train_loss = run_epoch(self.forward, self.loader, self.loss_fn, self.optimizer, self.scaler, self.device,
                               self.config, self.plan.weight_maps)
        self.scheduler.step()
        if not self.ctx.is_main:
            return bool(self.ctx.broadcast(None))
        metrics = {"train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"]}
        validated = (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs
        if validated:
            metrics |= self._validate(epoch)
        metrics["epoch_seconds"] = time.perf_counter() - started
        self._record(epoch, metrics)
        advance(f"loss {train_loss:.3f} {self.kept_by} {self.best.score:.3f}")
        self._save_checkpoint(epoch)
        patience, stale = self.config.early_stopping_patience, epoch - self.best.epoch
        self.stopped_early = bool(validated and patience and stale >= patience * self.config.val_every)
        if self.ctx.broadcast(self.stopped_early):
            log.info("early stop: no better %s for %d epochs", self.kept_by, stale)
            return True
        return False

    def _validate(self, epoch: int) -> dict[str, float]:
        """Validation Dice per class and mean (object F1 and PQ with instance maps); a better ``kept_by`` score
        (equal: a better Dice) keeps a CPU copy of these weights (with batch-norm statistics recomputed for
        exactly these weights first: see tasks/training/batch_norm.py)."""
        recalibrate_batch_norm(self.model, self.train_items, self.plan.patch_size, self.device, self.batch_size)
        metrics = validate(self.model, iter_cases(self.val_items), self.plan, self.device)  # one case at a time
        # ties (object F1 on a few validation images often is) go to the better Dice
        if (metrics[self.kept_by], metrics["val_dice"]) > (self.best.score, self.best.dice):
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.best = BestWeights(metrics[self.kept_by], epoch, state, metrics["val_dice"])
        return metrics

    def _record(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        self.epoch_seconds.append(metrics["epoch_seconds"])
        mlflow.log_metrics(metrics, step=epoch)
        self.history.append({"epoch": epoch, **metrics})
        if self.config.overlay_every and (epoch + 1) % self.config.overlay_every == 0:
            log_overlays(self.model, iter_cases(self.val_items[:4]), self.plan,
                         prefix=f"overlays/epoch_{epoch + 1:03d}")
        log.info("epoch %d/%d loss %.4f val Dice %s", epoch + 1, self.config.epochs, metrics["train_loss"],
                 f"{metrics['val_dice']:.4f}" if "val_dice" in metrics else "-")

    def _save_checkpoint(self, epoch: int) -> None:
        """Everything ``resume_from`` needs, written atomically: a kill mid-save keeps the previous one."""
        save_checkpoint(self.checkpoint_path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "epoch": epoch, "run_id": self.run_id, "history": self.history, "plan": self.plan.to_json(),
            "best_dice": self.best.dice, "best_model": self.best.state, "best_epoch": self.best.epoch,
            "best_score": self.best.score,
            # what resume_from checks a resume against (JSON: loads with weights_only)
            "params": json.dumps(resuming.training_params(self.params, self.batch_size)),
            "epochs": self.config.epochs, "loader_rng": loader_rng_state(getattr(self.loader, "dataset", None)),
        })

    def finish(self, register: bool) -> TrainResult:
        """Rank 0, inside the MLflow run: the best weights as ``model.pt`` and as the run's MLflow model
        (registered as ``candidate`` if ``register``), summary metrics, learning curve and overlays. A run
        that already registered a version (a resumed one) updates that version instead of adding one."""
        import mlflow

        run_id = mlflow.active_run().info.run_id
        final = self._best_plain_model()
        save_checkpoint(self.output_dir / "model.pt", {"model": final.state_dict(), "plan": self.plan.to_json()})
        memory = peak_memory_mb(self.device)
        mlflow.log_metrics({"best_val_dice": self.best.dice, "best_epoch": self.best.epoch, "peak_memory_mb": memory,
                            f"best_{self.kept_by}": self.best.score})
        mlflow.set_tag("unetflow.kept_by", self.kept_by)
        log_learning_curve(self.history)
        log_overlays(final, iter_cases(self.val_items[:4]), self.plan)
        existing = resuming.registered_version(self.params.tracking.model_name, run_id) if register else None
        if existing is None:  # one version per run: a resumed run updates the one it registered
            model_uri, version = log_and_register(final, self.plan, self.output_dir,
                                                  self.params.tracking.model_name if register else None)
        else:
            model_uri, version = resuming.update_registered_weights(existing, final, self.plan, self.output_dir), \
                str(existing.version)
        return TrainResult(
            run_id=run_id, model_uri=model_uri, registered_version=version, best_val_dice=self.best.dice,
            best_epoch=self.best.epoch, epochs_run=len(self.history), stopped_early=self.stopped_early,
            checkpoint=str(self.output_dir / "model.pt"),
            seconds_per_epoch=float(np.mean(self.epoch_seconds)) if self.epoch_seconds else math.nan,
            parameters=count_parameters(final), peak_memory_mb=memory, history=self.history, kept_by=self.kept_by,
            best_score=self.best.score)

    def _best_plain_model(self) -> nn.Module:
        """A fresh copy of the network (no DDP/SyncBatchNorm wrappers, on the CPU) with the best weights,
        or the last ones when no validation ran."""
        final = build_model(self.plan)
        final.load_state_dict(self.best.state if self.best.state is not None else
                              {k: v.cpu() for k, v in self.model.state_dict().items()})
        return final.eval()
