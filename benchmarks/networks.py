"""Benchmark every registered network against its MONAI twin; prints one JSON document to stdout.

For each variant and for a fixed 2D and 3D input: forward+backward time (median over ``--repeats``
after one warm-up) and peak memory, side by side with the MONAI twin at matching widths, reported as
ratios (ours / MONAI). Also UNet++ pruned (L1..L{depth-1}) inference speed-ups over the full network.

Peak memory: CUDA -> ``torch.cuda.max_memory_allocated`` delta; CPU -> peak resident-set-size delta
sampled every ~1 ms by a background thread during the measured passes (approximate: allocator caching
and the sampling interval blur it; torch's CPU allocations are invisible to tracemalloc).

Usage: python benchmarks/networks.py [--device cpu|cuda] [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import psutil
import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus, FlexibleUNet, UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_ext.networks import available_networks, build_network  # noqa: E402


def monai_twin(
    name: str, dims: int, cin: int, cout: int, feats: tuple[int, ...]
) -> tuple[str, torch.nn.Module] | None:
    """MONAI's closest equivalent at matching widths (batch norm, ReLU), or None if MONAI has none."""
    common = dict(act="relu", norm="batch")
    if name == "unet" and len(feats) == 5:
        return "monai.BasicUNet", BasicUNet(dims, cin, cout, features=(*feats, feats[0]), **common)
    if name == "unetpp" and len(feats) == 5:
        return "monai.BasicUNetPlusPlus", BasicUNetPlusPlus(
            dims, cin, cout, features=(*feats, feats[0]), **common
        )
    if name == "res_unet":
        net = UNet(
            dims, cin, cout, channels=feats, strides=(2,) * (len(feats) - 1), num_res_units=2, **common
        )
        return "monai.UNet(num_res_units=2)", net
    if name == "eff_unet":
        net = FlexibleUNet(
            cin, cout, "efficientnet-b0", pretrained=False, spatial_dims=dims, decoder_channels=feats[::-1]
        )
        return "monai.FlexibleUNet(efficientnet-b0)", net
    return None


class PeakMemory:
    """Context manager measuring peak memory (MB) above the level at entry, on CUDA or via sampled RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._proc = psutil.Process()
            self._base = self._proc.memory_info().rss
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_mb = (self._peak - self._base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time in ms of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _main_logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):  # MONAI BasicUNetPlusPlus returns a list of heads
        return out[0]
    return out.logits


def measure(model: torch.nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> dict[str, Any]:
    """Forward+backward time and peak memory of one training step (no optimiser)."""
    model = model.to(device).train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        _main_logits(model(x)).float().mean().backward()

    step()  # warm-up outside the memory window (allocates .grad buffers)
    with PeakMemory(device) as mem:
        step()
    ms = time_it(step, repeats, device)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "fwd_bwd_ms": round(ms, 2),
        "peak_mem_mb": None if mem.peak_mb is None else round(mem.peak_mb, 1),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


def pruning_speedups(
    dims: int, shape: tuple[int, ...], feats: tuple[int, ...], repeats: int, device: torch.device
) -> dict[str, Any]:
    """UNet++ inference time of L1..L{depth-1} sub-networks vs the full network (eval, no_grad)."""
    model = build_network("unetpp", dims, 1, 2, features=feats, deep_supervision=True).to(device).eval()
    x = torch.randn(*shape, device=device)
    out: dict[str, Any] = {}
    with torch.no_grad():
        full = time_it(lambda: model.prune(None)(x), repeats, device)
        out["full_ms"] = round(full, 2)
        for level in range(1, len(feats) - 1):
            ms = time_it(lambda lv=level: model.prune(lv)(x), repeats, device)
            out[f"L{level}"] = {"ms": round(ms, 2), "speedup": round(full / ms, 2)}
    model.prune(None)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny widths and sizes (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    # batch 2 wherever a bottleneck may be 1 voxel: batch norm needs >1 value per channel in training
    if args.quick:
        feats, shapes = (4, 8, 16, 32, 64), {2: (2, 1, 32, 32), 3: (2, 1, 16, 16, 16)}
        eff_feats, eff_shapes = (4, 8, 16, 32, 64), {2: (2, 1, 32, 32), 3: (2, 1, 32, 32, 32)}
        extra = {"unet3p": {"cat_channels": 8}}
    else:
        feats, shapes = (32, 64, 128, 256, 512), {2: (2, 1, 256, 256), 3: (1, 1, 96, 96, 96)}
        eff_feats, eff_shapes = (16, 32, 64, 128, 256), {2: (2, 1, 256, 256), 3: (2, 1, 96, 96, 96)}
        extra = {}

    results = []
    for name in available_networks():
        for dims in (2, 3):
            shape = eff_shapes[dims] if name == "eff_unet" else shapes[dims]
            f = eff_feats if name == "eff_unet" else feats
            torch.manual_seed(0)
            x = torch.randn(*shape, device=device)
            model = build_network(name, dims, 1, 2, features=f, norm="batch", **extra.get(name, {}))
            ours = measure(model, x, args.repeats, device)
            row: dict[str, Any] = {
                "variant": name,
                "dims": dims,
                "input_shape": list(shape),
                "features": list(f),
                "options": extra.get(name, {}),
                **ours,
            }
            twin = monai_twin(name, dims, 1, 2, f)
            if twin is None:
                row["monai_twin"] = None
            else:
                twin_name, twin_model = twin
                theirs = measure(twin_model, x, args.repeats, device)
                row["monai_twin"] = {"name": twin_name, **theirs}
                row["time_ratio"] = _ratio(ours["fwd_bwd_ms"], theirs["fwd_bwd_ms"])
                row["mem_ratio"] = _ratio(ours["peak_mem_mb"], theirs["peak_mem_mb"])
            results.append(row)

    report = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": args.repeats,
        "memory_method": "cuda.max_memory_allocated"
        if device.type == "cuda"
        else "sampled RSS delta (approx.)",
        "results": results,
        "unetpp_pruning": {
            f"{dims}d": pruning_speedups(dims, shapes[dims], feats, args.repeats, device) for dims in (2, 3)
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
