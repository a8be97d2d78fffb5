"""The preprocess stage in this process, one case after another: what ``flows/preprocess.py`` maps over a
task runner, for callers without Prefect (tests, benchmarks, a notebook).

Same steps, same order: the split, the training cases' intensity samples, the plan, then every case. Kept
here once so a caller never re-assembles them (and silently drifts from the flow, e.g. by dropping the
non-zero shapes the intensity pass now returns).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.common.plan import Plan
from tasks.config import Params
from tasks.preprocess.cases import preprocess_case
from tasks.preprocess.intensity_stats import case_intensity_sample
from tasks.preprocess.planning import plan_from_samples, plan_split, training_cases, write_plan


def plan_dataset(dataset_dir: Path, params: Params) -> Plan:
    """The plan of the canonical dataset in ``dataset_dir`` (nothing written)."""
    manifest = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    split = plan_split(manifest, params.data)
    samples = [case_intensity_sample(dataset_dir, case, params.preprocess.intensity_samples)
               for case in training_cases(manifest, split)]
    return plan_from_samples(manifest, params, split, samples)


def preprocess_dataset(root: Path, params: Params) -> tuple[Plan, list[dict[str, Any]]]:
    """(plan, per-case results) after writing every case and ``plan.json`` under ``root``, as the flow does."""
    dataset = root / params.data.dataset_dir
    plan = plan_dataset(dataset, params)
    manifest = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    output, cache = root / params.preprocess.output_dir, root / params.preprocess.weight_map_cache
    results = [preprocess_case(dataset, case, plan, params.preprocess, output, cache) for case in manifest["cases"]]
    write_plan(output, plan)
    return plan, results
