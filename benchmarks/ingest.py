"""Ingest speed on 3D DICOM series vs SimpleITK's ImageSeriesReader alone, on the same files, same run.

Prints JSON. ``sitk_alone`` is what a user would write: GDCM series IDs → file names → Execute →
numpy, per series. ``ingest_read`` is ingest's validated read (pydicom header scan, slice checks,
GDCM decode, geometry cross-check). ``ingest_full`` is the whole ``ingest_dataset``: that read plus
sha256 of every input, label checks, writing gzip'd RAS NIfTI (ISA-L deflate, hashed as written)
and the manifest — work the reader alone does not do. ``breakdown`` splits one series' full
ingest into its stages. Targets (issue 4): ≥ 0.8× ``sitk_alone`` per worker, ≥ 1.6× with 2 workers
on several series.

The series is a CT phantom by default (air, body, lungs, spine in HU with σ = 12 HU noise
everywhere, stored with RescaleIntercept −1024), which compresses like a real CT; ``--phantom
noise`` stores uniform 12-bit noise instead, the worst case for gzip.

    python benchmarks/ingest.py                 # 2 series of 200 slices of 512²
    python benchmarks/ingest.py --series 4      # several series (the 2-worker target)
    python benchmarks/ingest.py --quick         # 4 series of 40 slices of 128²
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import DataConfig  # noqa: E402
from tasks.imaging.geometry import affine_from_sitk  # noqa: E402
from tasks.imaging.nifti_writer import save_nifti_gz  # noqa: E402
from tasks.ingest.batch import ingest_dataset  # noqa: E402
from tasks.ingest.case import read_image  # noqa: E402
from tasks.ingest.index import IngestSettings, fingerprint  # noqa: E402
from tasks.ingest.sources import discover_dicom  # noqa: E402
from tests.ingest.makers import write_series  # noqa: E402


def ct_phantom(slices: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Stored values (HU + 1024, uint16) of a torso-like phantom with CT quantum noise everywhere."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.8) ** 2 + (y / 0.6) ** 2 < 1] = 40.0  # soft tissue
    for side in (-0.35, 0.35):
        hu[((x - side) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = -850.0  # lungs
    hu[(x ** 2 + (y - 0.4) ** 2) < 0.08 ** 2] = 700.0  # spine
    volume = hu[None] + rng.normal(0.0, 12.0, (slices, size, size))
    return np.clip(np.rint(volume + 1024), 0, 4095).astype(np.uint16)


def sitk_alone(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    (uid,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return sitk.GetArrayFromImage(reader.Execute())


def timed(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def write_inbox(raw: Path, args: argparse.Namespace) -> list[Path]:
    rng = np.random.default_rng(0)
    if args.phantom == "ct":
        volume = ct_phantom(args.slices, args.size, rng)
    else:
        volume = rng.integers(0, 4096, (args.slices, args.size, args.size)).astype(np.uint16)
    folders = [raw / f"series{i}" for i in range(args.series)]
    for folder in folders:
        write_series(folder, volume)
        reference = sitk.ImageSeriesReader()
        reference.SetFileNames(reference.GetGDCMSeriesFileNames(str(folder)))
        image = reference.Execute()
        ras = nib.as_closest_canonical(nib.Nifti1Image(np.zeros(image.GetSize(), np.uint8), affine_from_sitk(image)))
        label = np.zeros(ras.shape, np.uint8)
        label[10:20, 10:20, 1:3] = 1
        (raw / "labels").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(label, ras.affine), str(raw / "labels" / f"{folder.name}.nii.gz"))
    return folders


def breakdown(raw: Path, out: Path, data: DataConfig, repeat: int) -> dict[str, float]:
    """One series' full ingest, stage by stage (best of ``repeat`` each)."""
    settings = IngestSettings.from_config(data)
    found = discover_dicom(raw, data)
    source = found.sources[0]
    stages: dict[str, Callable[[], object]] = {
        f"scan_headers_all_{len(found.sources)}_series": lambda: discover_dicom(raw, data),
        "fingerprint_inputs_sha256": lambda: fingerprint(source, settings),
        "read_validate_to_ras": lambda: read_image(source, settings),
    }
    timings = {name: timed(fn, repeat) for name, fn in stages.items()}
    image, affine, _ = read_image(source, settings)
    target = out / "breakdown.nii.gz"

    def write() -> None:
        target.unlink(missing_ok=True)
        save_nifti_gz(image, affine, target)

    timings["write_nifti_gz_hashed"] = timed(write, repeat)
    timings["output_mb"] = target.stat().st_size / 1e6
    timings["compression_ratio"] = target.stat().st_size / image.nbytes
    return {name: round(value, 3) for name, value in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--phantom", choices=("ct", "noise"), default="ct")
    parser.add_argument("--quick", action="store_true", help="4 series of 40 slices of 128²")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.size, args.series = 40, 128, 4
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        folders = write_inbox(raw, args)
        megabytes = sum(f.stat().st_size for d in folders for f in d.iterdir()) / 1e6
        data = DataConfig(source="dicom", dicom_case_id="folder", instance_labels=False,
                          label_names={"background": 0, "organ": 1})
        settings = IngestSettings.from_config(data)

        def ours_read(workers: int) -> None:
            sources = discover_dicom(raw, data).sources
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda source: read_image(source, settings), sources))

        def run_full(workers: int) -> None:
            out = Path(tmp) / f"out{workers}-{time.perf_counter_ns()}"
            manifest, _ = ingest_dataset(raw, out, data, workers=workers)
            assert manifest["num_cases"] == args.series, manifest
            shutil.rmtree(out)

        def parallel(fn: Callable[[Path], object]) -> None:
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(fn, folders))

        sitk_alone(folders[0])  # warm caches the same way for everyone
        timings = {
            "sitk_alone": timed(lambda: [sitk_alone(f) for f in folders], args.repeat),
            f"sitk_alone_{args.workers}_threads": timed(lambda: parallel(sitk_alone), args.repeat),
            "ingest_read_1_worker": timed(lambda: ours_read(1), args.repeat),
            f"ingest_read_{args.workers}_workers": timed(lambda: ours_read(args.workers), args.repeat),
            "ingest_full_1_worker": timed(lambda: run_full(1), args.repeat),
            f"ingest_full_{args.workers}_workers": timed(lambda: run_full(args.workers), args.repeat),
        }
        stages = breakdown(raw, Path(tmp), data, args.repeat)
    report = {
        "benchmark": "ingest-dicom",
        "phantom": args.phantom, "series": args.series, "slices": args.slices, "size": args.size,
        "input_mb": round(megabytes, 1), "workers": args.workers, "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "results": {name: {"seconds": round(t, 3), "cases_per_s": round(args.series / t, 2),
                           "mb_per_s": round(megabytes / t, 1)} for name, t in timings.items()},
        "ratio_vs_sitk_alone": {name: round(timings["sitk_alone"] / t, 2) for name, t in timings.items()},
        "breakdown_one_series_seconds": stages,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
