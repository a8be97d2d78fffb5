"""Which model's files are where: ``outputs/model`` and ``outputs/metrics`` are the champion's, always.

Every training runs in ``outputs/candidates/training/`` (checkpoint, ``model.pt``, ``train.json``; what
``--resume`` continues) and is kept, once registered as version N, in ``outputs/candidates/vN/`` (its
weights, plan and ``train.json``, and ``metrics/`` once scored on the test set). Only a promotion copies
a version's files into ``train.output_dir`` (``outputs/model``) and ``outputs/metrics``. A candidate that
is not promoted never touches them, so after any retrain those folders, the registry's ``champion`` and
what DVC recorded for them agree (DVC tracks the champion's folders only; see dvc.yaml).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.common.atomic import atomic_path
from tasks.config import Params
from tasks.tracking.registry import PROMOTION_METRICS, PromotionDecision, promote_if_better

MODEL_FILES = ("model.pt", "plan.json", "train.json")
METRICS_FILES = ("test.json", "test_cases.csv")
TRAINING = "training"


def champion_model_dir(params: Params, root: Path) -> Path:
    return root / params.train.output_dir


def champion_metrics_dir(root: Path) -> Path:
    return root / "outputs" / "metrics"


def candidates_dir(params: Params, root: Path) -> Path:
    """``outputs/candidates``: beside the champion's folder, never inside it."""
    return champion_model_dir(params, root).parent / "candidates"


def training_dir(params: Params, root: Path) -> Path:
    return candidates_dir(params, root) / TRAINING


def version_dir(params: Params, root: Path, version: str) -> Path:
    return candidates_dir(params, root) / f"v{version}"


def _copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Each file atomically (a kill mid-copy leaves the previous file whole); missing sources are skipped."""
    for name in names:
        if (source / name).exists():
            with atomic_path(target / name) as tmp:
                shutil.copyfile(source / name, tmp)


def keep_version(params: Params, root: Path, trained_in: Path, version: str) -> Path:
    """Copy a finished training's model files into its version folder ``outputs/candidates/vN``."""
    folder = version_dir(params, root, version)
    _copy_files(trained_in, folder, MODEL_FILES)
    return folder


def publish(params: Params, root: Path, version: str) -> None:
    """Make version N's files the champion's: ``vN/`` → ``outputs/model``, ``vN/metrics`` → ``outputs/metrics``."""
    folder = version_dir(params, root, version)
    _copy_files(folder, champion_model_dir(params, root), MODEL_FILES)
    _copy_files(folder / "metrics", champion_metrics_dir(root), METRICS_FILES)


def promotion_score(params: Params, evaluated: dict) -> float | None:
    """The candidate's value of ``tracking.promote_on`` from an evaluation's result (``evaluate_flow``'s dict):
    None when the evaluation could not give it (object metrics without instance maps)."""
    key, _ = PROMOTION_METRICS[params.tracking.promote_on]
    value = evaluated.get(key)
    return None if value is None else float(value)


def promote_candidate(params: Params, root: Path, version: str, run_id: str,
                      score: float | None) -> PromotionDecision:
    """The registry decides (``promote_if_better`` on ``tracking.promote_on`` with ``tracking.min_test_score``;
    ``score`` is the candidate's value of that metric, see :func:`promotion_score`); files follow the registry."""
    decision = promote_if_better(params.tracking.model_name, version, run_id, score,
                                 params.tracking.min_test_score, params.tracking.promote_on)
    if decision.promoted:
        publish(params, root, version)
    return decision
