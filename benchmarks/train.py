"""Training-loop overhead: samples/s of unetflow's loop against a bare PyTorch loop, same run.

Both loops train the same network (same initial weights) on the same in-memory patches with the
same batch size; ours adds what the pipeline adds — the MONAI loader with foreground-biased crops
(augmentation off), the pixel-weighted CE with its weight map, gradient clipping and the AMP
scaler. Target: ours ≥ 0.9× the bare loop. Prints JSON. On CUDA (``--device cuda``) both loops use
AMP and the card is named in the output.

    python benchmarks/train.py [--device cpu|cuda] [--dims 2|3] [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    print(json.dumps({
        "benchmark": "train_loop",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "amp": amp,
        "dims": args.dims, "patch": list(plan.patch_size), "batch_size": args.batch_size, "steps": steps,
        "features": list(features), "repeats": args.repeats,
        "bare_samples_per_s": round(bare, 2), "ours_samples_per_s": round(ours, 2),
        "ratio_ours_over_bare": round(ours / bare, 3), "target_ratio": 0.9,
    }, indent=2))


if __name__ == "__main__":
    main()
