"""Evaluate: test-set metrics per case for the trained model, logged into its training run.

A UNet++ trained with deep supervision is also scored at every level it can be pruned to, and with its
heads averaged: the UNet++ paper's speed/accuracy trade-off, measured on the user's own test set, is what
``infer.prune_level`` / ``infer.unetpp_heads`` choose from. Seconds per case time the prediction only
(the sliding windows on the evaluation device), not the metrics.

Test cases are scored as ``unetflow infer`` would segment them: read from the canonical dataset on their
native grid (not the resampled preprocessed copy), predicted on the plan's spacing and resampled back
(:mod:`tasks.inference.native_grid`), one case in memory at a time.

Test cases with instance maps (the manifest's ``files.instances``) are also scored object by object
(:mod:`tasks.evaluation.object_metrics`): object F1 at IoU 0.5 and its curve up to 0.9, AJI, PQ, split and
merged objects, the predicted objects being the connected components (full connectivity) of each predicted
class. Without instance maps there are no such columns and no such metrics.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks.common.atomic import write_json, write_text
from tasks.common.devices import resolve_device
from tasks.common.normalization import normalize, to_channel_first
from tasks.common.plan import Plan
from tasks.config import Params
from tasks.evaluation.metrics import dice_per_class, hd95_per_class, iou_per_class
from tasks.evaluation.object_metrics import THRESHOLDS, case_object_row, class_object_scores
from tasks.inference.instances import instances_from_labels, measured_method
from tasks.inference.native_grid import predict_native
from tasks.inference.unetpp_modes import model_for_mode, unetpp_levels
from tasks.preprocess.cases import load_case_arrays
from tasks.tracking.model_package import load_model


@dataclass
class EvaluationResult:
    run_id: str
    test_dice: float
    test_iou: float
    cases: list[dict]
    levels: list[dict] = field(default_factory=list)  # UNet++ with deep supervision: one row per mode
    objects: dict = field(default_factory=dict)  # summarize_objects: empty without instance maps


def test_cases(dataset_dir: Path, plan: Plan) -> list[dict]:
    """The manifest records of the plan's test cases (read one at a time when scored)."""
    manifest = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    wanted = set(plan.split.test)
    return [case for case in manifest["cases"] if case["case_id"] in wanted]


def native_case(dataset_dir: Path, case: dict, plan: Plan) -> dict:
    """One canonical case as a user has it (native grid): normalised ``C×…`` image, label, spacing (mm), and
    the spatial instance map (``instances``) or None."""
    image, label, instances = load_case_arrays(dataset_dir, case)
    dims = plan.spatial_dims
    spacing = [float(s) for s in case["spacing"][:dims]] if case.get("spacing") else None
    if instances is not None:
        instances = to_channel_first(np.rint(np.asarray(instances)).astype(np.int64), dims)[0]
    return {"case_id": case["case_id"], "image": to_channel_first(normalize(image, plan.normalization), dims),
            "label": to_channel_first(label, dims), "spacing": spacing, "instances": instances}


def score_cases(model: torch.nn.Module, plan: Plan, dataset_dir: Path, cases: list[dict], overlap: float,
                device: torch.device, instance_method: str = "none", objects: bool = True) -> list[dict]:
    """Per-case test metrics on each case's native grid, one case in memory at a time: mean foreground Dice,
    IoU and HD95 (mm), Dice per class, relative volume error, and the seconds the prediction took; with an
    instance map, the object scores too (:func:`~tasks.evaluation.object_metrics.case_object_row`) of the
    objects inference would write (``instance_method``, or what suits the model:
    :func:`~tasks.inference.instances.measured_method`); ``objects=False`` skips them (a caller that keeps only
    Dice and IoU need not pay for a watershed per case)."""
    method = measured_method(plan.border_core, instance_method)
    rows = []
    for case in cases:
        item = native_case(dataset_dir, case, plan)
        started = time.perf_counter()
        prediction, border = predict_native(model, plan, item["image"], item["spacing"], overlap=overlap, device=device)
        seconds = time.perf_counter() - started  # the labels are on the CPU: the device's work is done
        truth = item.pop("label")[0]
        dice = dice_per_class(prediction, truth, plan.num_classes)
        iou = iou_per_class(prediction, truth, plan.num_classes)
        hd95 = hd95_per_class(prediction, truth, plan.num_classes, item.get("spacing"))
        true_volume = int((truth > 0).sum())
        instances = item.pop("instances", None) if objects else None
        scores = {} if instances is None else case_object_row(class_object_scores(
            prediction, truth, instances, plan.num_classes, instances_from_labels(
                prediction, method, spacing=item["spacing"], border_probability=border).ids))
        rows.append({"case_id": item["case_id"], "dice": float(np.mean(list(dice.values()))),
                     "iou": float(np.mean(list(iou.values()))), "hd95": float(np.nanmean(list(hd95.values())))
                     if not all(np.isnan(list(hd95.values()))) else float("nan"),
                     **{f"dice_{c}": v for c, v in dice.items()},
                     "volume_error": abs(int((prediction > 0).sum()) - true_volume) / max(true_volume, 1),
                     "seconds": seconds, **scores})
    return rows


LEVEL_COLUMNS = ("mode", "test_dice", "test_iou", "seconds_per_case")


def score_unetpp_levels(model: torch.nn.Module, plan: Plan, dataset_dir: Path, cases: list[dict], overlap: float,
                        device: torch.device) -> list[dict]:
    """Mean Dice, IoU and seconds per case for UNet++ pruned to L1 .. L{depth-1} and for its heads' mean.

    Empty unless the plan is a UNet++ with deep supervision (no other model has the heads to select).
    """
    modes = [(f"L{level}", level, "last") for level in unetpp_levels(plan)]
    rows = []
    for name, level, heads in [*modes, *([("heads_mean", None, "mean")] if modes else [])]:
        scored = score_cases(model_for_mode(model, plan, level, heads), plan, dataset_dir, cases, overlap, device,
                             objects=False)
        dice, iou = summarize(scored)
        seconds = float(np.mean([c["seconds"] for c in scored])) if scored else float("nan")
        rows.append({"mode": name, "test_dice": dice, "test_iou": iou, "seconds_per_case": seconds})
    return rows


def _log_levels(rows: list[dict]) -> None:
    """The level table into the active MLflow run: ``test_dice_L1`` ... metrics and a JSON + Markdown table."""
    import mlflow

    if not rows:
        return
    metrics: dict[str, float] = {}
    for row in rows:
        metrics |= {f"test_dice_{row['mode']}": row["test_dice"], f"test_iou_{row['mode']}": row["test_iou"],
                    f"test_seconds_per_case_{row['mode']}": row["seconds_per_case"]}
    mlflow.log_metrics(metrics)
    mlflow.log_table({c: [r[c] for r in rows] for c in LEVEL_COLUMNS}, "evaluation/unetpp_levels.json")
    lines = [" | ".join(LEVEL_COLUMNS), " | ".join("---" for _ in LEVEL_COLUMNS)]
    lines += [" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in LEVEL_COLUMNS) for r in rows]
    mlflow.log_text("\n".join(lines) + "\n", "evaluation/unetpp_levels.md")


def summarize(rows: list[dict]) -> tuple[float, float]:
    """Mean test Dice and IoU over cases."""
    if not rows:
        return float("nan"), float("nan")
    return float(np.mean([r["dice"] for r in rows])), float(np.mean([r["iou"] for r in rows]))


def summarize_objects(rows: list[dict]) -> dict:
    """Means over cases of object F1@0.5, AJI, PQ (SQ, RQ) and of the F1 curve; split and merge counts summed.
    Empty when the cases have no object scores (no instance maps), so nothing is reported for them."""
    rows = [r for r in rows if "object_f1" in r]  # a case without an instance map has no object scores
    if not rows:
        return {}
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("object_f1", "aji", "pq", "sq", "rq")}
    return {**{f"test_{k}": v for k, v in mean.items()},
            "test_splits": int(sum(r["splits"] for r in rows)), "test_merges": int(sum(r["merges"] for r in rows)),
            "test_object_f1_curve": {f"{t:.2f}": float(np.mean([r[f"object_f1_{t:.2f}"] for r in rows]))
                                     for t in THRESHOLDS}}


def object_metrics_for_mlflow(objects: dict) -> dict[str, float]:
    """The object summary as flat MLflow metrics: ``test_object_f1``, ``test_pq`` ..., ``test_object_f1_0.75``."""
    flat = {k: float(v) for k, v in objects.items() if k != "test_object_f1_curve"}
    return flat | {f"test_object_f1_{t}": v for t, v in objects.get("test_object_f1_curve", {}).items()}


def evaluate_model(params: Params, root: Path, model_dir: Path | None = None,
                   metrics_dir: Path | None = None) -> EvaluationResult:
    """Score ``model_dir``'s ``model.pt`` (default: the champion's, ``train.output_dir``) on the test split into
    ``metrics_dir`` (default ``outputs/metrics``) and into the model's training run. A candidate version is
    scored into its own folder (``outputs/candidates/vN/metrics``), never over the champion's metrics."""
    import mlflow

    from tasks.tracking.store import configure_tracking

    configure_tracking(params.tracking, root)
    model_dir = model_dir or root / params.train.output_dir
    train_info = json.loads((model_dir / "train.json").read_text(encoding="utf-8"))
    model, plan = load_model(str(model_dir / "model.pt"))
    device = resolve_device(params.train.device, "train.device")
    dataset = root / params.data.dataset_dir
    cases = test_cases(dataset, plan)
    rows = score_cases(model.to(device), plan, dataset, cases, params.infer.overlap, device, params.infer.instances)
    test_dice, test_iou = summarize(rows)
    objects = summarize_objects(rows)
    levels = score_unetpp_levels(model, plan, dataset, cases, params.infer.overlap, device)
    metrics_dir = metrics_dir or root / "outputs" / "metrics"
    write_json(metrics_dir / "test.json", {"test_dice": test_dice, "test_iou": test_iou, "cases": len(rows), **objects,
                                           **({"unetpp_levels": {r["mode"]: {k: v for k, v in r.items() if k != "mode"}
                                                                 for r in levels}} if levels else {})})
    table = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))  # object columns even if case 1 has none
    if rows:
        writer = csv.DictWriter(table, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    write_text(metrics_dir / "test_cases.csv", table.getvalue())
    with mlflow.start_run(run_id=train_info["run_id"]):
        mlflow.log_metrics({"test_dice": test_dice, "test_iou": test_iou, **object_metrics_for_mlflow(objects)})
        if rows:
            mlflow.log_table({k: [r.get(k) for r in rows] for k in fields}, "evaluation/test_cases.json")
        _log_levels(levels)
    return EvaluationResult(run_id=train_info["run_id"], test_dice=test_dice, test_iou=test_iou, cases=rows,
                            levels=levels, objects=objects)
