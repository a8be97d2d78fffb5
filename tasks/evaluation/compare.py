"""Bake-off: train several variants on the same split, budget and seed, and compare them.

Which depth or variant of the U-Net family is best depends on the dataset (the UNet++ paper's
point); this answers it on the user's own data. Each variant is a nested MLflow run under one
parent run, so the MLflow UI shows them side by side with the same metric names; the parent run keeps
the table (``comparison.json``/``.md``) and a bar chart of test Dice and seconds per epoch
(``comparison.png``). Every run is named ``compare-<variant>-<dims>-<data>-<time>-<hex>``
(tasks/tracking/run_names.py), so repeated bake-offs do not repeat names. When the test cases have instance
maps, the table also has each variant's object F1 at IoU 0.5 and panoptic quality (``object_f1``, ``pq``):
which variant keeps touching objects apart is often the question the Dice column cannot answer.
"""

from __future__ import annotations

import io
from pathlib import Path

from tasks.common.atomic import atomic_path, write_json, write_text
from tasks.common.devices import resolve_device
from tasks.common.plan import PLAN_FILE, Plan
from tasks.config import Params
from tasks.evaluation.evaluate import object_metrics_for_mlflow, score_cases, summarize, summarize_objects, test_cases
from tasks.preprocess.planning import variant_network
from tasks.tracking.artifacts import log_comparison_chart
from tasks.tracking.model_package import load_model
from tasks.tracking.run_names import column_tags, run_name
from tasks.training.trainer import train_model

COLUMNS = ("variant", "test_dice", "test_iou", "best_val_dice", "parameters", "seconds_per_epoch", "peak_memory_mb")
OBJECT_COLUMNS = ("object_f1", "pq")  # only when every variant was scored on instance maps


def table_columns(rows: list[dict]) -> tuple[str, ...]:
    """``COLUMNS``, with the object columns after the test scores when every row has them."""
    if rows and all(c in row for row in rows for c in OBJECT_COLUMNS):
        return (*COLUMNS[:3], *OBJECT_COLUMNS, *COLUMNS[3:])
    return COLUMNS


def variant_params(params: Params, variant: str) -> Params:
    """The same config with another network; options specific to the base network are dropped.

    So are the loss terms that follow the base model's options (deep supervision's weighting, the CGM's
    weight): a variant without those options has no heads to train, and the schema refuses such a term."""
    loss_options = {k: v for k, v in params.train.loss_options.items() if k not in ("deep_supervision", "cgm_weight")}
    return params.model_copy(update={"model": params.model.model_copy(update={"name": variant, "options": {}}),
                                     "train": params.train.model_copy(update={"loss_options": loss_options})})


def format_table(rows: list[dict]) -> str:
    columns = table_columns(rows)
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    for row in rows:
        lines.append(" | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return "\n".join(lines)


def compare_variants(params: Params, root: Path, variants: list[str], params_file: Path | None = None) -> list[dict]:
    """Train, then test, each variant as a nested run; ``params_file`` (what ``params`` was read from) is
    kept with every variant's run, as ``train_model`` keeps it."""
    import mlflow

    from tasks.tracking.store import configure_tracking

    configure_tracking(params.tracking, root)
    # Validate every variant before training the first, so a typo does not waste the others' time.
    candidates = [variant_params(params, v) for v in variants]
    for candidate in candidates:
        Params.model_validate(candidate.model_dump())
    device = resolve_device(params.train.device, "train.device")
    base_plan = Plan.read(root / params.preprocess.output_dir / PLAN_FILE)  # one preprocessing for every variant
    rows = []
    with mlflow.start_run(run_name=run_name(params, base_plan, root, "compare", variant="+".join(variants))) as parent:
        mlflow.set_tags({**column_tags(params, base_plan, root), "unetflow.model": ",".join(variants),
                         "unetflow.stage": "compare"})
        mlflow.log_params({"variants": ",".join(variants), "train.epochs": params.train.epochs,
                           "train.seed": params.train.seed})
        for variant, candidate in zip(variants, candidates, strict=True):
            output_dir = root / "outputs" / "compare" / variant
            plan = base_plan.with_network(variant_network(base_plan, candidate.model))
            result = train_model(candidate, root, output_dir=output_dir, register=False, nested=True,
                                 run_name=run_name(candidate, plan, root, "compare"),
                                 extra_tags={"unetflow.parent": parent.info.run_id}, plan=plan,
                                 params_file=params_file)
            model, plan = load_model(result.checkpoint)
            dataset = root / params.data.dataset_dir
            scored = score_cases(model.to(device), plan, dataset, test_cases(dataset, plan), params.infer.overlap,
                                 device, params.infer.instances)
            test_dice, test_iou = summarize(scored)
            objects = summarize_objects(scored)  # empty without instance maps
            with mlflow.start_run(run_id=result.run_id, nested=True):
                mlflow.log_metrics({"test_dice": test_dice, "test_iou": test_iou,  # the chart's two axes
                                    "seconds_per_epoch": result.seconds_per_epoch,
                                    **object_metrics_for_mlflow(objects)})
            rows.append({"variant": variant, "test_dice": test_dice, "test_iou": test_iou,
                         "best_val_dice": result.best_val_dice, "parameters": result.parameters,
                         "seconds_per_epoch": result.seconds_per_epoch, "peak_memory_mb": result.peak_memory_mb,
                         "run_id": result.run_id,
                         **({"object_f1": objects["test_object_f1"], "pq": objects["test_pq"]} if objects else {})})
        mlflow.log_table({c: [r[c] for r in rows] for c in (*table_columns(rows), "run_id")}, "comparison.json")
        mlflow.log_text(format_table(rows), "comparison.md")
        chart = log_comparison_chart(rows, "comparison.png")
    out = root / "outputs" / "compare"
    with atomic_path(out / "comparison.png") as tmp:
        chart.savefig(tmp, format="png")
    write_json(out / "comparison.json", rows)
    buffer = io.StringIO(format_table(rows))
    write_text(out / "comparison.md", buffer.getvalue() + "\n")
    return rows
