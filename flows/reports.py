"""What a flow run shows on its Prefect page: artifacts built from the flow's result, and the stage index.

An operator opening a run in the Prefect UI (or ``prefect artifact ls``) should see the outcome without
reading logs: the retrain's test Dice, promotion decision and MLflow run; a batch's done/skipped/failed
cases with reasons and the model used; an ingest's accepted/rejected cases. The retrain also writes one
line per stage into its *own* log naming the stage's sub-run, because ``prefect flow-run logs ID`` shows
one run's log only and the stages' logs live under their sub-runs.

Reporting never fails a flow: the work is done and its files are written when these run, so a Prefect
API that refuses an artifact costs a warning, not the result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.inference.batch import SEG_NOT_WRITTEN

log = logging.getLogger("unetflow.reports")

MAX_ROWS = 500  # a table artifact for a batch of thousands would be slow to load; the summary.csv has all


def artifact_key(text: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from any text."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "report"


def _safely(build: Callable[[], None], what: str) -> None:
    try:
        build()
    except Exception as error:  # the flow's work is done: a refused artifact must not fail it
        log.warning("could not create the %s artifact: %s", what, error)


def _cell(value: Any) -> str:
    """Markdown table cell: pipes and newlines would break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _object_scores(evaluate: dict[str, Any]) -> str:
    """", object F1@0.5 … PQ … AJI …, split / merged objects" when the test cases had instance maps, else ""."""
    f1 = evaluate.get("test_object_f1")
    if not isinstance(f1, float):
        return ""
    named = (("test_pq", "PQ"), ("test_aji", "AJI"))
    scores = [f"object F1@0.5 {f1:.4f}"] + [f"{name} {evaluate[key]:.4f}" for key, name in named
                                             if isinstance(evaluate.get(key), float)]
    return (", " + ", ".join(scores) + f" ({evaluate.get('test_splits', '?')} split, "
            f"{evaluate.get('test_merges', '?')} merged objects)")


def _table_md(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ ingest
def report_ingest(summary: dict[str, Any], results: list[Any]) -> None:
    """Counts, and every rejected case with its reason (``results``: the per-case ``CaseResult``s)."""
    rejected = [{"case_id": r.case_id, "status": "rejected", "reason": r.reason} for r in results if not r.accepted]
    warned = [{"case_id": r.case_id, "status": "warning", "reason": w}
              for r in results if r.accepted for w in r.warnings]
    markdown = "\n".join([
        "# Ingest", "",
        f"**{summary['accepted']} accepted**, **{summary['rejected']} rejected**, {summary['warnings']} warnings, "
        f"{summary['written']} (re)written, {summary['unchanged']} unchanged, {summary['ignored']} files ignored.",
        "", f"Source: `{summary['source']}` → dataset `{summary['dataset']}`", "",
        _table_md(["case", "status", "reason"], [(r["case_id"], r["status"], r["reason"])
                                                 for r in (rejected + warned)[:MAX_ROWS]])
        if rejected or warned else "No case was rejected."])
    _safely(lambda: create_markdown_artifact(markdown, key="ingest-report", description="ingest: what was accepted"),
            "ingest report")
    if rejected or warned:
        _safely(lambda: create_table_artifact((rejected + warned)[:MAX_ROWS], key="ingest-rejected",
                                              description="ingest: rejected cases and warnings, with reasons"),
                "ingest table")


# ------------------------------------------------------------------------------------------------- infer
def report_infer(result: dict[str, Any], outcomes: list[Any]) -> None:
    """Counts, the model (name, version, URI, weights hash) and one row per case with its reason."""
    rows = [{"case_id": o.case_id, "status": o.status, "source": o.source, "mask": o.mask,
             "reason": o.error or (o.dicom_seg if o.dicom_seg.startswith(SEG_NOT_WRITTEN) else "")} for o in outcomes]
    version = f" version {result['model_version']}" if result.get("model_version") else ""
    name = f"`{result['model_name']}`{version} — " if result.get("model_name") else ""
    markdown = "\n".join([
        "# Batch inference", "",
        f"**{result['done']} segmented**, {result['skipped']} already done, **{result['failed']} failed**, "
        f"{result['ignored']} ignored, {result['seg_not_written']} without a DICOM SEG.", "",
        f"Model: {name}`{result['model']}` (weights {result['model_id']})", "",
        f"Output: `{result['output']}` — summary `{result['summary']}` (earlier runs: `runs/index.csv`)", "",
        _table_md(["case", "status", "reason"], [(r["case_id"], r["status"], r["reason"])
                                                 for r in rows if r["status"] != "done" or r["reason"]][:MAX_ROWS])
        if any(r["status"] != "done" or r["reason"] for r in rows) else "Every case was segmented."])
    _safely(lambda: create_markdown_artifact(markdown, key="infer-report", description="batch inference outcome"),
            "infer report")
    _safely(lambda: create_table_artifact(rows[:MAX_ROWS] or [{"case_id": "", "status": "no cases"}],
                                          key="infer-cases", description="batch inference: every case"),
            "infer table")


def report_pacs_sync(result: dict[str, Any]) -> None:
    """Counts, the model and one row per series that was not simply done (pseudonyms, never UIDs or names)."""
    counts, model = result["counts"], result["model"]
    rows = [(s["series"], s["status"], s["reason"]) for s in result["series"] if s["status"] != "done"]
    markdown = "\n".join([
        "# PACS sync", "",
        f"**{counts['done']} segmented and stored**, {counts['skipped']} skipped, **{counts['failed']} failed**.", "",
        f"Model: `{model['name']}` version {model['version']}", "", f"Summary: `{result['summary']}`", "",
        _table_md(["series", "status", "reason"], rows[:MAX_ROWS]) if rows else "Every series was segmented."])
    _safely(lambda: create_markdown_artifact(markdown, key="pacs-sync-report", description="PACS sync outcome"),
            "pacs-sync report")


# ----------------------------------------------------------------------------------------------- retrain
def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current run's logger: its lines reach the run's log whatever PREFECT_LOGGING_EXTRA_LOGGERS says."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def stage_runs() -> list[dict[str, str]]:
    """The current flow run's sub-runs (the stages), oldest first: flow, run name, ID, final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
        names = {flow_id: client.read_flow(flow_id).name for flow_id in {r.flow_id for r in runs}}
    runs = sorted(runs, key=lambda r: (r.start_time or r.expected_start_time or r.created).timestamp())
    return [{"stage": names[r.flow_id], "run_name": r.name, "run_id": str(r.id),
             "state": r.state.name if r.state else ""} for r in runs]


def mlflow_run_link(run_id: str) -> tuple[str, str, str]:
    """(tracking URI, experiment ID, UI link) of an MLflow run; a file store links to ``mlflow ui``'s address."""
    import mlflow
    from mlflow import MlflowClient

    uri = mlflow.get_tracking_uri()
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return uri, experiment, f"{base}/#/experiments/{experiment}/runs/{run_id}"


def report_retrain(result: dict[str, Any]) -> None:
    """One log line per stage (its sub-run's name and ID), then the Dice / promotion / MLflow artifacts."""
    stages: list[dict[str, str]] = []
    try:
        stages = stage_runs()
    except Exception as error:
        log.warning("could not list the retrain's stage runs: %s", error)
    run_log = _run_logger()
    for stage in stages:
        run_log.info("retrain stage %s: sub-run %s (%s) %s; its log: prefect flow-run logs %s", stage["stage"],
                 stage["run_name"], stage["run_id"], stage["state"], stage["run_id"])
    train, evaluate = result.get("train", {}), result.get("evaluate", {})
    run_id = train.get("run_id", "")
    uri = experiment = link = ""
    if run_id:
        try:
            uri, experiment, link = mlflow_run_link(run_id)
        except Exception as error:
            log.warning("could not read MLflow run %s: %s", run_id, error)
    decision = "promoted to champion" if result.get("promoted") else "not promoted"
    dice = evaluate.get("test_dice")
    markdown = "\n".join([
        "# Retrain", "",
        (f"**Test Dice: {dice:.4f}**" if isinstance(dice, float) else f"Test Dice: {dice}")
        + _object_scores(evaluate) + f" over {evaluate.get('cases', '?')} held-out cases", "",
        f"**Model version {result.get('version')}: {decision}** — {result.get('reason', '')}", "",
        f"MLflow: tracking URI `{uri}`, experiment `{experiment}`, run `{run_id}`"
        + (f" — [open the run]({link})" if link else ""), "",
        "## Stages", "",
        _table_md(["stage", "sub-run", "ID", "state"], [(s["stage"], s["run_name"], s["run_id"], s["state"])
                                                        for s in stages]) if stages else "(not available)",
        "", "Each stage's log: `prefect flow-run logs <ID>`."])
    _safely(lambda: create_markdown_artifact(markdown, key="retrain-report", description="retrain outcome"),
            "retrain report")
    if link:
        _safely(lambda: create_link_artifact(link, link_text=f"MLflow run {run_id}", key="retrain-mlflow-run",
                                             description=f"tracking URI {uri}, experiment {experiment}, run "
                                                         f"{run_id} (a local store: `mlflow ui --backend-store-uri "
                                                         f"{uri}` serves this address)"), "retrain link")
    if stages:
        _safely(lambda: create_table_artifact(stages, key="retrain-stages", description="retrain: one sub-run per "
                                              "stage; `prefect flow-run logs ID` shows a stage's log"),
                "retrain stages")
