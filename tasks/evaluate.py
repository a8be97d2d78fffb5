"""Evaluate: test-set metrics per case for the trained model, logged into its training run."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.atomic import write_json, write_text
from tasks.config import Params
from tasks.data import load_cases
from tasks.inference import dice_per_class, iou_per_class, predict_labels
from tasks.model_package import load_model


@dataclass
class EvaluationResult:
    run_id: str
    test_dice: float
    test_iou: float
    cases: list[dict]


def evaluate_model(params: Params, root: Path) -> EvaluationResult:
    import mlflow

    from tasks.tracking import configure_tracking

    configure_tracking(params.tracking, root)
    train_info = json.loads((root / params.train.output_dir / "train.json").read_text())
    model, plan = load_model(str(root / params.train.output_dir / "model.pt"))
    device = torch.device("cuda" if torch.cuda.is_available() and params.train.device != "cpu" else "cpu")
    model = model.to(device)
    items = load_cases(root / params.preprocess.output_dir, plan["split"]["test"])
    rows = []
    for item in items:
        prediction = predict_labels(model, item["image"], tuple(plan["patch_size"]),
                                    overlap=params.infer.overlap, device=device)
        truth = item["label"][0]
        dice = dice_per_class(prediction, truth, plan["num_classes"])
        iou = iou_per_class(prediction, truth, plan["num_classes"])
        rows.append({"case_id": item["case_id"], "dice": float(np.mean(list(dice.values()))),
                     "iou": float(np.mean(list(iou.values()))),
                     **{f"dice_{c}": v for c, v in dice.items()},
                     "volume_error": float(abs(int((prediction > 0).sum()) - int((truth > 0).sum()))
                                           / max(int((truth > 0).sum()), 1))})
    test_dice = float(np.mean([r["dice"] for r in rows])) if rows else float("nan")
    test_iou = float(np.mean([r["iou"] for r in rows])) if rows else float("nan")
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
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]} if rows else {}, "evaluation/test_cases.json")
    return EvaluationResult(run_id=train_info["run_id"], test_dice=test_dice, test_iou=test_iou, cases=rows)
