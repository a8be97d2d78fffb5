"""preprocess: decide the plan from the dataset, then normalise cases and attach weight maps.

The per-case tasks run on the runner ``preprocess.runner`` / ``workers`` / ``dask_address`` ask for
(threads here, or a Dask cluster), the same keys as ``infer``.
"""

from __future__ import annotations

import json

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.common import project, task_runner_for
from tasks.preprocess.cases import preprocess_case
from tasks.preprocess.intensity_stats import case_intensity_sample
from tasks.preprocess.planning import plan_from_samples, plan_split, training_cases, write_plan

case_intensity_sample_task = task(case_intensity_sample, name="intensity-sample", cache_policy=NO_CACHE)
preprocess_case_task = task(preprocess_case, name="preprocess-case", cache_policy=NO_CACHE)


@flow(name="preprocess", log_prints=True)
def preprocess_flow(root: str = ".", params_file: str | None = "params.yaml",
                    overrides: list[str] | None = None) -> dict:
    root_path, params = project(root, params_file, overrides)
    dataset = root_path / params.data.dataset_dir
    output = root_path / params.preprocess.output_dir
    cache = root_path / params.preprocess.weight_map_cache
    manifest = json.loads((dataset / "dataset.json").read_text())
    config = params.preprocess
    # Intensity statistics come from the training cases only, never from what will be validated or tested.
    split = plan_split(manifest, params.data)
    with task_runner_for(config.runner, config.workers, config.dask_address) as runner:
        samples = runner.map(case_intensity_sample_task, {
            "dataset_dir": unmapped(dataset), "case": training_cases(manifest, split),
            "max_samples": unmapped(config.intensity_samples)})
        plan = plan_from_samples(manifest, params, split, [future.result() for future in samples])
        # Every case (weight maps included, cached on disk by label hash + w0/σ) in parallel.
        futures = runner.map(preprocess_case_task, {
            "dataset_dir": unmapped(dataset), "case": manifest["cases"], "plan": unmapped(plan),
            "config": unmapped(config), "output_dir": unmapped(output), "cache_dir": unmapped(cache)})
        results = [future.result() for future in futures]
    write_plan(output, plan)
    resampled = sum(bool(r["resampled"]) for r in results)
    for result in results:  # an object smaller than a target voxel: kept, and said
        if result["restored_classes"]:
            print(f"preprocess: {result['case_id']}: class(es) {result['restored_classes']} would have vanished "
                  f"when resampled to {list(plan.target_spacing or [])} mm; kept at their strongest voxel")
    if plan.memory and plan.memory["method"].startswith("estimated") and plan.memory["gb_at_batch_size"] > 2:
        print(f"preprocess: the patch and batch are planned for a GPU with {plan.memory['budget_gb']} GB "
              f"(train.memory_budget_gb); training them on this machine's CPU is slow. For a CPU run, plan "
              f"for less: --set train.memory_budget_gb=1 (or a smaller train.patch_size)")
    cached = sum(bool(r["weight_map_cached"]) for r in results)
    computed = sum(r["weight_map_cached"] is False for r in results)
    print(f"preprocess: {len(results)} cases, plan {plan.spatial_dims}D at {plan.target_spacing} mm, patch "
          f"{list(plan.patch_size)} × batch {plan.batch_size}, "
          f"{resampled} resampled, weight maps {cached} cached / {computed} computed → {output}")
    return {"cases": len(results), "resampled": resampled, "weight_maps_cached": cached,
            "weight_maps_computed": computed, "plan": str(output / "plan.json")}
