"""nnU-Net v2's own planner on nnU-Net raw datasets; prints one JSON document to stdout.

Run by ``benchmarks/planning.py`` in the interpreter of the ``planning-bench`` extra (``make bench-planning``
builds ``.venv-nnunet``): fingerprint extraction (``extract_fingerprints``) and the default
``ExperimentPlanner`` (``plan_experiments``), exactly as ``nnUNetv2_plan_and_preprocess -d ID`` would plan
(no preprocessing). For each dataset it prints nnU-Net's own files untouched (``nnUNetPlans.json`` and the
spacings / shapes of ``dataset_fingerprint.json``): axis orders are nnU-Net's (SimpleITK z, y, x, then
``transpose_forward``), the caller maps them back.

Usage: python benchmarks/nnunet_planner.py --work DIR DatasetXXX_Name [...]
       (DIR/nnUNet_raw/DatasetXXX_Name must exist; nnU-Net's prints go to stderr)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder holding nnUNet_raw/")
    parser.add_argument("--processes", type=int, default=2, help="fingerprint worker processes")
    parser.add_argument("datasets", nargs="+", help="DatasetXXX_Name folders under WORK/nnUNet_raw")
    args = parser.parse_args()
    work = args.work.resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)  # nnunetv2.paths reads these at import
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # threads of the planner's network estimate

    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints a lot: keep stdout for the JSON
        import nnunetv2
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

        results = {}
        for folder in args.datasets:
            dataset_id = int(folder.split("_", 1)[0].removeprefix("Dataset"))
            start = time.perf_counter()
            extract_fingerprints([dataset_id], num_processes=args.processes, check_dataset_integrity=True,
                                 clean=True, verbose=False, show_progress_bar=False)
            fingerprinted = time.perf_counter()
            plans_name = plan_experiments([dataset_id])  # default ExperimentPlanner, 8 GB target
            planned = time.perf_counter()
            preprocessed = work / "nnUNet_preprocessed" / folder
            fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
            results[folder] = {
                "plans": json.loads((preprocessed / f"{plans_name}.json").read_text()),
                "fingerprint": {key: fingerprint[key] for key in
                                ("spacings", "shapes_after_crop", "median_relative_size_after_cropping")},
                "seconds": {"fingerprint": round(fingerprinted - start, 2), "plan": round(planned - fingerprinted, 2)},
            }
    json.dump({"nnunetv2": nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else _version(),
               "datasets": results}, sys.stdout)
    print()


def _version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


if __name__ == "__main__":
    main()
