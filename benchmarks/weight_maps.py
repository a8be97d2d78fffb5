"""Benchmarks for the data-preparation hot spots; prints one JSON document.

Sections are registered in ``SECTIONS`` (name -> function(quick) -> JSON-able result); the
``weight_maps`` section compares the truncated U-Net weight map with the naive per-object EDT in the
same run; the ``loader`` section measures the training loader's samples/s with the deterministic part
cached in memory (``CacheDataset``) against patches read from the memory-mapped case files (``mmap``).
Run ``python benchmarks/weight_maps.py [--quick] [--section NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_ext.transforms import border_cutoff_distance, split_objects, unet_weight_map
from monai_ext.transforms._reference import naive_unet_weight_map

W0, SIGMA = 10.0, 5.0


def synthetic_instances(shape: tuple[int, ...], n_objects: int, radius: float, seed: int = 0) -> np.ndarray:
    """Voronoi cells around random seeds clipped to ``radius``: dense, mostly touching instances."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, size=(n_objects, len(shape)))
    seeds[tuple(pts.T)] = np.arange(1, n_objects + 1)
    dist, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(idx)]
    labels[dist > radius] = 0
    return labels


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _compare(name: str, labels: np.ndarray) -> dict[str, Any]:
    fast, t_fast = _timed(lambda: unet_weight_map(labels, w0=W0, sigma=SIGMA))
    ref, t_naive = _timed(lambda: naive_unet_weight_map(labels, w0=W0, sigma=SIGMA))
    _, n = split_objects(labels)
    return {
        "case": name,
        "shape": "x".join(map(str, labels.shape)),
        "n_objects": n,
        "foreground_fraction": round(float((labels > 0).mean()), 4),
        "fast_s": round(t_fast, 4),
        "naive_s": round(t_naive, 4),
        "speedup": round(t_naive / t_fast, 2),
        "max_abs_diff": float(np.abs(fast - ref).max()),
        "allowed_diff": 1e-3 * W0,
    }


def bench_weight_maps(quick: bool) -> dict[str, Any]:
    """Fast vs naive weight map on a dense 2D image and a 3D volume, plus fast-only object scaling."""
    if quick:
        cases = [("2d_touching", (128, 128), 25, 14.0), ("3d_cells", (48, 48, 48), 40, 7.0)]
        scaling_counts = [20, 40, 80]
        scaling_shape = (48, 48, 48)
    else:
        cases = [("2d_touching", (512, 512), 100, 30.0), ("3d_cells", (128, 128, 128), 220, 9.0)]
        scaling_counts = [100, 200, 400, 800]
        scaling_shape = (128, 128, 128)
    comparisons = [_compare(name, synthetic_instances(shape, n, r)) for name, shape, n, r in cases]
    scaling = []
    for n in scaling_counts:
        labels = synthetic_instances(scaling_shape, n, radius=6.0, seed=1)
        _, t = _timed(lambda labels=labels: unet_weight_map(labels, w0=W0, sigma=SIGMA))
        scaling.append({"n_objects": split_objects(labels)[1], "fast_s": round(t, 4)})
    return {
        "w0": W0,
        "sigma": SIGMA,
        "tol": 1e-4 * W0,
        "cutoff_distance": round(border_cutoff_distance(W0, SIGMA, 1e-4 * W0), 3),
        "comparisons": comparisons,
        "fast_scaling_" + "x".join(map(str, scaling_shape)): scaling,
    }


def _write_cases(folder: Path, shape: tuple[int, ...], n_cases: int) -> list[str]:
    """Preprocessed cases as the preprocess stage writes them: ``cases/<id>/`` (``write_case``)."""
    from tasks.preprocess.case_store import write_case

    (folder / "cases").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for index in range(n_cases):
        labels = synthetic_instances(shape, n_objects=max(4, int(np.prod(shape)) // 2000), radius=6.0, seed=index)
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        weight = unet_weight_map(labels, w0=W0, sigma=SIGMA)[None]
        case_id = f"case_{index:03d}"
        write_case(folder, case_id, {"image": image, "label": (labels > 0).astype(np.uint8)[None], "weight": weight})
        ids.append(case_id)
    return ids


def _samples_per_second(loader: Any, epochs: int) -> float:
    samples, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            samples += int(batch["image"].shape[0])
    return samples / (time.perf_counter() - start)


def bench_loader(quick: bool) -> dict[str, Any]:
    """Training-loader throughput (samples/s, after setup), cached in memory vs memory-mapped, 2D and 3D."""
    import torch

    from tasks.common.plan import Plan
    from tasks.config import AugmentConfig
    from tasks.training.data_loader import case_records, training_loader

    torch.set_num_threads(1)
    if quick:
        setups = [("2d", (256, 256), [128, 128], 16), ("3d", (64, 64, 48), [48, 48, 32], 6)]
        variants = [("default", {}), ("paper_elastic", {"elastic": "paper"})]
        workers, epochs = [0], 2
    else:
        setups = [("2d", (512, 512), [256, 256], 32), ("3d", (160, 160, 96), [96, 96, 64], 12)]
        variants = [("default", {}), ("paper_elastic", {"elastic": "paper"}), ("monai_elastic", {"elastic": "monai"})]
        workers, epochs = [0, 2], 3
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, patch, n_cases in setups:
            folder = Path(tmp) / name
            ids = _write_cases(folder, shape, n_cases)
            plan = Plan.model_validate({  # what the loader reads: dims, patch, weight maps; the rest is filler
                "spatial_dims": len(shape), "patch_size": patch, "weight_maps": True, "in_channels": 1,
                "num_classes": 2, "label_names": {"background": 0, "cell": 1},
                "normalization": {"channels": [{"scheme": "none"}]}, "split": {"train": [], "val": [], "test": []},
                "network": {"name": "unet", "features": [4, 8]}})
            records = case_records(folder, ids)
            for variant, options in variants:
                for n_workers in workers:
                    row: dict[str, Any] = {"case": name, "shape": "x".join(map(str, shape)),
                                           "patch": "x".join(map(str, patch)), "augment": variant,
                                           "workers": n_workers}
                    for cache in ("memory", "mmap"):
                        config = AugmentConfig(loader_cache=cache, loader_workers=n_workers, **options)
                        start = time.perf_counter()
                        loader = training_loader(records, plan, batch_size=2, augment=config)
                        row[f"setup_s_{cache}"] = round(time.perf_counter() - start, 3)
                        row[f"samples_per_s_{cache}"] = round(_samples_per_second(loader, epochs), 1)
                    row["cache_speedup"] = round(row["samples_per_s_memory"] / row["samples_per_s_mmap"], 2)
                    results.append(row)
    return {"batch_size": 2, "epochs": epochs, "cases": "uncompressed .npy folders (write_case, as preprocess writes)",
            "rows": results}


SECTIONS: dict[str, Callable[[bool], Any]] = {
    "weight_maps": bench_weight_maps,
    "loader": bench_loader,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--section", action="append", choices=sorted(SECTIONS), help="run only these")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }
    for name in args.section or list(SECTIONS):
        results[name] = SECTIONS[name](args.quick)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
