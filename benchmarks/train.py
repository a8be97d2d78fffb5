"""Training-loop overhead (samples/s of unetflow's loop against a bare PyTorch loop) and out-of-core memory.

Both loops train the same network (same initial weights) on the same in-memory patches with the
same batch size; ours adds what the pipeline adds — the MONAI loader with foreground-biased crops
(augmentation off), the pixel-weighted CE with its weight map, gradient clipping and the AMP
scaler. Target: ours ≥ 0.9× the bare loop. Prints JSON. On CUDA (``--device cuda``) both loops use
AMP and the card is named in the output.

``memory`` section (issue #15): N and 8N CT-sized 3D cases (``--volume``, default 256×256×100 float32)
written with ``write_case``; a fresh subprocess per size runs what the trainer runs with ``loader_cache:
mmap`` — a few ``run_epoch`` steps, BN recalibration and case-by-case validation — and reports its peak
RSS. Target: RSS(8N) / RSS(N) ≤ 1.15. Then the loader's samples/s from memory-mapped patches against the
in-memory cache (same cases and transforms, augmentation off so the reading, not the augmentation, is
timed). Target ≥ 0.8×.

    python benchmarks/train.py [--section overhead|memory] [--device cpu|cuda] [--dims 2|3] [--steps N]
                               [--cases N] [--volume X,Y,Z] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_ext.networks import build_network
from monai_ext.transforms.weight_maps import unet_weight_map
from tasks.common.plan import Plan
from tasks.config import TrainConfig
from tasks.ingest.synthetic import SyntheticSpec, cell_image
from tasks.training.data_loader import training_loader
from tasks.training.epochs import run_epoch
from tasks.training.optim import make_loss, make_optimizer


def make_items(n: int, size: int, dims: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Synthetic touching cells (2D) or stacks of them (3D), with their U-Net weight maps."""
    rng = np.random.default_rng(seed)
    spec = SyntheticSpec(size=size)
    items = []
    for _ in range(n):
        if dims == 2:
            image, instances = cell_image(rng, spec)
        else:
            slices = [cell_image(rng, spec) for _ in range(size)]
            image = np.stack([s[0] for s in slices], -1)
            instances = np.stack([s[1] + (i * 1000) * (s[1] > 0) for i, s in enumerate(slices)], -1)
        weight = unet_weight_map(instances, w0=10.0, sigma=5.0)
        items.append({"image": image[None].astype(np.float32), "label": (instances > 0)[None].astype(np.uint8),
                      "weight": weight[None].astype(np.float32)})
    return items


def bare_loop(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
              amp: bool) -> float:
    """The textbook loop: tensors already batched, plain CE, SGD, nothing else."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for image, label in batches:
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(image), label[:, 0].long())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def our_loop(model: nn.Module, items: list[dict], plan: Plan, config: TrainConfig, device: torch.device,
             steps: int) -> float:
    from tasks.config import Params

    params = Params(train=config)
    loader = training_loader(items, plan, config.batch_size, False)
    loss_fn = make_loss(params)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    config = config.model_copy(update={"max_steps_per_epoch": steps})
    start = time.perf_counter()
    done = 0
    while done < steps:
        run_epoch(model, loader, loss_fn, optimizer, scaler, device, config, use_weights=True)
        done += min(len(loader), steps - done)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def write_ct_cases(folder: Path, n: int, shape: tuple[int, ...], seed: int = 0) -> list[str]:
    """``n`` CT-sized cases (float32 image, a few spherical 'organs' of two classes), via ``write_case``."""
    from tasks.preprocess.case_store import write_case

    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape).astype(np.float32)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    ids = []
    for index in range(n):
        label = np.zeros(shape, np.uint8)
        for cls, radius in ((1, shape[0] // 8), (2, shape[0] // 24)):
            centre = [int(rng.integers(radius, s - radius)) if s > 2 * radius else s // 2 for s in shape]
            label[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2] = cls
        image = np.roll(base, index, axis=0) + label  # distinct per case, cheap to make
        case_id = f"ct_{index:03d}"
        write_case(folder, case_id, {"image": image[None], "label": label[None]})
        ids.append(case_id)
    return ids


def ct_plan(patch: list[int]) -> Plan:
    return Plan.model_validate({
        "spatial_dims": 3, "patch_size": patch, "weight_maps": False, "in_channels": 1, "num_classes": 3,
        "label_names": {"background": 0, "organ": 1, "lesion": 2}, "normalization": {"channels": [{"scheme": "none"}]},
        "split": {"train": [], "val": [], "test": []}, "network": {"name": "unet", "features": [4, 8, 16]}})


def memory_child(folder: Path, patch: list[int], steps: int, cache: str) -> dict[str, Any]:
    """What the trainer runs per epoch on ``folder``'s cases (all train, so BN recalibration runs at every
    size; the last also validates): ``run_epoch``, BN recalibration from the maps, case-by-case
    validation. Peak RSS of this process."""
    from tasks.config import AugmentConfig, Params
    from tasks.training.batch_norm import recalibrate_batch_norm
    from tasks.training.data_loader import case_records, iter_cases
    from tasks.training.epochs import validate

    torch.set_num_threads(1)
    ids = sorted(p.name for p in (folder / "cases").iterdir())
    plan, device = ct_plan(patch), torch.device("cpu")
    config = TrainConfig(batch_size=2, amp=False, loss="ce_dice", max_steps_per_epoch=steps,
                         augment=AugmentConfig(loader_cache=cache))
    records, val = case_records(folder, ids), case_records(folder, ids[-1:])
    torch.manual_seed(0)
    model = build_network("unet", 3, 1, 3, features=(4, 8, 16), norm="batch")
    loader = training_loader(records, plan, config.batch_size, config.augment)
    optimizer = make_optimizer(model, config)
    start = time.perf_counter()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = run_epoch(model, loader, make_loss(Params(train=config)), optimizer, scaler, device, config, False)
    recalibrate_batch_norm(model, records, plan.patch_size, device, config.batch_size)
    dice = validate(model, iter_cases(val), plan, device)["val_dice"]
    return {"cases": len(ids), "cache": cache, "loss": round(loss, 4), "val_dice": round(dice, 4),
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _run_child(folder: Path, patch: list[int], steps: int, cache: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(folder), "--patch", ",".join(map(str, patch)),
               "--steps", str(steps), "--cache", cache]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def loader_rate(folder: Path, patch: list[int], cache: str, epochs: int) -> tuple[float, float]:
    """(setup seconds, samples/s after setup) of the training loader, augmentation off."""
    from tasks.config import AugmentConfig
    from tasks.training.data_loader import case_records

    ids = sorted(p.name for p in (folder / "cases").iterdir())
    torch.manual_seed(0)
    start = time.perf_counter()
    loader = training_loader(case_records(folder, ids), ct_plan(patch), 2, AugmentConfig(enabled=False,
                                                                                         loader_cache=cache))
    setup, samples, start = time.perf_counter() - start, 0, time.perf_counter()
    for _ in range(epochs):
        samples += sum(int(batch["image"].shape[0]) for batch in loader)
    return setup, samples / (time.perf_counter() - start)


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of a short training on N vs 8N cases (mmap), and mmap vs in-memory loader throughput."""
    shape = tuple(int(s) for s in (args.volume or ("160,160,64" if args.quick else "256,256,100")).split(","))
    n = args.cases or (2 if args.quick else 4)
    patch = [64, 64, 32] if args.quick else [96, 96, 48]
    steps = 4 if args.quick else 8
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (n, 8 * n):
            folder = Path(tmp) / f"n{count}"
            write_ct_cases(folder, count, shape)
            disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            rows.append({**_run_child(folder, patch, steps, "mmap"), "disk_mb": round(disk / 2**20, 1)})
        small = Path(tmp) / f"n{n}"
        memory_setup, memory_rate = loader_rate(small, patch, "memory", 3)
        mmap_setup, mmap_rate = loader_rate(small, patch, "mmap", 3)
    return {"volume": list(shape), "patch": patch, "steps": steps, "runs": rows,
            "rss_ratio_8n_over_n": round(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3), "target_rss_ratio": 1.15,
            "loader_augmentation": "off", "loader_cases": n, "samples_per_s_mmap": round(mmap_rate, 2),
            "samples_per_s_memory": round(memory_rate, 2), "setup_s_mmap": round(mmap_setup, 2),
            "setup_s_memory": round(memory_setup, 2),
            "ratio_mmap_over_memory": round(mmap_rate / memory_rate, 3), "target_loader_ratio": 0.8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("overhead", "memory"), action="append", help="default: both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--cases", type=int, default=0, help="memory: N (N and 8N cases are written)")
    parser.add_argument("--volume", default="", help="memory: case shape X,Y,Z")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--patch", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="mmap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measured training run, in its own process
        print(json.dumps(memory_child(Path(args.child), [int(s) for s in args.patch.split(",")], args.steps,
                                      args.cache)))
        return
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    if "overhead" in (args.section or ["overhead"]):
        results = bench_overhead(args)
    if "memory" in (args.section or ["memory"]):
        results["memory"] = bench_memory(args)
    print(json.dumps(results, indent=2))


def bench_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Our loop against the bare loop on the same patches, interleaved repeats."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    size = (32 if args.dims == 2 else 16) if args.quick else (128 if args.dims == 2 else 48)
    steps = 4 if args.quick else args.steps
    features = (8, 16, 32) if args.quick else (16, 32, 64, 128)
    items = make_items(max(args.batch_size * 2, 8), size, args.dims)
    plan = Plan.model_validate({
        "spatial_dims": args.dims, "patch_size": [size] * args.dims, "weight_maps": True, "in_channels": 1,
        "num_classes": 2, "label_names": {"background": 0, "fg": 1},
        "normalization": {"channels": [{"scheme": "none"}]},
        "split": {"train": [], "val": [], "test": []}, "network": {"name": "unet", "features": list(features)}})
    config = TrainConfig(batch_size=args.batch_size, amp=device.type == "cuda", loss="wce")
    amp = config.amp

    rng = np.random.default_rng(1)
    batches = []
    for _ in range(steps):
        chosen = rng.choice(len(items), size=args.batch_size)
        batches.append((torch.from_numpy(np.stack([items[i]["image"] for i in chosen])),
                        torch.from_numpy(np.stack([items[i]["label"] for i in chosen]))))
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]

    torch.manual_seed(0)
    reference = build_network("unet", args.dims, 1, 2, features=features, norm="batch").to(device)
    # Warm-up (allocator, kernels, loader start-up) outside the timings.
    bare_loop(copy.deepcopy(reference), batches[:2], device, amp)
    our_loop(copy.deepcopy(reference), items, plan, config, device, 2)
    bare_times, our_times = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        bare_times.append(bare_loop(copy.deepcopy(reference), batches, device, amp))
        our_times.append(our_loop(copy.deepcopy(reference), items, plan, config, device, steps))
    samples = steps * args.batch_size
    bare, ours = samples / float(np.median(bare_times)), samples / float(np.median(our_times))
    return {
        "benchmark": "train_loop",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "amp": amp,
        "dims": args.dims, "patch": list(plan.patch_size), "batch_size": args.batch_size, "steps": steps,
        "features": list(features), "repeats": args.repeats,
        "bare_samples_per_s": round(bare, 2), "ours_samples_per_s": round(ours, 2),
        "ratio_ours_over_bare": round(ours / bare, 3), "target_ratio": 0.9,
    }


if __name__ == "__main__":
    main()
