"""Batch inference: segment every study in a folder, each on its own, resumable, on the input's own grid.

A hospital runs this overnight on hundreds of studies, so:

* cases are independent — :func:`run_case` never raises for a bad study; its outcome names the file
  and the reason, and the batch goes on;
* every output is written atomically, and the per-case report ``<case>.json`` is written *last*: it
  marks the case done. A rerun skips a case whose report matches the same inputs, weights and
  settings (and whose outputs exist), so after a crash only the missing cases run;
* preprocessing is the model's plan (normalisation, channels, 2D/3D, patch size), never a constant
  copied here; the mask is reordered back to the input's voxel grid (:mod:`tasks.inference.studies`);
* the CGM classifier, when the network has one, gates the segmentation (:mod:`tasks.inference.postprocess`)
  and the report says how much it removed.

Per case: ``<case>.nii.gz`` (label map), ``<case>.seg.dcm`` (DICOM inputs) and ``<case>.json``
(class volumes in ml, CGM probabilities, what the filters removed, timings); per batch
``summary.csv`` and ``summary.json``. Plain functions; the Prefect flow only maps :func:`run_case`.

Batches are auditable: every report and summary names the model (registry name, version, URI, weights
hash), the unetflow version and the UTC time; ``summary.*`` are the latest run's, and each run also
leaves ``runs/<UTC time>-<id>.csv/.json`` and a row in ``runs/index.csv``, so a rerun never erases what an
earlier batch did.

A DICOM case whose SEG cannot be made is still done (its mask is the result); its report, the
``dicom_seg`` column of ``summary.csv`` and ``seg_not_written`` in ``summary.json`` say why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.common.atomic import write_json, write_text
from tasks.common.plan import Plan
from tasks.inference.inputs import InferCase, InputProblem, discover_cases
from tasks.inference.segment import InferSettings, segment_case, unetflow_version, utc_now

SEG_NOT_WRITTEN = "not written: "  # the ``dicom_seg`` column of a case done without its SEG


@dataclass
class CaseOutcome:
    """One summary row. ``status``: done, skipped (done by an earlier run), failed, ignored (not an image).

    ``dicom_seg``: for a DICOM case, the SEG's file name or ``not written: <reason>`` (the case is done).
    """

    case_id: str
    status: str
    source: str = ""
    mask: str = ""
    seg: str = ""
    dicom_seg: str = ""
    error: str = ""
    seconds: float = 0.0
    foreground_voxels: int = 0
    volumes_ml: str = ""
    cgm_removed_voxels: int = 0
    cgm_removed_slices: int = 0
    lcc_removed_voxels: int = 0
    model_name: str = ""  # provenance of the mask (a skipped case: the earlier run's model, same weights)
    model_version: str = ""
    model_uri: str = ""
    unetflow_version: str = ""
    created_at: str = ""  # when the mask was made (UTC)


# ---------------------------------------------------------------------------------------------- the model
_MODELS: dict[tuple[str, str], tuple[nn.Module, Plan]] = {}


_MODELS_LOCK = threading.Lock()


def cached_model(ref: str, device: torch.device) -> tuple[nn.Module, Plan]:
    """(model, plan) for ``ref`` once per process: threads share it, each Dask worker loads it once."""
    key = (ref, str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            from tasks.tracking.model_package import load_model

            model, plan = load_model(ref, map_location=device)
            _MODELS[key] = (model.to(device).eval(), plan)
        return _MODELS[key]


def register_model(ref: str, device: torch.device, model: nn.Module, plan: Plan) -> None:
    """Seed the cache with a model already loaded (the flow's), so thread workers do not load it again."""
    with _MODELS_LOCK:
        _MODELS[(ref, str(device))] = (model.to(device).eval(), plan)


def model_provenance(uri: str) -> tuple[str, str]:
    """(registered name, version) behind a ``models:/`` URI; ("", "") for a run or a checkpoint.

    An alias (``@champion``) is resolved through the registry now, when the batch starts: the report must
    say which version made the masks even after the alias moves on.
    """
    if not uri.startswith("models:/"):
        return "", ""
    from mlflow import MlflowClient

    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    return name, version  # a number, or a stage name MLflow resolved when loading


def model_identity(model: nn.Module) -> str:
    """sha256 of the weights: an alias (``@champion``) that moves to new weights makes old masks stale."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def completed_report(case: InferCase, output_dir: Path, settings: InferSettings) -> dict[str, Any] | None:
    """The earlier run's report when it is for the same inputs, weights and settings and its files exist."""
    path = output_dir / f"{case.case_id}.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        if report.get("key") != settings.key(case):
            return None
        if all(Path(p).exists() for p in report.get("outputs", {}).values()):
            return report
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _seg_column(report: dict[str, Any]) -> str:
    """The SEG's name, why there is none, or "" (NIfTI input, SEG off); reports before the field: from outputs."""
    if report.get("dicom_seg_error"):
        return f"{SEG_NOT_WRITTEN}{report['dicom_seg_error']}"
    seg = report.get("dicom_seg") or report["outputs"].get("seg")
    return Path(seg).name if seg else ""


def _outcome(report: dict[str, Any], status: str, seconds: float) -> CaseOutcome:
    model = report.get("model") or {}  # reports from before provenance was recorded: empty columns
    return CaseOutcome(
        case_id=report["case_id"], status=status, source=report["source"], mask=report["outputs"]["mask"],
        seg=report["outputs"].get("seg", ""), dicom_seg=_seg_column(report), seconds=round(seconds, 4),
        foreground_voxels=report["foreground_voxels"],
        volumes_ml=json.dumps(report["class_volumes_ml"], sort_keys=True),
        cgm_removed_voxels=report["cgm"]["removed_voxels"], cgm_removed_slices=len(report["cgm"]["removed_slices"]),
        lcc_removed_voxels=report["keep_largest_component"]["removed_voxels"],
        model_name=model.get("name", ""), model_version=model.get("version", ""), model_uri=model.get("uri", ""),
        unetflow_version=report.get("unetflow_version", ""), created_at=report.get("created_at", ""))


def run_case(case: InferCase, output_dir: Path, settings: InferSettings, model: nn.Module | str,
             plan: Plan | None = None) -> CaseOutcome:
    """Never raises for a bad input: the outcome says what happened to the case.

    ``model`` is a loaded network (with its ``plan``) or a reference :func:`cached_model` loads once per
    process (a Dask worker gets a checkpoint path, not a pickled network).
    """
    output_dir = Path(output_dir)
    try:
        done = completed_report(case, output_dir, settings)
        if done is not None:
            return _outcome(done, "skipped", 0.0)
        started = time.perf_counter()
        device = settings.torch_device()
        if isinstance(model, str):
            model, plan = cached_model(model, device)
        assert plan is not None, "a loaded model needs its plan"
        report = segment_case(model, plan, case, output_dir, settings, device)
        return _outcome(report, "done", time.perf_counter() - started)
    except Exception as error:  # one bad study never stops the batch
        message = str(error) if case.shown.split(",")[0] in str(error) else f"{case.shown}: {error}"
        return CaseOutcome(case.case_id, "failed", source=case.shown, error=f"{message} ({type(error).__name__})")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def problem_outcomes(problems: list[InputProblem]) -> list[CaseOutcome]:
    return [CaseOutcome(p.case_id, p.status, error=p.reason) for p in problems]


def remove_stale_temporaries(output_dir: Path) -> int:
    """Half-written files a killed run left (``.name.XXXX.tmp…`` from :func:`tasks.atomic.atomic_path`).

    Only one batch may write to an output folder at a time: a second one's temporaries would go too.
    """
    removed = 0
    for folder in (Path(output_dir), Path(output_dir) / RUNS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def run_batch(input_dir: Path, output_dir: Path, settings: InferSettings, model: nn.Module, plan: Plan,
              salt: str = "unetflow") -> list[CaseOutcome]:
    """The whole batch in this process, one case after the other (no Prefect): tests, benchmarks, scripts."""
    if not settings.input_root:  # messages name files relative to the inbox, as in the flow
        settings = replace(settings, input_root=str(input_dir))
    started_at = utc_now()
    remove_stale_temporaries(output_dir)
    cases, problems = discover_cases(input_dir, exclude=output_dir, salt=salt)
    outcomes = [run_case(case, output_dir, settings, model, plan) for case in cases]
    outcomes = sorted(outcomes + problem_outcomes(problems), key=lambda o: o.case_id)
    write_summary(output_dir, outcomes, settings, started_at)
    return outcomes


RUNS_DIR = "runs"  # one summary per batch run, and the index of them all
INDEX_FIELDS = ("run_id", "started_at", "finished_at", "model_name", "model_version", "model_uri", "model_id",
                "unetflow_version", "done", "skipped", "failed", "ignored", "seg_not_written", "summary_csv",
                "summary_json")


def write_summary(output_dir: Path, outcomes: list[CaseOutcome], settings: InferSettings | None = None,
                  started_at: str = "") -> Path:
    """``summary.csv`` (one row per case, failures with their reason) and ``summary.json`` (counts, the run).

    The same two files also go to ``runs/<UTC time>-<id>.*`` and a row to ``runs/index.csv``: ``summary.*``
    are only ever the latest run's, and an audit of an earlier batch must not depend on nobody rerunning it.
    """
    output_dir = Path(output_dir)
    run = _run_record(settings or InferSettings(), started_at)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[f for f in CaseOutcome.__dataclass_fields__])
    writer.writeheader()
    writer.writerows(asdict(o) for o in outcomes)
    summary = _summary_json(outcomes, run)
    stem = f"{datetime.fromisoformat(run['finished_at']).strftime('%Y%m%dT%H%M%SZ')}-{run['run_id']}"
    runs = output_dir / RUNS_DIR
    write_text(runs / f"{stem}.csv", table.getvalue())
    write_json(runs / f"{stem}.json", summary)
    _append_index(runs / "index.csv", {**{k: run.get(k, "") for k in INDEX_FIELDS if k in run},
                                       **{k: summary[k] for k in ("done", "skipped", "failed", "ignored")},
                                       "seg_not_written": len(summary["seg_not_written"]),
                                       "summary_csv": f"{stem}.csv", "summary_json": f"{stem}.json"})
    path = output_dir / "summary.csv"
    write_text(path, table.getvalue())
    write_json(output_dir / "summary.json", summary)
    return path


def _run_record(settings: InferSettings, started_at: str) -> dict[str, str]:
    """Who made this batch's outputs: the model (name, version, URI, weights hash), the code, when."""
    finished = utc_now()
    return {"run_id": uuid.uuid4().hex[:8], "started_at": started_at or finished, "finished_at": finished,
            "model_name": settings.model_name, "model_version": settings.model_version,
            "model_uri": settings.model_uri, "model_id": settings.model_id, "unetflow_version": unetflow_version()}


def _append_index(path: Path, row: dict[str, Any]) -> None:
    """Add a row to ``runs/index.csv``: rewritten whole to a temporary and renamed, never half-appended."""
    old = path.read_text() if path.exists() else ""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(INDEX_FIELDS))
    if not old:
        writer.writeheader()
    writer.writerow(row)
    write_text(path, old + table.getvalue())


def _summary_json(outcomes: list[CaseOutcome], run: dict[str, str]) -> dict[str, Any]:
    return {
        "run": run,
        **{s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "ignored")},
        "failed_cases": [{"case_id": o.case_id, "error": o.error} for o in outcomes if o.status == "failed"],
        "ignored_files": [{"case_id": o.case_id, "reason": o.error} for o in outcomes if o.status == "ignored"],
        "seg_not_written": [{"case_id": o.case_id, "reason": o.dicom_seg.removeprefix(SEG_NOT_WRITTEN)}
                            for o in outcomes if o.dicom_seg.startswith(SEG_NOT_WRITTEN)],
    }


@dataclass
class BatchCounts:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    seg_not_written: int = 0  # DICOM cases done with their mask but without a DICOM SEG (the reports say why)
    failed_cases: list[dict[str, str]] = field(default_factory=list)


def count(outcomes: list[CaseOutcome]) -> BatchCounts:
    counts = BatchCounts(**{s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "ignored")})
    counts.failed_cases = [{"case_id": o.case_id, "error": o.error} for o in outcomes if o.status == "failed"]
    counts.seg_not_written = sum(o.dicom_seg.startswith(SEG_NOT_WRITTEN) for o in outcomes)
    return counts
