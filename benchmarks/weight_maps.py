"""Benchmarks for the data-preparation hot spots; prints one JSON document.

Sections are registered in ``SECTIONS`` (name -> function(quick) -> JSON-able result); the
``weight_maps`` section compares the truncated U-Net weight map with the naive per-object EDT in the
same run. Run ``python benchmarks/weight_maps.py [--quick] [--section NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
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


SECTIONS: dict[str, Callable[[bool], Any]] = {
    "weight_maps": bench_weight_maps,
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
