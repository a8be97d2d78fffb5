"""infer: segment a folder of new studies with a registered model (or a run, or a checkpoint).

The outer flow resolves the model once (failing fast on a bad URI), the inner flow maps one task per
case on the chosen task runner: threads by default, or Dask (``infer.runner: dask``) — local worker
processes or the cluster at ``infer.dask_address``. Dask workers get the weights as a checkpoint file
they load once each, never a pickled network per task.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from torch import nn

from flows.common import project, task_runner_for
from flows.reports import report_infer, report_pacs_sync
from tasks.common.plan import Plan
from tasks.inference import batch
from tasks.inference.batch import CaseOutcome
from tasks.inference.segment import InferSettings
from tasks.tracking.model_package import load_model, save_checkpoint
from tasks.tracking.registry import CHAMPION_ALIAS
from tasks.tracking.store import configure_tracking

log = logging.getLogger("unetflow.infer")
segment_task = task(batch.run_case, name="segment-case", cache_policy=NO_CACHE, persist_result=False)


def _load_for(model_uri: str, settings: InferSettings, trust_pickled: bool
              ) -> tuple[nn.Module, Plan, InferSettings]:
    """The model on ``settings``' device, its plan, and ``settings`` stamped with what made the outputs: the
    weights' hash and the registry name and version (an alias resolved now, when the job starts). An older
    registry version (a pickled module) loads only with ``trust_pickled``: unpickling runs its code."""
    network, plan = load_model(model_uri, map_location=settings.torch_device(), trust_pickled=trust_pickled)
    model_name, model_version = batch.model_provenance(model_uri)
    return network, plan, replace(settings, model_id=batch.model_identity(network), model_name=model_name,
                                  model_version=model_version, model_uri=model_uri)


class BatchFailed(RuntimeError):
    """Every case of the batch failed."""


@flow(name="segment-cases", persist_result=False)
def segment_cases_flow(input_dir: str, output_dir: str, model_ref: str, settings: InferSettings,
                       salt: str) -> list[CaseOutcome]:
    batch.remove_stale_temporaries(Path(output_dir))
    cases, problems = batch.discover_cases(Path(input_dir), exclude=Path(output_dir), salt=salt)
    futures = segment_task.map(case=cases, output_dir=unmapped(Path(output_dir)), settings=unmapped(settings),
                               model=unmapped(model_ref))
    outcomes = [future.result() for future in futures]
    return sorted(outcomes + batch.problem_outcomes(problems), key=lambda o: o.case_id)


@flow(name="infer", log_prints=True)
def infer_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
               model: str | None = None, input: str | None = None, output: str | None = None,
               trust_pickled_model: bool = False) -> dict:
    root_path, params = project(root, params_file, overrides)
    configure_tracking(params.tracking, root_path)
    config = params.infer
    model_uri = model or config.model_uri or f"models:/{params.tracking.model_name}@{CHAMPION_ALIAS}"
    input_dir = root_path / (input or config.input_dir)
    output_dir = root_path / (output or config.output_dir)
    settings = InferSettings.from_config(config, params.data, input_root=input_dir)
    device = settings.torch_device()
    network, plan, settings = _load_for(model_uri, settings, trust_pickled_model)
    identity, model_name, model_version = settings.model_id, settings.model_name, settings.model_version
    started_at = batch.utc_now()
    if config.runner == "threads":
        batch.register_model(model_uri, device, network, plan)
        model_ref = model_uri
    else:  # worker processes load a checkpoint file (the output folder is where a cluster can see it)
        model_ref = str(output_dir / ".model" / f"{identity}.pt")
        if not Path(model_ref).exists():
            save_checkpoint(Path(model_ref), {"model": network.state_dict(), "plan": plan.to_json()})
    outcomes = segment_cases_flow.with_options(
        task_runner=task_runner_for(config.runner, config.workers, config.dask_address))(
        input_dir=str(input_dir), output_dir=str(output_dir), model_ref=model_ref, settings=settings,
        salt=params.data.dicom_id_salt)
    summary_path = batch.write_summary(output_dir, outcomes, settings, started_at)
    counts = batch.count(outcomes)
    for failed in counts.failed_cases:
        log.error("failed %s: %s", failed["case_id"], failed["error"])
    no_seg = f", {counts.seg_not_written} without a DICOM SEG (see summary)" if counts.seg_not_written else ""
    print(f"infer: {counts.done} segmented, {counts.skipped} already done, {counts.failed} failed, "
          f"{counts.ignored} ignored{no_seg} → {output_dir} (summary {summary_path.name})")
    result = {"model": model_uri, "model_id": identity, "model_name": model_name, "model_version": model_version,
              "output": str(output_dir), "done": counts.done,
              "skipped": counts.skipped, "failed": counts.failed, "ignored": counts.ignored,
              "seg_not_written": counts.seg_not_written,
              "failed_cases": counts.failed_cases, "summary": str(summary_path)}
    report_infer(result, outcomes)  # before a BatchFailed too: that run's page most needs the reasons
    cases = counts.done + counts.skipped + counts.failed
    if cases and counts.failed == cases:
        raise BatchFailed(f"all {counts.failed} cases failed; first: {counts.failed_cases[0]['error']}")
    return result


class PacsSyncFailed(RuntimeError):
    """Every series the sync tried failed (or the PACS could not even be searched)."""


@flow(name="pacs-sync", log_prints=True)
def pacs_sync_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
                   model: str | None = None, trust_pickled_model: bool = False) -> dict:
    """Segment the PACS's new series with ``infer``'s own path and store a SEG and a volume SR back into each
    study (``tasks.pacs.sync``); the summary (done / skipped / failed with reasons, series by pseudonym) is
    printed, written to ``pacs.work_dir`` and is this run's result. Fails only when every series failed."""
    from tasks.pacs.connect import open_transport, series_filter
    from tasks.pacs.sync import SyncSettings, sync_pacs
    from tasks.pacs.transport import PacsError

    root_path, params = project(root, params_file, overrides)
    configure_tracking(params.tracking, root_path)
    config = params.pacs
    model_uri = (model or config.model_uri or params.infer.model_uri
                 or f"models:/{params.tracking.model_name}@{CHAMPION_ALIAS}")
    transport = open_transport(config, _pacs_secret(config.credentials_block))
    network, plan, settings = _load_for(model_uri, InferSettings.from_config(params.infer, params.data),
                                        trust_pickled_model)
    # a run or a checkpoint has no registry name: the weights' hash names the results (a new one, new results)
    model_name = settings.model_name or params.tracking.model_name
    model_version = settings.model_version or settings.model_id[:12]
    sync = SyncSettings(filters=series_filter(config), work_dir=root_path / config.work_dir,
                        salt=params.data.dicom_id_salt, model_name=model_name, model_version=model_version,
                        infer=settings)
    try:
        summary = sync_pacs(transport, network, plan, sync)
    except PacsError as error:  # the search itself: nothing could be looked at
        raise PacsSyncFailed(f"pacs-sync: {error}") from None
    result = {"model_uri": model_uri, **summary.to_json(), "summary": str(sync.work_dir / "summary.json")}
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            log.error("failed %s: %s", outcome.series, outcome.reason)
    print(f"pacs-sync: {summary.done} segmented and stored, {summary.skipped} skipped, {summary.failed} failed "
          f"(model {model_name} v{model_version}) → {result['summary']}")
    report_pacs_sync(result)
    if summary.all_failed:
        raise PacsSyncFailed(f"all {summary.failed} series failed; first: {summary.outcomes[0].reason}")
    return result


def _pacs_secret(block: str | None) -> object:
    """The value of the Prefect Secret block named in ``pacs.credentials_block`` (None: none configured)."""
    if not block:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(block).get()
