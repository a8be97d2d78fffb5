"""infer: segment a folder of new studies with a registered model (or a run, or a checkpoint)."""

from __future__ import annotations

import logging

import torch
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import project
from tasks.infer import discover_inputs, run_case, write_summary
from tasks.inference import roi_size_for
from tasks.model_package import load_model
from tasks.registry import CHAMPION_ALIAS
from tasks.tracking import configure_tracking

log = logging.getLogger("unetflow.infer")
segment_task = task(run_case, name="segment-case", cache_policy=NO_CACHE)


class BatchFailed(RuntimeError):
    """Every case of the batch failed."""


@flow(name="infer", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def infer_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
               model: str | None = None, input: str | None = None, output: str | None = None) -> dict:
    root_path, params = project(root, params_file, overrides)
    configure_tracking(params.tracking, root_path)
    model_uri = model or params.infer.model_uri or f"models:/{params.tracking.model_name}@{CHAMPION_ALIAS}"
    input_dir = root_path / (input or params.infer.input_dir)
    output_dir = root_path / (output or params.infer.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, plan = load_model(model_uri, map_location=device)
    roi = roi_size_for(plan, params.infer.roi_size)
    cases = discover_inputs(input_dir)
    futures = segment_task.map(case_id=[c for c, _ in cases], path=[p for _, p in cases], model=unmapped(network),
                               plan=unmapped(plan), output_dir=unmapped(output_dir), roi_size=unmapped(roi),
                               overlap=unmapped(params.infer.overlap),
                               sw_batch_size=unmapped(params.infer.sw_batch_size), device=unmapped(device))
    outcomes = [future.result() for future in futures]
    summary_path = write_summary(output_dir, outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        log.error("failed %s: %s", outcome.case_id, outcome.error)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"infer: {counts['done']} segmented, {counts['skipped']} already done, {counts['failed']} failed "
          f"→ {output_dir} (summary {summary_path.name})")
    if outcomes and len(failed) == len(outcomes):
        raise BatchFailed(f"all {len(failed)} cases failed; first: {failed[0].error}")
    return {"model": model_uri, "output": str(output_dir), **counts,
            "failed_cases": [{"case_id": o.case_id, "error": o.error} for o in failed]}


