"""retrain: the scheduled chain — ingest → preprocess → train → evaluate → promote.

The candidate is trained and scored in ``outputs/candidates/vN``; only a promotion (its ``tracking.promote_on``
score, test Dice by default, at least ``tracking.min_test_score`` and above the champion's) copies it into
``outputs/model`` and ``outputs/metrics``, so a losing retrain leaves the champion's files, and DVC's record
of them, as they were.
"""

from __future__ import annotations

from prefect import flow

from flows.common import project
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.reports import report_retrain
from flows.train import train_flow
from tasks.tracking.published import promote_candidate, promotion_score
from tasks.tracking.store import configure_tracking


@flow(name="retrain", log_prints=True)
def retrain_flow(root: str = ".", params_file: str | None = "params.yaml",
                 overrides: list[str] | None = None, nproc: int = 1) -> dict:
    """``nproc`` > 1 trains with DDP in that many torchrun processes (e.g. ``--param nproc=4``)."""
    root_path, params = project(root, params_file, overrides)
    configure_tracking(params.tracking, root_path)  # a bad store fails before ingest, not after training
    stage_args = {"root": str(root_path), "params_file": params_file, "overrides": overrides}
    ingest = ingest_flow(**stage_args)
    preprocess = preprocess_flow(**stage_args)
    trained = train_flow(**stage_args, nproc=nproc, promote=False)
    evaluated = evaluate_flow(**stage_args, version=trained["registered_version"])
    decision = promote_candidate(params, root_path, trained["registered_version"], trained["run_id"],
                                 promotion_score(params, evaluated))  # tracking.promote_on's value
    print(f"retrain: version {decision.version} {'promoted to champion' if decision.promoted else 'not promoted'}"
          f" ({decision.reason})")
    result = {"ingest": ingest, "preprocess": preprocess, "train": trained, "evaluate": evaluated,
              "promoted": decision.promoted, "reason": decision.reason, "version": decision.version}
    report_retrain(result)  # stage sub-runs into this run's log; Dice, promotion, MLflow link as artifacts
    return result
