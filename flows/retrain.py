"""retrain: the scheduled chain — ingest → preprocess → train → evaluate → promote."""

from __future__ import annotations

from prefect import flow

from flows.common import project
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.train import train_flow
from tasks.tracking.registry import promote_if_better
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
    trained = train_flow(**stage_args, nproc=nproc)
    evaluated = evaluate_flow(**stage_args)
    decision = promote_if_better(params.tracking.model_name, trained["registered_version"],
                                 trained["run_id"], evaluated["test_dice"])
    print(f"retrain: version {decision.version} {'promoted to champion' if decision.promoted else 'not promoted'}"
          f" ({decision.reason})")
    return {"ingest": ingest, "preprocess": preprocess, "train": trained, "evaluate": evaluated,
            "promoted": decision.promoted, "reason": decision.reason, "version": decision.version}
