"""compare: a variant bake-off on the preprocessed data, one parent MLflow run (table and chart) with nested runs."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import project
from tasks.evaluation.compare import compare_variants, format_table

compare_task = task(compare_variants, name="compare-variants", cache_policy=NO_CACHE)


@flow(name="compare", log_prints=True)
def compare_flow(variants: list[str], root: str = ".", params_file: str | None = "params.yaml",
                 overrides: list[str] | None = None) -> list[dict]:
    root_path, params = project(root, params_file, overrides)
    rows = compare_task(params, root_path, variants,
                        params_file=None if params_file is None else root_path / params_file)
    print("compare:\n" + format_table(rows) + f"\nchart: {root_path / 'outputs' / 'compare' / 'comparison.png'} "
          "(also comparison.png in the parent MLflow run)")
    return rows
