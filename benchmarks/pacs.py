"""pacs-sync throughput: series per minute through a PACS (DICOMweb, loopback Orthanc) vs ``unetflow infer`` on the
same series read from disk, with the same model. Target: the sync keeps ≥ 0.8× the throughput of the disk path.

Both paths run the same segmentation code (``tasks.inference.segment``) with the same settings, DICOM SEG on; what
the sync adds is the PACS round trip per series: QIDO lookups (do results exist?), the WADO-RS fetch, the volume
SR, STOW-RS of SEG + SR, its state and summary files. Both are called as plain functions in this process
(``tasks.pacs.sync.sync_pacs`` and ``tasks.inference.batch.run_batch``, what the two flows map), so Prefect's
start-up, equal for both, does not blur the comparison.

The series: synthetic CT volumes (``tasks.pacs.demo.phantom``: a bright ellipsoid organ in a soft-tissue body,
HU values) in three studies, uploaded once through Orthanc's REST API and written once as DICOM files for the
disk path. The models: untrained 3D CT U-Nets built from their plan (throughput does not depend on the weights),
with params.yaml's default widths (16, 32, 64, 128). Three scenarios, each with its own Orthanc:

* ``ct`` (the headline): series of the size a CT scanner sends (512 × 512 slices, 32 of them by default, read
  in 128 × 128 × 32 windows): the PACS round trip next to a real inference;
* ``small``: 64 × 64 × 32 series read in one window, where the round trip's fixed cost per series is largest;
* ``small-tiny-model``: the same with a tiny network (8, 16, 32): the worst case.

Each path runs ``--repeats`` times, interleaved, after one warm-up series; the fastest run of each counts (the
CPU is shared, Orthanc included). A sync repeat uses a new model version, so every series is really fetched,
segmented and stored. Two figures: wall clock (series/min: the target) and CPU seconds of this process plus
Orthanc's (``ratio_cpu``: steadier when other work shares the CPU, as it does on a 2-core CI host).

    python benchmarks/pacs.py [--size X Y Z] [--patch X Y Z] [--series N] [--repeats N] [--features F ...]
                              [--small-size X Y Z] [--small-features F ...] [--small-repeats N]
                              [--threads N] [--output FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import requests
import torch

from tasks.common.plan import Plan, build_model
from tasks.inference.batch import count, run_batch
from tasks.inference.segment import InferSettings
from tasks.pacs.demo import SPACING, ct_series, phantom
from tasks.pacs.dicomweb import DicomwebTransport
from tasks.pacs.orthanc import OrthancServer
from tasks.pacs.sync import SyncSettings, sync_pacs
from tasks.pacs.transport import SeriesFilter

TARGET_RATIO = 0.8
T = TypeVar("T")
SALT = "bench-salt"


@dataclass(frozen=True)
class Scenario:
    name: str
    size: list[int]  # voxels x y z of each series
    patch: list[int]  # the plan's sliding window
    features: list[int]
    series: int
    repeats: int


def make_plan(size: list[int], features: list[int]) -> Plan:
    """A 3D one-channel CT plan read in ``size`` windows at the series' own spacing."""
    return Plan.model_validate({
        "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "organ": 1},
        "channel_modalities": ["CT"], "patch_size": size, "batch_size": 2,
        "normalization": {"channels": [{"scheme": "ct", "clip": [-100.0, 300.0], "mean": 150.0, "std": 60.0}]},
        "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": features, "norm": "batch"}})


def make_series(n: int, size: list[int], seed: int) -> list[list]:
    rng = np.random.default_rng(seed)
    out = []
    for number in range(1, n + 1):
        image, _ = phantom(rng, tuple(size))
        study = f"BENCH{(number - 1) % 3}"
        out.append(ct_series(image, number, f"Bench^Patient{(number - 1) % 3}", study, "20240305",
                             f"Bench series {number}"))
    return out


def write_to_disk(series: list[list], folder: Path) -> None:
    for index, datasets in enumerate(series):
        target = folder / f"series{index:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(datasets):
            ds.save_as(target / f"{k:04d}.dcm", enforce_file_format=True)


def upload(server: OrthancServer, series: list[list]) -> None:
    for datasets in series:
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            requests.post(f"{server.rest_url}/instances", data=buffer.getvalue(), timeout=30).raise_for_status()


def orthanc_cpu_s() -> float:
    """CPU seconds (user + system) of the Orthanc processes this one started: the PACS side of the work."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "Orthanc":
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
    return total


def timed(call: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process and of Orthanc)."""
    wall, cpu = time.perf_counter(), time.process_time() + orthanc_cpu_s()
    result = call()
    return result, time.perf_counter() - wall, time.process_time() + orthanc_cpu_s() - cpu


def run_disk(model: torch.nn.Module, plan: Plan, inbox: Path, out: Path, settings: InferSettings) -> int:
    """Series segmented by ``run_batch`` (``unetflow infer``'s per-case path) from ``inbox`` into ``out``."""
    return count(run_batch(inbox, out, settings, model, plan, salt=SALT)).done


def run_pacs(model: torch.nn.Module, plan: Plan, server: OrthancServer, work_dir: Path, settings: InferSettings,
             version: str) -> tuple[int, list[float]]:
    """(series done, seconds per series) of one ``sync_pacs`` over DICOMweb, as model version ``version``."""
    sync = SyncSettings(SeriesFilter(modality="CT"), work_dir, SALT, "bench", version, settings)
    summary = sync_pacs(DicomwebTransport(server.dicomweb_url), model, plan, sync)
    if summary.failed:
        raise RuntimeError(f"sync failed: {[o.reason for o in summary.outcomes if o.status == 'failed']}")
    return summary.done, [o.seconds for o in summary.outcomes]


def warm_up(model: torch.nn.Module, plan: Plan, series: list[list], work: Path, settings: InferSettings) -> None:
    """One series through the disk path: first-call costs (allocator, kernels, imports) are paid here."""
    write_to_disk(series[:1], work / "in")
    run_batch(work / "in", work / "out", settings, model, plan, salt=SALT)


def _rates(done: int, wall: float, cpu: float) -> dict:
    return {"series_done": done, "seconds": round(wall, 2), "series_per_min": round(60.0 * done / wall, 1),
            "cpu_seconds": round(cpu, 2), "series_per_cpu_min": round(60.0 * done / cpu, 1)}


def measure(scenario: Scenario, work: Path) -> dict:
    """Both paths with one model on the scenario's series (its own Orthanc), interleaved ``repeats`` times (a
    burst of load on the shared CPU hits both alike) after a warm-up series; the fastest run of each counts, by
    wall clock and by CPU time."""
    torch.manual_seed(0)
    series = make_series(scenario.series, scenario.size, seed=0)
    plan = make_plan(scenario.patch, scenario.features)
    model = build_model(plan).eval()
    settings = InferSettings(device="cpu", model_id="bench", dicom_seg=True)
    pacs = OrthancServer(work / "orthanc").start()
    try:
        upload(pacs, series)
        write_to_disk(series, work / "inbox")
        warm_up(model, plan, series, work / "warm", settings)
        disk: list[tuple[int, float, float]] = []
        sync: list[tuple[tuple[int, list[float]], float, float]] = []
        for repeat in range(scenario.repeats):
            disk.append(timed(lambda r=repeat: run_disk(model, plan, work / "inbox", work / f"disk-{r}", settings)))
            sync.append(timed(lambda r=repeat: run_pacs(model, plan, pacs, work / f"pacs-{r}", settings, f"v{r}")))
    finally:
        pacs.stop()
    disk_done, pacs_done = disk[0][0], sync[0][0][0]
    disk_wall, disk_cpu = min(d[1] for d in disk), min(d[2] for d in disk)
    pacs_wall, pacs_cpu = min(p[1] for p in sync), min(p[2] for p in sync)
    ratio = (pacs_done / pacs_wall) / (disk_done / disk_wall)
    cpu_ratio = (pacs_done / pacs_cpu) / (disk_done / disk_cpu)
    return {"scenario": asdict(scenario), "instances": sum(len(s) for s in series),
            "model": {"network": "unet", "features": scenario.features, "trained": False,
                      "parameters": sum(p.numel() for p in model.parameters())},
            "disk": _rates(disk_done, disk_wall, disk_cpu),
            "pacs_sync": {**_rates(pacs_done, pacs_wall, pacs_cpu),
                          "seconds_per_series": min(sync, key=lambda p: p[1])[0][1]},
            "ratio": round(ratio, 3), "ratio_cpu": round(cpu_ratio, 3), "met": bool(ratio >= TARGET_RATIO)}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out = [Scenario("ct", args.size, args.patch, args.features, args.series, args.repeats)]
    if args.small_size:
        out.append(Scenario("small", args.small_size, args.small_size, args.features, 6, args.small_repeats))
        if args.small_features:
            out.append(Scenario("small-tiny-model", args.small_size, args.small_size, args.small_features, 6,
                                args.small_repeats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 32],
                        help="voxels x y z of the headline CT series (default 512 512 32)")
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 32],
                        help="the headline plan's sliding window (default 128 128 32)")
    parser.add_argument("--series", type=int, default=4, help="headline CT series (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="headline runs per path; the fastest counts (default 2)")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="U-Net features (default: params.yaml's model.features)")
    parser.add_argument("--small-size", type=int, nargs="*", default=[64, 64, 32],
                        help="voxels of the small series, read in one window (none: skip them)")
    parser.add_argument("--small-features", type=int, nargs="*", default=[8, 16, 32],
                        help="the tiny model of the worst case (none: skip it)")
    parser.add_argument("--small-repeats", type=int, default=5, help="runs per path on small series (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs = []
    for scenario in scenarios(args):
        with tempfile.TemporaryDirectory(prefix="unetflow-bench-pacs-") as tmp:
            runs.append(measure(scenario, Path(tmp)))
    headline = runs[0]
    output = {
        "benchmark": "pacs",
        "host": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                 "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "data": {"studies": 3, "spacing_mm": list(SPACING), "series": "synthetic CT phantoms (tasks.pacs.demo)"},
        "settings": {"dicom_seg": True, "volume_sr": "sync only", "counted": "fastest run",
                     "disk": "tasks.inference.batch.run_batch (unetflow infer's per-case path) on DICOM files",
                     "pacs_sync": "tasks.pacs.sync.sync_pacs (unetflow pacs-sync): Orthanc on loopback, DICOMweb "
                                  "(QIDO-RS, WADO-RS, STOW-RS)",
                     "seconds_per_series": "each series' time in the sync, lookup to stored results; the sync "
                                           "overlaps series, so these add up to more than its wall clock"},
        "series_per_min": {"disk": headline["disk"]["series_per_min"],
                           "pacs_sync": headline["pacs_sync"]["series_per_min"]},
        "ratio": headline["ratio"],
        "ratio_cpu": headline["ratio_cpu"],
        "target": {"what": "pacs-sync series/min / infer-from-disk series/min, CT-sized series (scenario ct)",
                   "target": TARGET_RATIO, "met": headline["met"],
                   "by_scenario": {run["scenario"]["name"]: {"ratio": run["ratio"], "met": run["met"]}
                                   for run in runs},
                   "note": "wall clock on a shared CPU is noisy; ratio_cpu (CPU seconds of this process + Orthanc) "
                           "is the steadier figure"},
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(output, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
