"""Instance separation of touching cells (issue #17): U-Net weight maps + watershed against CE+Dice + components.

Three trainings at an equal budget (same synthetic data, split, network, epochs, steps, batch size and seed) on
the demo's touching cells (``tasks.ingest.synthetic``), each through the plain-function pipeline in its own
temporary project (ingest → preprocess → ``train_model`` with a local sqlite MLflow store):

* ``weight_maps_wce``: the defaults — border-core target (the demo has instance maps: ``preprocess.border_core:
  auto``), pixel-weighted CE with the U-Net weight maps of the cores (``weight_maps: true``, ``loss: wce``);
* ``ce_dice``: the same border-core target, CE+Dice, no weight maps;
* ``ce_dice_classes``: the baseline — the plain class target (``border_core: false``), CE+Dice, no weight maps.

Each model predicts the plan's held-out labelled test cases on their native grid (what ``unetflow evaluate``
scores); the class map becomes instances with both methods of ``tasks.inference.instances`` (``components``,
``watershed``) and is scored against the true instance maps: object F1 at IoU ≥ 0.5, PQ, AJI (per case, then
averaged) and the pixel Dice of the class map. Targets: weight maps + watershed ≥ CE+Dice + components + 0.05
object F1, and ≥ 0.90 object F1. Prints JSON.

    python benchmarks/instances.py [--epochs N] [--train-cases N] [--size PX] [--seed N] [--quick]
                                   [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.config import Params, validate_params
from tasks.evaluation.evaluate import native_case, test_cases
from tasks.evaluation.metrics import dice_per_class
from tasks.evaluation.object_metrics import object_scores
from tasks.inference.instances import instances_from_labels
from tasks.inference.native_grid import predict_native
from tasks.ingest.batch import ingest_dataset
from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset
from tasks.preprocess.in_process import preprocess_dataset
from tasks.tracking.model_package import load_model
from tasks.training.trainer import train_model

TRAININGS = {
    # the defaults: border-core target (the demo has instance maps), weight maps on its cores, weighted CE
    "weight_maps_wce": {"preprocess": {"weight_maps": True}, "train": {"loss": "wce"}},
    # the same border-core target without weight maps
    "ce_dice": {"preprocess": {"weight_maps": False}, "train": {"loss": "ce_dice"}},
    # the baseline: plain class target, CE+Dice, no weight maps
    "ce_dice_classes": {"preprocess": {"weight_maps": False, "border_core": False}, "train": {"loss": "ce_dice"}},
}
BASELINE = "ce_dice_classes"
METHODS = ("components", "watershed")
TARGET_GAIN = 0.05
TARGET_F1 = 0.90


def make_params(training: str, args: argparse.Namespace) -> Params:
    """The defaults with this training's loss and weight-map choice; everything else equal for both."""
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "overlay_every": 0,
             "num_threads": args.threads, "device": "cpu", "max_steps_per_epoch": args.steps}
    raw: dict[str, Any] = {
        "data": {"workers": 1, "split_seed": args.seed},
        "preprocess": {"workers": 1},
        "train": train,
        "tracking": {"system_metrics": False},
    }
    if args.features:
        raw["model"] = {"features": args.features}
    for section, values in TRAININGS[training].items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_params(raw)


def score_model(checkpoint: str, root: Path, params: Params) -> tuple[dict[str, list[dict]], list[str]]:
    """Per method, one row per held-out test case: object F1@0.5, PQ, AJI, object counts, pixel Dice."""
    model, plan = load_model(checkpoint, map_location="cpu")
    dataset = root / params.data.dataset_dir
    cases = test_cases(dataset, plan)
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    for case in cases:
        item = native_case(dataset, case, plan)
        labels, border = predict_native(model, plan, item["image"], item["spacing"], device="cpu")
        truth = np.asarray(item["label"])[0]
        true_instances = item["instances"]
        if true_instances is None:
            raise RuntimeError(f"test case {case['case_id']} has no instance map")
        if labels.shape != true_instances.shape or truth.shape != labels.shape:
            raise RuntimeError(f"shapes differ: prediction {labels.shape}, label {truth.shape}, "
                               f"instances {true_instances.shape}")
        dice = float(np.mean(list(dice_per_class(labels, truth, plan.num_classes).values())))
        for method in METHODS:
            pred_ids = instances_from_labels(labels, method, spacing=item["spacing"], border_probability=border).ids
            scores = object_scores(pred_ids, true_instances)
            rows[method].append({"case_id": case["case_id"], "object_f1": scores.f1, "pq": scores.pq,
                                 "aji": scores.aji, "splits": scores.splits, "merges": scores.merges,
                                 "true_objects": scores.true_objects, "pred_objects": scores.pred_objects,
                                 "dice": dice})
    return rows, [c["case_id"] for c in cases]


def run_training(training: str, args: argparse.Namespace, spec: SyntheticSpec) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"unetflow-instances-{training}-") as tmp:
        root = Path(tmp)
        params = make_params(training, args)
        started = time.perf_counter()
        write_synthetic_dataset(root / params.data.raw_dir, spec)
        ingest_dataset(root / params.data.raw_dir, root / params.data.dataset_dir, params.data)
        plan, _ = preprocess_dataset(root, params)
        prepared = time.perf_counter()
        result = train_model(params, root, register=False)
        trained = time.perf_counter()
        rows, cases = score_model(result.checkpoint, root, params)
        scored = time.perf_counter()
    methods = {}
    for method, per_case in rows.items():
        methods[method] = {key: round(float(np.mean([r[key] for r in per_case])), 4)
                           for key in ("object_f1", "pq", "aji", "dice")}
        methods[method].update({key: int(sum(r[key] for r in per_case))
                                for key in ("splits", "merges", "true_objects", "pred_objects")})
        methods[method]["cases"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                    for r in per_case]
    return {
        "settings": {"weight_maps": params.preprocess.weight_maps, "loss": params.train.loss,
                     "border_core": plan.border_core, "kept_by": result.kept_by,
                     "patch_size": list(plan.patch_size), "batch_size": plan.batch_size
                     if args.batch_size is None else args.batch_size,
                     "features": list(params.model.features)},
        "test_cases": cases,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_dice": round(result.best_val_dice, 4),
        "best_val_score": round(result.best_score, 4),
        "seconds": {"prepare": round(prepared - started, 1), "train": round(trained - prepared, 1),
                    "score": round(scored - trained, 1)},
        "methods": methods,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 24 as params.yaml, --quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="max optimizer steps per epoch (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: planned (the same for both)")
    parser.add_argument("--train-cases", type=int, default=None, help="labelled images (default 24, --quick 10)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 96, --quick 48)")
    parser.add_argument("--features", type=int, nargs="+", default=None, help="U-Net features (default: params)")
    parser.add_argument("--seed", type=int, default=0, help="data, split and training seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 epochs")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.quick:
        args.epochs = args.epochs or 2
        args.train_cases = args.train_cases or 10
        args.size = args.size or 48
        args.features = args.features or [8, 16, 32]
    args.epochs = args.epochs or 24
    spec = SyntheticSpec(n_train=args.train_cases or 24, n_test=1, size=args.size or 96, seed=args.seed)

    started = time.perf_counter()
    trainings = {name: run_training(name, args, spec) for name in TRAININGS}
    ours = trainings["weight_maps_wce"]["methods"]["watershed"]["object_f1"]
    baseline = trainings[BASELINE]["methods"]["components"]["object_f1"]
    summary = {name: {m: {k: t["methods"][m][k] for k in ("object_f1", "pq", "aji", "dice")} for m in METHODS}
               for name, t in trainings.items()}
    output = {
        "benchmark": "instances",
        "issue": 17,
        "quick": args.quick,
        "host": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                 "device": "cpu", "threads": torch.get_num_threads()},
        "data": {"synthetic": {"n_train": spec.n_train, "size": spec.size, "cells": list(spec.cells),
                               "radius": list(spec.radius), "noise": spec.noise, "seed": spec.seed},
                 "evaluated_on": "the plan's held-out labelled test cases, native grid"},
        "budget": {"epochs": args.epochs, "max_steps_per_epoch": args.steps, "batch_size": args.batch_size
                   or "planned (same plan for both)", "seed": args.seed},
        "summary": summary,
        "targets": {
            "gain": {"what": f"object F1@0.5: weight_maps_wce+watershed − {BASELINE}+components", "target": TARGET_GAIN,
                     "value": round(ours - baseline, 4), "met": bool(ours - baseline >= TARGET_GAIN)},
            "f1": {"what": "object F1@0.5 of weight_maps_wce+watershed", "target": TARGET_F1, "value": ours,
                   "met": bool(ours >= TARGET_F1)},
        },
        # Where the gain comes from: the instance method with the training fixed, the training with the method fixed.
        "attribution": {
            "watershed_over_components": {name: round(t["methods"]["watershed"]["object_f1"]
                                                      - t["methods"]["components"]["object_f1"], 4)
                                          for name, t in trainings.items()},
            "weight_maps_over_ce_dice": {m: round(trainings["weight_maps_wce"]["methods"][m]["object_f1"]
                                                  - trainings["ce_dice"]["methods"][m]["object_f1"], 4)
                                         for m in METHODS},
        },
        "trainings": trainings,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(output, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
