"""The batch: discover the cases, remember the last run, write ``dataset.json`` and ``rejected.json``.

Every write is atomic, so a run killed half-way leaves whole files only, and the next run ends with
exactly the dataset an uninterrupted run gives. A dataset refused as a whole (``DatasetRejected``: the
classes or channels unknown or contradictory) is refused by :func:`plan_ingest`, before anything in the
dataset folder is touched: the last good dataset stays as it was, and the error says why.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.common.atomic import write_json
from tasks.common.names import printable, redact
from tasks.config import DataConfig
from tasks.ingest.case import CaseResult, ingest_case
from tasks.ingest.dataset_json import agreed_labels, check_instance_settings, check_modality
from tasks.ingest.index import INDEX_FILE, INGEST_VERSION, IngestSettings, read_index
from tasks.ingest.sources import CaseSource, Discovery, Problem, discover

OUTPUT_FOLDERS = ("imagesTr", "labelsTr", "instancesTr")


@dataclass
class IngestPlan:
    kind: str
    sources: list[CaseSource]
    problems: list[CaseResult]
    previous: list[dict | None]
    modality: str
    settings: IngestSettings  # with the classes resolved (dataset.json's, or data.label_names)
    ignored: list[dict[str, str]] = field(default_factory=list)  # files no case uses: {"file", "reason"}
    channel_names: tuple[str, ...] | None = None  # dataset.json's, in channel order (None: the source names none)


def plan_ingest(raw: Path, output_dir: Path, data: DataConfig) -> IngestPlan:
    """Discover the cases and decide what their labels mean, then clear leftovers of a killed run and
    recall what the last run made of each. Raises ``DatasetRejected`` (nothing touched) when the classes
    cannot be known or params.yaml contradicts ``dataset.json``."""
    found = discover(raw, data)
    labels = agreed_labels(data.label_names, found.labels, found.kind)
    check_instance_settings(data.instance_labels, labels, found.instance_folder)
    check_modality(data.modality, found.channel_names)
    _remove_temporaries(output_dir)
    sources, clashes = _split_case_clashes(found.sources)
    problems = [CaseResult(p.case_id, False, p.reason, code=p.code) for p in [*found.problems, *clashes]]
    index = read_index(output_dir)
    modality = data.modality if data.modality != "auto" else (found.modality or "unknown")
    return IngestPlan(found.kind, sources, problems, [index.get(s.case_id) for s in sources], modality,
                      IngestSettings.from_config(data, labels), ignored_files(raw, found, data.test_images_dir),
                      found.channel_names)


def _split_case_clashes(sources: list[CaseSource]) -> tuple[list[CaseSource], list[Problem]]:
    """Case IDs that differ only in letter case name the same file on a case-insensitive filesystem (macOS,
    Windows, a DVC remote synced there): one would silently overwrite the other, so neither is taken."""
    groups: dict[str, list[CaseSource]] = defaultdict(list)
    for source in sources:
        groups[source.case_id.lower()].append(source)
    kept, clashes = [], []
    for source in sources:
        twins = [s.case_id for s in groups[source.case_id.lower()] if s is not source]
        if twins:
            clashes.append(Problem(source.case_id, f"{source.name(source.image)}: case ID {source.case_id} differs "
                                                   f"from {', '.join(twins)} only in letter case", "duplicate_id"))
        else:
            kept.append(source)
    return kept, clashes


def ignored_files(raw: Path, found: Discovery, test_images_dir: str = "imagesTs") -> list[dict[str, str]]:
    """Every file under the inbox that no case and no rejection accounts for, with why it was left out,
    so nothing in the inbox is skipped without a word (hidden files, stray files, other layouts' files)."""
    ignored = []
    for path in sorted(p for p in raw.rglob("*") if p.is_file() and p not in found.seen):
        relative = path.relative_to(raw)
        if any(part.startswith(".") for part in relative.parts):
            reason = "hidden file or folder"
        elif relative.parts[0] == test_images_dir:
            reason = f"unlabelled test image ({test_images_dir}/ is for unetflow infer)"
        else:
            reason = f"not part of the {found.kind} layout"
        ignored.append({"file": redact(path, raw, found.tokens), "reason": reason})
    return ignored


def finish_ingest(output_dir: Path, plan: IngestPlan, case_results: Iterable[CaseResult],
                  settings: IngestSettings) -> tuple[dict, list[CaseResult]]:
    """Write ``dataset.json``, ``rejected.json`` and the index; drop outputs of cases no longer accepted."""
    results = sorted([*plan.problems, *case_results], key=lambda r: (r.case_id, r.reason))
    _reject_odd_ones(results, "channels", lambda r: r.record["channels"], lambda c: f"image with {c} channel(s)",
                     lambda c: f"has {c} channel(s)", len(plan.channel_names) if plan.channel_names else None,
                     "dataset.json")
    declared = settings.spatial_dims if settings.spatial_dims != "auto" else None
    _reject_odd_ones(results, "dimensions", _dims_of, lambda d: f"{d}D image", lambda d: f"is {d}D", declared)
    index = {r.case_id: {"fingerprint": r.fingerprint, "accepted": r.accepted, "reason": r.reason, "code": r.code,
                         "warnings": r.warnings, "record": r.record if r.accepted else None}
             for r in results if r.fingerprint}
    cases = [{**r.record, "warnings": r.warnings} for r in results if r.accepted]
    manifest = {
        "name": "unetflow-dataset",
        "source": plan.kind,
        "modality": plan.modality,
        "channel_names": list(plan.channel_names) if plan.channel_names else None,
        "labels": settings.label_names,
        "instance_labels": settings.instance_labels,
        "num_cases": len(cases),
        "cases": cases,
    }
    _write_json_if_changed(output_dir / "dataset.json", manifest)
    _write_json_if_changed(output_dir / "rejected.json", {
        "rejected": [{"case_id": r.case_id, "code": r.code, "reason": r.reason} for r in results if not r.accepted],
        "warnings": [{"case_id": r.case_id, "warning": w} for r in results if r.accepted for w in r.warnings],
        "ignored": plan.ignored})
    _write_json_if_changed(output_dir / INDEX_FILE, {"version": INGEST_VERSION, "settings": settings.key(),
                                                     "cases": index})
    _remove_stale(output_dir, {rel for c in cases for rel in c["files"].values()})
    return manifest, results


def _dims_of(result: CaseResult) -> int:
    """2 for an X×Y image (stored X×Y×1, channels aside), 3 for a volume."""
    return 2 if result.record["shape"][2] == 1 else 3


def _reject_odd_ones(results: list[CaseResult], code: str, key: Callable[[CaseResult], Any],
                     what: Callable[[Any], str], others: Callable[[Any], str], required: Any = None,
                     declared_in: str = "params.yaml") -> None:
    """One network input per dataset: every accepted case must agree on ``key`` (channels, 2D vs 3D).
    ``required`` (declared in ``declared_in``) decides; otherwise the most common value, ties to the smaller."""
    accepted = [r for r in results if r.accepted]
    counts = Counter(key(r) for r in accepted)
    if required is None and len(counts) <= 1:
        return
    usual = required if required is not None else max(counts, key=lambda c: (counts[c], -c))
    rest = f"the dataset (declared in {declared_in})" if required is not None else "the rest of the dataset"
    for result in accepted:
        if key(result) != usual:
            result.accepted = False
            result.fingerprint = ""  # depends on the other cases (or the declaration): not remembered
            result.code = code
            result.reason = (f"{result.record['source'].get('image', result.case_id)}: {what(key(result))}, "
                             f"but {rest} {others(usual)}")


def ingest_dataset(raw: Path, output_dir: Path, data: DataConfig, workers: int = 1,
                   map_fn: Callable[..., Iterable[CaseResult]] | None = None) -> tuple[dict, list[CaseResult]]:
    """The whole ingest without Prefect (tests, benchmarks): plan, convert in parallel, finish."""
    plan = plan_ingest(raw, output_dir, data)
    settings = plan.settings

    def one(args: tuple[CaseSource, dict | None]) -> CaseResult:
        return ingest_case(args[0], output_dir, settings, args[1])

    pairs = list(zip(plan.sources, plan.previous, strict=True))
    if map_fn is not None:
        case_results = list(map_fn(one, pairs))
    elif workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            case_results = list(pool.map(one, pairs))
    else:
        case_results = [one(p) for p in pairs]
    return finish_ingest(output_dir, plan, case_results, settings)


def summary_table(results: list[CaseResult], manifest: dict, shown_output: str, ignored: int = 0) -> str:
    """Plain-text summary: counts, then one line per rejected case and per warning (``rejected.json`` lists
    the ignored files too). ``shown_output``: the dataset folder as the user should see it (relative)."""
    rejected = [r for r in results if not r.accepted]
    warnings = [(r.case_id, w) for r in results if r.accepted for w in r.warnings]
    written = sum(r.written for r in results)
    unchanged = sum(r.unchanged for r in results)
    lines = [f"ingest: {manifest['num_cases']} accepted, {len(rejected)} rejected, {len(warnings)} warnings, "
             f"{written} (re)written, {unchanged} unchanged, {ignored} files ignored -> {printable(shown_output)}"]
    rows = [("rejected", r.case_id, r.reason) for r in rejected] + [("warning", c, w) for c, w in warnings]
    if rows:
        width = max(len(r[1]) for r in rows)
        lines.append(f"  {'status':<8}  {'case':<{width}}  reason")
        lines += [f"  {status:<8}  {case:<{width}}  {reason}" for status, case, reason in rows]
    return "\n".join(lines)


def _write_json_if_changed(target: Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    if target.exists() and target.read_text() == text:
        return
    write_json(target, payload)


def _remove_temporaries(output_dir: Path) -> None:
    """Hidden ``.name.XXXX.tmp…`` files are what a SIGKILL mid-write leaves behind (see tasks/common/atomic.py)."""
    if output_dir.is_dir():
        for path in output_dir.rglob(".*.tmp*"):
            if path.is_file():
                path.unlink()


def _remove_stale(output_dir: Path, keep: set[str]) -> None:
    """Files of cases no longer in the source (or now rejected, or without an instance map now) must not
    linger in the canonical folder: only the files the manifest lists stay (``keep``, relative paths)."""
    for folder in OUTPUT_FOLDERS:
        for path in (output_dir / folder).glob("*"):
            if path.is_file() and path.relative_to(output_dir).as_posix() not in keep:
                path.unlink()
