"""Evaluate: test-set metrics per case for the trained model, logged into its training run."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.common.atomic import write_json, write_text
from tasks.common.devices import resolve_device
from tasks.common.plan import Plan
from tasks.config import Params
from tasks.evaluation.metrics import dice_per_class, hd95_per_class, iou_per_class
from tasks.inference.sliding_window import predict_labels
from tasks.tracking.model_package import load_model
from tasks.training.data_loader import load_cases


@dataclass
class EvaluationResult:
    run_id: str
    test_dice: float
    test_iou: float
    cases: list[dict]


def score_cases(model: torch.nn.Module, plan: Plan, items: list[dict], overlap: float,
                device: torch.device) -> list[dict]:
    """Per-case test metrics: mean foreground Dice, IoU and HD95, Dice per class, relative volume error."""
    rows = []
    for item in items:
        prediction = predict_labels(model, item["image"], plan.patch_size, overlap=overlap, device=device)
        truth = item["label"][0]
        dice = dice_per_class(prediction, truth, plan.num_classes)
        iou = iou_per_class(prediction, truth, plan.num_classes)
        hd95 = hd95_per_class(prediction, truth, plan.num_classes, item.get("spacing"))
        true_volume = int((truth > 0).sum())
        rows.append({"case_id": item["case_id"], "dice": float(np.mean(list(dice.values()))),
                     "iou": float(np.mean(list(iou.values()))), "hd95": float(np.nanmean(list(hd95.values())))
                     if not all(np.isnan(list(hd95.values()))) else float("nan"),
                     **{f"dice_{c}": v for c, v in dice.items()},
                     "volume_error": abs(int((prediction > 0).sum()) - true_volume) / max(true_volume, 1)})
    return rows


def summarize(rows: list[dict]) -> tuple[float, float]:
    """Mean test Dice and IoU over cases."""
    if not rows:
        return float("nan"), float("nan")
    return float(np.mean([r["dice"] for r in rows])), float(np.mean([r["iou"] for r in rows]))


def evaluate_model(params: Params, root: Path) -> EvaluationResult:
    import mlflow

    from tasks.tracking.store import configure_tracking

    configure_tracking(params.tracking, root)
    train_info = json.loads((root / params.train.output_dir / "train.json").read_text(encoding="utf-8"))
    model, plan = load_model(str(root / params.train.output_dir / "model.pt"))
    device = resolve_device(params.train.device, "train.device")
    items = load_cases(root / params.preprocess.output_dir, plan.split.test)
    manifest = json.loads((root / params.data.dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    spacing = {case["case_id"]: case["spacing"][: plan.spatial_dims] for case in manifest["cases"]}
    for item in items:  # HD95 in mm
        item["spacing"] = spacing.get(item["case_id"])
    rows = score_cases(model.to(device), plan, items, params.infer.overlap, device)
    test_dice, test_iou = summarize(rows)
    metrics_dir = root / "outputs" / "metrics"
    write_json(metrics_dir / "test.json", {"test_dice": test_dice, "test_iou": test_iou, "cases": len(rows)})
    table = io.StringIO()
    if rows:
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(metrics_dir / "test_cases.csv", table.getvalue())
    with mlflow.start_run(run_id=train_info["run_id"]):
        mlflow.log_metrics({"test_dice": test_dice, "test_iou": test_iou})
        if rows:
            mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "evaluation/test_cases.json")
    return EvaluationResult(run_id=train_info["run_id"], test_dice=test_dice, test_iou=test_iou, cases=rows)
