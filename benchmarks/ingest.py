"""Ingest speed on 3D DICOM series vs SimpleITK's ImageSeriesReader alone, on the same files, same run.

Prints JSON. ``sitk_alone`` is what a user would write: GDCM series IDs → file names → Execute →
numpy, per series. ``ingest_read`` is ingest's validated read (pydicom header scan, slice checks,
GDCM decode, geometry cross-check). ``ingest_full`` is the whole ``ingest_dataset`` (plus sha256 of
every input, label checks and writing gzip'd RAS NIfTI + manifest). Targets: ``ingest_read`` ≥ 0.8×
``sitk_alone`` per worker; with 2 workers on several series ≥ 1.6× ``sitk_alone``.

    python benchmarks/ingest.py            # 2 series of 200 slices of 512²
    python benchmarks/ingest.py --quick    # 4 series of 40 slices of 128²
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from tasks.dicom_series import check_series, read_volume  # noqa: E402
from tasks.geometry import affine_from_sitk  # noqa: E402
from tasks.ingest import ingest_dataset  # noqa: E402
from tasks.sources import discover_dicom  # noqa: E402
from tests.ingest.makers import write_series  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 series of 40 slices of 128²")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.size, args.series = 40, 128, 4
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        volume = rng.integers(0, 3000, (args.slices, args.size, args.size)).astype(np.uint16)
        folders = [raw / f"series{i}" for i in range(args.series)]
        for folder in folders:
            write_series(folder, volume)
            reference = sitk.ImageSeriesReader()
            reference.SetFileNames(reference.GetGDCMSeriesFileNames(str(folder)))
            image = reference.Execute()
            grid = nib.Nifti1Image(np.zeros(image.GetSize(), np.uint8), affine_from_sitk(image))
            ras = nib.as_closest_canonical(grid)
            label = np.zeros(ras.shape, np.uint8)
            label[10:20, 10:20, 1:3] = 1
            (raw / "labels").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(label, ras.affine), str(raw / "labels" / f"{folder.name}.nii.gz"))
        megabytes = sum(f.stat().st_size for d in folders for f in d.iterdir()) / 1e6
        data = DataConfig(source="dicom", dicom_case_id="folder", instance_labels=False,
                          label_names={"background": 0, "organ": 1})

        def ours_read(folder_list: list[Path]) -> None:
            for source in discover_dicom(raw, data).sources:
                if source.images[0].parent in folder_list:
                    read_volume(check_series(list(source.slices), source.name, 0.01, 10**9), source.name, 1e-4)

        def run_full(workers: int) -> None:
            out = Path(tmp) / f"out{workers}-{time.perf_counter_ns()}"
            manifest, _ = ingest_dataset(raw, out, data, workers=workers)
            assert manifest["num_cases"] == args.series, manifest

        def parallel(fn: Callable[[Path], object]) -> None:
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(fn, folders))

        sitk_alone(folders[0])  # warm caches the same way for everyone
        timings = {
            "sitk_alone": timed(lambda: [sitk_alone(f) for f in folders], args.repeat),
            "sitk_alone_threads": timed(lambda: parallel(sitk_alone), args.repeat),
            "ingest_read": timed(lambda: ours_read(folders), args.repeat),
            "ingest_full_1_worker": timed(lambda: run_full(1), args.repeat),
            f"ingest_full_{args.workers}_workers": timed(lambda: run_full(args.workers), args.repeat),
        }
    report = {
        "benchmark": "ingest-dicom",
        "series": args.series, "slices": args.slices, "size": args.size, "input_mb": round(megabytes, 1),
        "workers": args.workers, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "results": {name: {"seconds": round(t, 3), "cases_per_s": round(args.series / t, 2),
                           "mb_per_s": round(megabytes / t, 1)} for name, t in timings.items()},
        "ratio_vs_sitk_alone": {name: round(timings["sitk_alone"] / t, 2) for name, t in timings.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
