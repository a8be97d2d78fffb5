"""evaluate: test-set metrics of a model, logged into its MLflow run.

Without ``version`` it scores the champion's files (``outputs/model`` → ``outputs/metrics``: the DVC
``evaluate`` stage); with one, candidate version N in ``outputs/candidates/vN`` (→ ``vN/metrics``), which is
how ``train`` and ``retrain`` score a candidate before deciding whether it may replace the champion.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.evaluation.evaluate import evaluate_model
from tasks.tracking.published import version_dir

evaluate_task = task(evaluate_model, name="evaluate-model", cache_policy=NO_CACHE)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(root: str = ".", params_file: str | None = "params.yaml",
                  overrides: list[str] | None = None, version: str | None = None) -> dict:
    root_path, params = project(root, params_file, overrides)
    if version is None:
        result = evaluate_task(params, root_path)
    else:
        folder = version_dir(params, root_path, version)
        result = evaluate_task(params, root_path, model_dir=folder, metrics_dir=folder / "metrics")
    objects = (f", object F1@0.5 {result.objects['test_object_f1']:.4f}, PQ {result.objects['test_pq']:.4f}"
               if result.objects else "")
    print(f"evaluate: {'champion' if version is None else f'version {version}'}: test Dice {result.test_dice:.4f}, "
          f"IoU {result.test_iou:.4f}{objects} over {len(result.cases)} cases")
    # the object scores (test_object_f1, test_aji, test_pq, ...) only when the test cases have instance maps
    return {"run_id": result.run_id, "test_dice": result.test_dice, "test_iou": result.test_iou,
            "cases": len(result.cases), "version": version, **result.objects}
