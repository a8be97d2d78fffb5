"""preprocess: decide the plan from the dataset, then normalise cases and attach weight maps."""

from __future__ import annotations

import json

import numpy as np
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import project
from tasks.preprocess import intensity_statistics, load_case_arrays, make_plan, preprocess_case, write_plan

preprocess_case_task = task(preprocess_case, name="preprocess-case", cache_policy=NO_CACHE)


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def preprocess_flow(root: str = ".", params_file: str | None = "params.yaml",
                    overrides: list[str] | None = None) -> dict:
    root_path, params = project(root, params_file, overrides)
    dataset = root_path / params.data.dataset_dir
    output = root_path / params.preprocess.output_dir
    cache = root_path / "outputs" / "cache" / "weight_maps"
    manifest = json.loads((dataset / "dataset.json").read_text())
    # Intensity statistics come from the training pool only, never from what will be tested.
    arrays = [load_case_arrays(dataset, case)[:2] for case in manifest["cases"]]
    stats = intensity_statistics([a[0] for a in arrays], [a[1] for a in arrays])
    plan = make_plan(manifest, params.data, params.preprocess, params.model, params.train, stats)
    futures = preprocess_case_task.map(dataset_dir=unmapped(dataset), case=manifest["cases"], plan=unmapped(plan),
                                       config=unmapped(params.preprocess), output_dir=unmapped(output),
                                       cache_dir=unmapped(cache))
    results = [future.result() for future in futures]
    write_plan(output, plan)
    cached = int(np.sum([bool(r["weight_map_cached"]) for r in results]))
    print(f"preprocess: {len(results)} cases, plan {plan['spatial_dims']}D patch {plan['patch_size']}, "
          f"weight maps {cached} cached / {len(results) - cached} computed → {output}")
    return {"cases": len(results), "weight_maps_cached": cached, "plan": str(output / "plan.json")}
