"""ingest: the raw inbox (``data/``) → a canonical, validated dataset with a manifest.

Thin on purpose: discovery, per-case validation and the manifest are plain functions in
``tasks/ingest/``; the flow maps the per-case task over the cases (``data.workers`` threads: the
heavy parts — GDCM decode, ISA-L deflate, sha256 — release the GIL) and prints the summary table.
"""

from __future__ import annotations

import logging

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import project
from flows.reports import report_ingest
from tasks.ingest.batch import finish_ingest, plan_ingest, summary_table
from tasks.ingest.case import ingest_case

log = logging.getLogger("unetflow.ingest")
# Case inputs are large and change under the same name: never cache, the index decides what to skip.
ingest_case_task = task(ingest_case, name="ingest-case", cache_policy=NO_CACHE)


class NothingAccepted(RuntimeError):
    """No case passed validation (or, with ``--strict``, some case did not): no dataset to train on."""


@flow(name="ingest", log_prints=True)
def ingest_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
                strict: bool = False) -> dict:
    root_path, params = project(root, params_file, overrides)
    data = params.data
    output = root_path / data.dataset_dir
    plan = plan_ingest(root_path / data.raw_dir, output, data)  # DatasetRejected (nothing written) propagates
    settings = plan.settings  # the classes as resolved from dataset.json or data.label_names
    with ThreadPoolTaskRunner(max_workers=data.workers) as runner:  # params decide the width, not the decorator
        futures = runner.map(ingest_case_task, {"source": plan.sources, "output_dir": unmapped(output),
                                                "settings": unmapped(settings), "previous": plan.previous})
        case_results = [future.result() for future in futures]
    manifest, results = finish_ingest(output, plan, case_results, settings)
    rejected = [r for r in results if not r.accepted]
    for result in rejected:
        log.warning("rejected %s: %s", result.case_id, result.reason)
    print(summary_table(results, manifest, data.dataset_dir, len(plan.ignored)))
    summary = {"source": plan.kind, "accepted": manifest["num_cases"], "rejected": len(rejected),
               "warnings": sum(len(r.warnings) for r in results if r.accepted),
               "written": sum(r.written for r in results), "unchanged": sum(r.unchanged for r in results),
               "ignored": len(plan.ignored), "dataset": str(output)}
    report_ingest(summary, results)  # before NothingAccepted too: the rejections are the story then
    if manifest["num_cases"] == 0 or (strict and rejected):
        raise NothingAccepted(f"ingest: {len(rejected)} cases rejected, {manifest['num_cases']} accepted; "
                              f"see {data.dataset_dir}/rejected.json")
    return summary
