"""evaluate: test-set metrics of the trained model, logged into its MLflow run."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.evaluation.evaluate import evaluate_model

evaluate_task = task(evaluate_model, name="evaluate-model", cache_policy=NO_CACHE)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(root: str = ".", params_file: str | None = "params.yaml",
                  overrides: list[str] | None = None) -> dict:
    root_path, params = project(root, params_file, overrides)
    result = evaluate_task(params, root_path)
    print(f"evaluate: test Dice {result.test_dice:.4f}, IoU {result.test_iou:.4f} over {len(result.cases)} cases")
    return {"run_id": result.run_id, "test_dice": result.test_dice, "test_iou": result.test_iou,
            "cases": len(result.cases)}
