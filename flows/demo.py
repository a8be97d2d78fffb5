"""demo: the whole product on an embedded dataset — data → DVC → retrain → batch inference.

Writes a small deterministic set of touching-cell images into ``data/``, versions it with DVC,
runs the retrain flow (ingest → preprocess → train → evaluate → promote), segments the held-out
images with the champion, and records the stage outputs in ``dvc.lock`` so that ``dvc repro``
afterwards finds the pipeline up to date.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow

from flows.common import project
from flows.infer import infer_flow
from flows.retrain import retrain_flow
from tasks.ingest.synthetic import SyntheticSpec, write_synthetic_dataset
from tasks.tracking.registry import CHAMPION_ALIAS
from tasks.tracking.store import tracking_uri


class DvcError(RuntimeError):
    """A dvc command failed; the message carries its output."""


def run_dvc(root: Path, *args: str) -> str:
    """Run the dvc CLI of this interpreter's environment (its stages call ``unetflow`` from there too)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=600)
    if done.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    return done.stdout


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


@flow(name="demo", log_prints=True)
def demo_flow(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None,
              n_train: int = 24, n_test: int = 4) -> dict:
    root_path, params = project(root, params_file, overrides)
    raw = root_path / params.data.raw_dir
    counts = write_synthetic_dataset(raw, SyntheticSpec(n_train=n_train, n_test=n_test))
    print(f"demo: wrote {counts['train']} labelled and {counts['test']} unlabelled images to {raw}")
    versioned = is_dvc_repo(root_path)
    if versioned:
        run_dvc(root_path, "add", "-q", params.data.raw_dir)
    result = retrain_flow(root=str(root_path), params_file=params_file, overrides=overrides)
    model_uri = f"models:/{params.tracking.model_name}@{CHAMPION_ALIAS}"
    if not result["promoted"]:
        model_uri = f"models:/{params.tracking.model_name}/{result['version']}"
    # The demo's cells touch: unless params.yaml chose an instance method, show them separated (watershed).
    instances = [] if params.infer.instances != "none" else ["infer.instances=watershed"]
    inferred = infer_flow(root=str(root_path), params_file=params_file, overrides=[*(overrides or []), *instances],
                          model=model_uri)
    if versioned:
        # Record what the flows just produced as the DVC stages' outputs (no recomputation).
        run_dvc(root_path, "commit", "-f")
    test_dice = result["evaluate"]["test_dice"]
    object_f1 = result["evaluate"].get("test_object_f1")  # the synthetic cells come with instance maps
    objects = "" if object_f1 is None else f", object F1@0.5: {object_f1:.4f}"
    print(f"\nTest Dice: {test_dice:.4f}{objects} over {result['evaluate']['cases']} held-out labelled cases")
    method = "watershed" if instances else params.infer.instances
    shown = "" if method == "none" else f" (and <case>_instances.nii.gz, one id per cell: {method})"
    print(f"Masks of {inferred['done'] + inferred['skipped']} new images: {inferred['output']}{shown}")
    print(f"Model: {model_uri} (version {result['version']}, "
          f"{'champion' if result['promoted'] else 'not promoted: ' + result['reason']})")
    print(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri(params.tracking, root_path)} "
          f"--host 127.0.0.1 --port 5000")
    return {"test_dice": test_dice, "object_f1": object_f1, "model_uri": model_uri, "predictions": inferred["output"],
            "dvc": versioned, "version": result["version"], "promoted": result["promoted"]}
