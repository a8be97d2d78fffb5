"""ingest: the raw inbox (``data/``) → a canonical, validated dataset with a manifest."""

from __future__ import annotations

import logging

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import project
from tasks.ingest import discover_cases, ingest_case, write_manifest

log = logging.getLogger("unetflow.ingest")
ingest_case_task = task(ingest_case, name="ingest-case", cache_policy=NO_CACHE)


class NothingAccepted(RuntimeError):
    """No case passed validation: there is no dataset to train on."""


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def ingest_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
                strict: bool = False) -> dict:
    root_path, params = project(root, params_file, overrides)
    data = params.data
    raw = root_path / data.raw_dir
    output = root_path / data.dataset_dir
    sources, problems = discover_cases(raw / data.images_dir, raw / data.labels_dir)
    futures = ingest_case_task.map(source=sources, output_dir=unmapped(output),
                                   label_names=unmapped(data.label_names),
                                   instance_labels=unmapped(data.instance_labels))
    results = problems + [future.result() for future in futures]
    manifest = write_manifest(output, results, data.label_names, data.instance_labels)
    rejected = [r for r in results if not r.accepted]
    warnings = [w for r in results for w in r.warnings]
    for result in rejected:
        log.warning("rejected %s: %s", result.case_id, result.reason)
    for warning in warnings:
        log.warning("warning: %s", warning)
    summary = {"accepted": manifest["num_cases"], "rejected": len(rejected), "warnings": len(warnings),
               "written": sum(r.written for r in results), "dataset": str(output)}
    print(f"ingest: {summary['accepted']} accepted, {summary['rejected']} rejected, "
          f"{summary['warnings']} warnings, {summary['written']} (re)written → {output}")
    if manifest["num_cases"] == 0 or (strict and rejected):
        raise NothingAccepted(f"ingest: {len(rejected)} cases rejected, {manifest['num_cases']} accepted; "
                              f"see {output / 'rejected.json'}")
    return summary
