"""Benchmark every registered network against its MONAI twin; prints one JSON document to stdout.

For each variant and a fixed 2D and 3D input: forward+backward time and peak memory of one training step
(no optimiser), side by side with the MONAI twin at matching widths, reported as ratios (ours / MONAI).
Also UNet++ pruned (L1..L{depth-1}) inference speed-ups over the full network, and UNet 3+ against U-Net
at equal encoder widths (``unet3p_vs_unet``: seconds per training step, ratio UNet 3+ / U-Net; target
<= 3), since UNet 3+'s full-scale decoder is what makes it the expensive member of the family.

Time: ours and the twin are timed *interleaved* (ours, twin, twin, ours, ...) after warm-up, so load from
other processes hits both alike; reported are each model's median and ``time_ratio`` = median of the
per-round ratios. On CUDA the timers synchronise the device.

Peak memory:
  * CUDA: ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` at the start of a training step
    (weights, grads and input already allocated; activations, workspaces and temporaries counted).
  * CPU: each model is measured in a *fresh subprocess* that builds the model and input, runs a warm-up
    step (allocating .grad), resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5) and reads
    ``VmHWM - VmRSS`` around one more step. glibc's malloc is pinned to ``mmap`` for every block >= 64 KiB
    (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go back to the OS and the resident set tracks live tensor
    memory instead of allocator caches. Without ``clear_refs`` (non-Linux) it falls back to the first step
    from a fresh build, ``ru_maxrss`` minus RSS after building (includes the .grad buffers then).

CPU runs use ``--threads`` torch threads (default 1): on a small shared machine, multi-threaded OpenMP
kernels spin and wait on each other under outside load, and then time the load rather than the model.

Usage: python benchmarks/networks.py [--device cpu|cuda] [--amp] [--compile] [--repeats N] [--threads N] [--quick]
       [--only NAME ...] [--no-pruning] [--no-unet3p-vs-unet] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus, FlexibleUNet, UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_ext.networks import available_networks, build_network  # noqa: E402

_MMAP_THRESHOLD = 65536


# ---------------------------------------------------------------------------------------------- models
def monai_twin(name: str, dims: int, cin: int, cout: int, feats: tuple[int, ...]) -> tuple[str, torch.nn.Module] | None:
    """MONAI's closest equivalent at matching widths (batch norm, ReLU), or None if MONAI has none."""
    common = dict(act="relu", norm="batch")
    if name == "unet" and len(feats) == 5:
        return "monai.BasicUNet", BasicUNet(dims, cin, cout, features=(*feats, feats[0]), **common)
    if name == "unetpp" and len(feats) == 5:
        return "monai.BasicUNetPlusPlus", BasicUNetPlusPlus(dims, cin, cout, features=(*feats, feats[0]), **common)
    if name == "res_unet_monai":  # same topology and parameters as ours (tests/networks/test_res_unet.py)
        net = UNet(dims, cin, cout, channels=feats, strides=(2,) * (len(feats) - 1), num_res_units=2, **common)
        return "monai.UNet(num_res_units=2)", net
    if name == "eff_unet":
        net = FlexibleUNet(
            cin, cout, "efficientnet-b0", pretrained=False, spatial_dims=dims, decoder_channels=feats[::-1]
        )
        return "monai.FlexibleUNet(efficientnet-b0)", net
    return None


def build(spec: dict[str, Any]) -> torch.nn.Module:
    """Build ours (``spec["which"] == "ours"``) or the MONAI twin, deterministically."""
    torch.manual_seed(0)
    feats = tuple(spec["features"])
    if spec["which"] == "ours":
        return build_network(spec["name"], spec["dims"], 1, 2, features=feats, norm="batch", **spec["options"])
    twin = monai_twin(spec["name"], spec["dims"], 1, 2, feats)
    assert twin is not None
    return twin[1]


def _main_logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):  # MONAI BasicUNetPlusPlus returns a list of heads
        return out[0]
    return out.logits


def make_step(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> Callable[[], None]:
    """One training step without optimiser: zero grads, forward (optionally autocast), mean, backward."""

    def step() -> None:
        model.zero_grad(set_to_none=False)
        ctx = torch.autocast(x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = _main_logits(model(x)).float().mean()
        loss.backward()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t) * 1e3


def time_interleaved(
    fns: list[Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Median ms of each fn and the median of per-round ratios fn_0 / fn_i, alternating the order per round."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    rounds: list[list[float]] = []
    for r in range(repeats):
        order = list(range(len(fns))) if r % 2 == 0 else list(range(len(fns)))[::-1]
        ms = [0.0] * len(fns)
        for i in order:
            ms[i] = _timed(fns[i], device)
        rounds.append(ms)
    medians = [statistics.median(r[i] for r in rounds) for i in range(len(fns))]
    ratios = [statistics.median(r[0] / r[i] for r in rounds) for i in range(len(fns))]
    return medians, ratios


# ---------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the subprocess: peak resident-set growth (MiB) of one training step."""
    torch.set_num_threads(spec["threads"])
    model = build(spec).train()
    x = torch.randn(*spec["shape"], generator=torch.Generator().manual_seed(1))
    step = make_step(model, x, None)
    gc.collect()
    if _status_kb("VmHWM") is not None and _reset_hwm():
        step()  # warm-up: .grad buffers, oneDNN primitive caches
        peaks = []
        for _ in range(spec.get("steps", 2)):
            gc.collect()
            _reset_hwm()
            base = _status_kb("VmRSS")
            step()
            peak = _status_kb("VmHWM")
            assert base is not None and peak is not None
            peaks.append((peak - base) / 1024)
        return {"peak_mem_mb": round(max(peaks), 1), "method": "VmHWM-VmRSS after warm-up"}
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    step()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return {"peak_mem_mb": round((peak_kb - base_kb) / scale, 1), "method": "ru_maxrss first step"}


def cpu_memory(spec: dict[str, Any]) -> float | None:
    """Run :func:`cpu_memory_child` in a fresh interpreter (so one model's allocations can't hide another's)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(f"memory child failed for {spec}:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mb"]


def cuda_memory(step: Callable[[], None], device: torch.device) -> float:
    step()  # warm-up (grads, cuDNN/compile caches)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ---------------------------------------------------------------------------------------------- runs
def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


def compare(spec: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One row: ours vs twin (if any) on one input."""
    name = spec["name"]
    twin = monai_twin(name, spec["dims"], 1, 2, tuple(spec["features"]))
    x = torch.randn(*spec["shape"], generator=torch.Generator().manual_seed(1)).to(device)
    specs = {"ours": {**spec, "which": "ours"}}
    if twin is not None:
        specs["twin"] = {**spec, "which": "twin"}
    models = {k: build(s).to(device).train() for k, s in specs.items()}
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    steps = {k: make_step(m, x, args.amp_dtype) for k, m in models.items()}
    keys = list(steps)
    medians, ratios = time_interleaved([steps[k] for k in keys], args.repeats, device, warmup=3 if args.compile else 2)
    mem: dict[str, float | None] = {}
    for k in keys:
        if device.type == "cuda":
            mem[k] = round(cuda_memory(steps[k], device), 1)
        else:
            mem[k] = cpu_memory({**specs[k], "threads": torch.get_num_threads()})
    stats = {
        k: {
            "params": sum(p.numel() for p in build(specs[k]).parameters()),
            "fwd_bwd_ms": round(medians[i], 2),
            "peak_mem_mb": mem[k],
        }
        for i, k in enumerate(keys)
    }
    row: dict[str, Any] = {
        "variant": name,
        "dims": spec["dims"],
        "input_shape": list(spec["shape"]),
        "features": list(spec["features"]),
        "options": spec["options"],
        **stats["ours"],
        "monai_twin": None,
    }
    if twin is not None:
        row["monai_twin"] = {"name": twin[0], **stats["twin"]}
        row["time_ratio"] = round(ratios[1], 3)  # median over rounds of ours / twin
        row["mem_ratio"] = _ratio(stats["ours"]["peak_mem_mb"], stats["twin"]["peak_mem_mb"])
    del models, steps
    gc.collect()
    return row


def pruning_speedups(
    dims: int, shape: tuple[int, ...], feats: tuple[int, ...], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """UNet++ inference time of L1..L{depth-1} sub-networks vs the full network (eval, no_grad, interleaved)."""
    torch.manual_seed(0)
    model = build_network("unetpp", dims, 1, 2, features=feats, deep_supervision=True).to(device).eval()
    x = torch.randn(*shape, device=device)
    levels = list(range(1, len(feats) - 1))
    runner: torch.nn.Module = torch.compile(model) if args.compile else model

    def infer(level: int | None) -> Callable[[], Any]:
        def fn() -> Any:
            model.prune(level)
            ctx = torch.autocast(device.type, dtype=args.amp_dtype) if args.amp_dtype else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                return runner(x)

        return fn

    medians, ratios = time_interleaved(
        [infer(None), *(infer(lv) for lv in levels)], args.repeats, device, warmup=3 if args.compile else 2
    )
    model.prune(None)
    out: dict[str, Any] = {"input_shape": list(shape), "full_ms": round(medians[0], 2)}
    for i, level in enumerate(levels, start=1):
        out[f"L{level}"] = {"ms": round(medians[i], 2), "speedup": round(ratios[i], 2)}
    return out


def unet3p_vs_unet(
    dims: int, shape: tuple[int, ...], feats: tuple[int, ...], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Training-step time of UNet 3+ (default ``cat_channels`` = features[0]) and U-Net at the same widths.

    Timed interleaved like :func:`compare`; ``ratio`` = median per-round UNet 3+ / U-Net (target <= 3).
    """
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(device)
    models = {}
    for name in ("unet3p", "unet"):
        torch.manual_seed(0)
        models[name] = build_network(name, dims, 1, 2, features=feats, norm="batch").to(device).train()
    cat_channels = models["unet3p"].cat_channels
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    steps = [make_step(m, x, args.amp_dtype) for m in models.values()]
    medians, ratios = time_interleaved(steps, args.repeats, device, warmup=3 if args.compile else 2)
    return {
        "input_shape": list(shape),
        "features": list(feats),
        "cat_channels": cat_channels,
        "unet3p_s_per_step": round(medians[0] / 1e3, 4),
        "unet_s_per_step": round(medians[1] / 1e3, 4),
        "ratio": round(ratios[1], 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="autocast forward passes (CUDA only)")
    parser.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models (CUDA only)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine OpenMP teams >1 thread mostly measure contention)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny widths and sizes (smoke test)")
    parser.add_argument("--only", nargs="+", choices=available_networks(), help="benchmark these variants only")
    parser.add_argument("--no-pruning", action="store_true", help="skip the UNet++ pruning speed-ups")
    parser.add_argument("--no-unet3p-vs-unet", action="store_true", help="skip the UNet 3+ vs U-Net step-time report")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: CUDA is not available (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none'}); run on a GPU machine or use --device cpu"
        )
    if args.device != "cuda" and (args.amp or args.compile):
        parser.error("--amp and --compile are CUDA only; add --device cuda")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_child:
        json.dump(cpu_memory_child(json.loads(args.memory_child)), sys.stdout)
        sys.stdout.write("\n")
        return {}
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # batch norm needs >1 value per channel in training: the full 3D input (64^3) keeps 2^3 voxels at
    # EfficientNet's stride 32, so batch 1 suffices there; the quick 32^3 input needs batch 2
    # every variant at its defaults (UNet 3+: cat_channels = features[0], the reference code's rule)
    if args.quick:
        feats = (4, 8, 16, 32, 64)
        shapes = {2: (2, 1, 64, 64), 3: (2, 1, 32, 32, 32)}
    else:
        feats = (16, 32, 64, 128, 256)
        shapes = {2: (2, 1, 256, 256), 3: (1, 1, 64, 64, 64)}

    results = []
    for name in args.only or available_networks():
        for dims in (2, 3):
            options: dict[str, Any] = {}
            spec = {"name": name, "dims": dims, "features": feats, "shape": shapes[dims], "options": options}
            row = compare(spec, args, device)
            results.append(row)
            sys.stderr.write(
                f"{name:12s} {dims}d ours {row['fwd_bwd_ms']:9.1f} ms {row['peak_mem_mb']} MB"
                + (
                    f" | twin {row['monai_twin']['fwd_bwd_ms']:9.1f} ms {row['monai_twin']['peak_mem_mb']} MB"
                    f" | ratios t {row['time_ratio']} m {row['mem_ratio']}"
                    if row["monai_twin"]
                    else ""
                )
                + "\n"
            )

    report: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "repeats": args.repeats,
        "amp": str(args.amp_dtype).replace("torch.", "") if args.amp_dtype else None,
        "compile": args.compile,
        "timing_method": "interleaved ours/twin rounds after warm-up; medians; time_ratio = median per-round ratio",
        "memory_method": (
            "torch.cuda.max_memory_allocated - memory_allocated around one step after warm-up"
            if device.type == "cuda"
            else "fresh subprocess per model, MALLOC_MMAP_THRESHOLD_=65536; VmHWM - VmRSS around one step after "
            "a warm-up step, high-water mark reset via /proc/self/clear_refs (max of 2 steps)"
        ),
        "results": results,
    }
    if not args.no_pruning:
        report["unetpp_pruning"] = {f"{d}d": pruning_speedups(d, shapes[d], feats, args, device) for d in (2, 3)}
    if not args.no_unet3p_vs_unet:
        report["unet3p_vs_unet"] = {
            "target": "ratio <= 3",
            **{f"{d}d": unet3p_vs_unet(d, shapes[d], feats, args, device) for d in (2, 3)},
        }
        for d in (2, 3):
            row = report["unet3p_vs_unet"][f"{d}d"]
            sys.stderr.write(
                f"unet3p vs unet {d}d: {row['unet3p_s_per_step']:.3f} s vs {row['unet_s_per_step']:.3f} s "
                f"per step, ratio {row['ratio']}\n"
            )
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
