"""Batch inference throughput: volumes/min of unetflow's batch against a bare MONAI loop; prints JSON.

Both sides segment the same NIfTI volumes with the same network and window settings (ROI, overlap,
``sw_batch_size``, Gaussian blending) in the same process. The bare loop is the least a script must
do — read, z-score, ``sliding_window_inference``, argmax, write — so the ratio shows what the
pipeline's extras cost (canonical reorientation, checks, per-case report, atomic writes, summary).
Target: ratio >= 0.9. Also measured: the Prefect flow with 2 thread workers (and with ``--dask`` a
local 2-process Dask cluster), and the process RSS over the batch (it must stay flat).

    python benchmarks/infer.py --quick              # small volumes, CPU (a minute or two)
    python benchmarks/infer.py --device cuda --amp  # GPU; the GPU's name goes into the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.inferers import sliding_window_inference  # noqa: E402

import tasks.inference.batch as infer  # noqa: E402
from tasks.common.plan import Plan, build_model
from tasks.inference.batch import model_identity, run_batch  # noqa: E402
from tasks.inference.segment import InferSettings  # noqa: E402
from tasks.tracking.model_package import save_checkpoint  # noqa: E402


def rss_mb() -> float:
    """Current resident memory (Linux /proc; falls back to the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_volumes(folder: Path, count: int, shape: tuple[int, int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        data = rng.normal(0, 1, shape).astype(np.float32)
        data[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2, :] += 3
        path = folder / f"vol{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
        paths.append(path)
    return paths


def bare_loop(model: torch.nn.Module, paths: list[Path], output: Path, roi: tuple[int, ...], overlap: float,
              sw_batch_size: int, device: torch.device, amp: bool) -> float:
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            image = nib.load(str(path))
            data = np.asanyarray(image.dataobj).astype(np.float32)
            tensor = torch.as_tensor((data - data.mean()) / max(float(data.std()), 1e-8))[None, None]
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = sliding_window_inference(tensor, roi, sw_batch_size, model, overlap=overlap, mode="gaussian",
                                                  sw_device=device, device=device)
            labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            nib.save(nib.Nifti1Image(labels, image.affine), str(output / path.name))
    return time.perf_counter() - started


def flow_run(root: Path, checkpoint: Path, inbox: str, output: str, runner: str, workers: int, device: str,
             amp: bool, roi: tuple[int, ...], overlap: float, sw_batch_size: int) -> tuple[float, dict]:
    import yaml

    from flows.infer import infer_flow

    (root / "params.yaml").write_text(yaml.safe_dump({
        "infer": {"runner": runner, "workers": workers, "device": device, "amp": amp, "roi_size": list(roi),
                  "overlap": overlap, "sw_batch_size": sw_batch_size, "cgm_filter": False},
        "tracking": {"system_metrics": False}}))
    started = time.perf_counter()
    result = infer_flow(root=str(root), model=str(checkpoint), input=inbox, output=output)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes and network (CPU-friendly)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--dask", action="store_true", help="also time a local 2-process Dask cluster")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (best is reported)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (0: torch's default; 1 avoids OpenMP spinning on a busy host)")
    parser.add_argument("--no-flow", action="store_true", help="skip the Prefect flow measurements")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    quick = args.quick
    shape = (64, 64, 32) if quick else (192, 192, 128)
    count = args.cases or (6 if quick else 20)
    roi = (32, 32, 16) if quick else (128, 128, 64)
    features = [8, 16, 32] if quick else [32, 64, 128, 256]
    overlap, sw_batch_size = 0.25, 4
    torch.manual_seed(0)
    plan = Plan.model_validate({
        "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "fg": 1},
        "patch_size": list(roi), "normalization": {"channels": [{"scheme": "zscore"}]},
        "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": features, "norm": "instance"}})
    model = build_model(plan).to(device).eval()

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        paths = write_volumes(root / "inbox", count, shape)
        checkpoint = root / "model.pt"
        save_checkpoint(checkpoint, {"model": model.state_dict(), "plan": plan.to_json()})

        bare_loop(model, paths[:1], root / "warmup", roi, overlap, sw_batch_size, device, args.amp)  # warm-up
        settings = InferSettings(roi_size=roi, overlap=overlap, sw_batch_size=sw_batch_size, device=args.device,
                                 amp=args.amp, cgm_filter=False, model_id=model_identity(model))
        rss: list[float] = []
        original = infer.segment_case

        def measured(*a, **k):  # noqa: ANN002, ANN003, ANN202
            report = original(*a, **k)
            rss.append(rss_mb())
            return report

        def ours_once(output: Path) -> float:
            infer.segment_case = measured
            started = time.perf_counter()
            outcomes = run_batch(root / "inbox", output, settings, model, plan)
            infer.segment_case = original
            assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes if o.status != "done"]
            return time.perf_counter() - started

        # Alternating rounds, best of each side: other processes on a shared machine slow either side at random.
        bare_times, ours_times = [], []
        for index in range(args.rounds):
            if index % 2 == 0:
                bare_times.append(bare_loop(model, paths, root / f"bare{index}", roi, overlap, sw_batch_size, device,
                                            args.amp))
                ours_times.append(ours_once(root / f"ours{index}"))
            else:
                ours_times.append(ours_once(root / f"ours{index}"))
                bare_times.append(bare_loop(model, paths, root / f"bare{index}", roi, overlap, sw_batch_size, device,
                                            args.amp))
        baseline, ours = min(bare_times), min(ours_times)
        agree = float(np.mean([np.mean(np.asanyarray(nib.load(str(root / "bare0" / p.name)).dataobj)
                                       == np.asanyarray(nib.load(str(root / "ours0" / p.name)).dataobj))
                               for p in paths]))

        result = {
            "device": args.device, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "amp": args.amp, "torch_threads": torch.get_num_threads(), "cases": count, "shape": list(shape),
            "roi": list(roi), "overlap": overlap, "sw_batch_size": sw_batch_size, "features": features,
            "bare_monai_loop_volumes_per_min": round(count / baseline * 60, 2),
            "unetflow_batch_volumes_per_min": round(count / ours * 60, 2),
            "ratio": round(baseline / ours, 3), "target_ratio": 0.9,
            "rounds": args.rounds, "bare_seconds": [round(t, 2) for t in bare_times],
            "unetflow_seconds": [round(t, 2) for t in ours_times],
            "voxel_agreement_with_bare_loop": round(agree, 5),  # it blends logits, unetflow probabilities
            "rss_mb_after_first_case": round(rss[0], 1), "rss_mb_after_last_case": round(rss[-1], 1),
            "rss_mb_max": round(max(rss), 1),
        }
        if not args.no_flow:
            from prefect.testing.utilities import prefect_test_harness

            import flows  # noqa: F401  (telemetry off)

            with prefect_test_harness(server_startup_timeout=180):
                (root / "empty").mkdir()
                flow_run(root, checkpoint, "empty", "warm", "threads", 1, args.device, args.amp, roi, overlap,
                         sw_batch_size)  # starts the API server and imports, outside the timings
                for workers in (1, 2):
                    seconds, done = flow_run(root, checkpoint, "inbox", f"flow{workers}", "threads", workers,
                                             args.device, args.amp, roi, overlap, sw_batch_size)
                    assert done["done"] == count, done
                    result[f"flow_threads_{workers}_volumes_per_min"] = round(count / seconds * 60, 2)
                if args.dask:
                    seconds, done = flow_run(root, checkpoint, "inbox", "dask", "dask", 2, args.device, args.amp,
                                             roi, overlap, sw_batch_size)
                    assert done["done"] == count, done
                    result["flow_dask_2_volumes_per_min_incl_cluster_start"] = round(count / seconds * 60, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
