"""nnU-Net v2's own planner and unetflow's, side by side on the same files (issue #15); prints one JSON document.

How to run (nnU-Net is a benchmark-only dependency: the ``planning-bench`` extra, nnunetv2==2.8.1)::

    make bench-planning            # builds .venv-nnunet (once), then runs this script
    .venv/bin/python benchmarks/planning.py [--only iso aniso 2d] [--keep DIR] [--output FILE]
                                            [--nnunet-python .venv-nnunet/bin/python] [--device cpu|cuda]

nnunetv2 2.8.1 cannot go into ``.venv``: its dependencies (torchvision → torch 2.14) would replace the pinned
torch 2.13.0, so it lives in its own virtual environment ``.venv-nnunet`` (``make bench-planning`` creates it:
CPU torch 2.13.0 first, then ``pip install nnunetv2==2.8.1``), and ``benchmarks/nnunet_planner.py`` runs
nnU-Net's planner there in a subprocess. unetflow's planner runs here, in this interpreter.

What it does:

1. Writes small seeded datasets in nnU-Net v2 raw format (``DatasetXXX_Name/imagesTr/<case>_0000.nii.gz``,
   ``labelsTr/<case>.nii.gz``, ``dataset.json``) with nibabel, each case with an ellipsoid label:
   ``iso`` (CT-like, 1 mm isotropic, ~100³ voxels of varied shapes), ``aniso`` (MR-like hospital mix:
   0.57–0.8 mm in-plane on 256–512² grids, 2–6.5 mm slices, 20–60 slices; zero outside the body, so
   nnU-Net's crop to the non-zero region matters) and ``2d`` (X×Y×1 images, 0.5–0.8 mm pixels).
2. nnU-Net v2: fingerprint extraction + the default ``ExperimentPlanner`` (8 GB target), 3d_fullres and 2d.
3. unetflow: the ingest stage on the same raw folder (``tasks.ingest.batch.ingest_dataset``, what
   ``flows/ingest.py`` runs without Prefect; ``data.source: nnunet``), then what ``flows/preprocess.py`` does
   before it preprocesses cases: the split, the intensity pass of the training cases, ``make_plan``
   (planning only: no case is resampled or written). Three runs: ``unetflow`` with the network nnU-Net
   planned (as many levels as its ``n_stages``, its widths, instance norm) so topology and patch compare
   like for like; ``unetflow_default_model`` with params.yaml's model (``features`` [16, 32, 64, 128],
   batch norm), as a user gets it; ``unetflow_all_cases`` as the first with ``val_fraction`` =
   ``test_fraction`` = 0: unetflow plans from its *training* cases only, nnU-Net from every case of
   imagesTr, and this run shows the planning rules alone, on the same cases.

Axis order: everything below is in the dataset's **x, y, z** order (nibabel's, the NIfTI voxel axes; what
unetflow's plans use). nnU-Net reads NIfTI through SimpleITK, so its arrays are (z, y, x), and its planner
then transposes the axes (``transpose_forward``: coarsest-spacing axis first); its spacing, patch size,
median shape, strides and kernel sizes are mapped back here (undo ``transpose_forward``, then reverse).
nnU-Net's 2d configuration on a volume works on the two finer axes (it slices along the coarsest):
``axes`` names which ones.

Targets (issue #15): target spacing within 5% per axis; patch extent in mm (patch × target spacing)
within 0.5–2× of nnU-Net's per axis. ``targets_met`` summarises them for the ``unetflow`` runs (and, under
``all_cases_run``, for the ``unetflow_all_cases`` ones).
``--device cuda`` (on a GPU machine) makes unetflow's memory fit measure a real forward/backward of each
candidate instead of estimating it from activation sizes; ``memory.method`` in the output says which ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 15
SPACING_TOLERANCE = 0.05  # |unetflow / nnU-Net - 1| per axis
EXTENT_RANGE = (0.5, 2.0)  # unetflow / nnU-Net patch extent in mm, per axis
LABELS = {"background": 0, "lesion": 1}


# ---------------------------------------------------------------------------------------------- datasets
def iso_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """CT-like, 1 mm isotropic, 10 cases of 80–130 voxels per axis; air (-1000 HU) around the body: no zeros."""
    return [{"shape": tuple(int(v) for v in rng.integers(80, 131, size=3)), "spacing": (1.0, 1.0, 1.0),
             "background": -1000.0, "body": (40.0, 12.0), "lesion": (140.0, 15.0), "zero_outside": False}
            for _ in range(10)]


def aniso_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """MR-like hospital mix, 9 cases: in-plane 0.57–0.8 mm on 256–512² grids, slices 2–6.5 mm apart, 20–60 of
    them; intensities zero outside an elliptic body (nnU-Net crops each case to the non-zero box)."""
    grids = (256, 320, 384, 448, 512)
    # every slice spacing of the mix at least once (the 10th percentile rule needs the fine ones), then two more
    slice_spacings = [*rng.permutation([2.0, 2.5, 3.0, 4.0, 5.0, 5.0, 6.5]), *rng.choice([3.0, 5.0], size=2)]
    cases = []
    for dz in slice_spacings:
        dz = float(dz)
        in_plane = float(np.round(rng.uniform(0.57, 0.8), 3))
        grid = int(rng.choice(grids))
        slices = int(np.clip(round(rng.uniform(100.0, 150.0) / dz), 20, 60))  # ~100–150 mm of anatomy
        cases.append({"shape": (grid, grid, slices), "spacing": (in_plane, in_plane, dz), "background": 0.0,
                      "body": (300.0, 40.0), "lesion": (600.0, 60.0), "zero_outside": True})
    return cases


def flat_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """2D images (X×Y×1), 12 cases of 200–400 pixels per side at 0.5–0.8 mm; no zeros."""
    cases = []
    for _ in range(12):
        pixel = float(np.round(rng.uniform(0.5, 0.8), 3))
        cases.append({"shape": (int(rng.integers(200, 401)), int(rng.integers(200, 401)), 1),
                      "spacing": (pixel, pixel, 1.0), "background": 20.0, "body": (100.0, 15.0),
                      "lesion": (180.0, 15.0), "zero_outside": False})
    return cases


DATASETS: dict[str, tuple[int, str, str, Callable[[np.random.Generator], list[dict[str, Any]]]]] = {
    # key: (nnU-Net dataset ID, name, channel name, case generator)
    "iso": (951, "IsoCT", "CT", iso_cases),
    "aniso": (952, "AnisoMR", "T2", aniso_cases),
    "2d": (953, "Flat2D", "XRay", flat_cases),
}


def synth_case(rng: np.random.Generator, case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(int16 image, uint8 label): an elliptic body (70–90% of the field of view) holding an ellipsoid lesion
    of radius 8–25 mm, with Gaussian noise; ``zero_outside``: exactly zero around the body."""
    shape, spacing = case["shape"], np.asarray(case["spacing"], dtype=float)
    flat = shape[2] == 1
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    extent = np.asarray(shape) * spacing
    half = extent / 2 * rng.uniform(0.7, 0.9, size=3)
    body = (x / half[0]) ** 2 + (y / half[1]) ** 2 + (0 if flat else (z / half[2]) ** 2) <= 1.0
    radius = rng.uniform(8.0, 25.0, size=3)
    radius[2] = radius[2] if not flat else 1.0
    centre = rng.uniform(-0.4, 0.4, size=3) * (half - radius).clip(min=0)
    if flat:
        centre[2] = 0.0
    lesion = ((x - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2 + \
        (0 if flat else ((z - centre[2]) / radius[2]) ** 2) <= 1.0
    lesion = lesion & body
    image = np.full(shape, case["background"], dtype=np.float32)
    image[body] = rng.normal(*case["body"], size=int(body.sum()))
    image[lesion] = rng.normal(*case["lesion"], size=int(lesion.sum()))
    if case["zero_outside"]:
        image[~body] = 0.0
        image[body] = np.maximum(image[body], 1.0)  # the body stays non-zero
    else:
        image[~body] += rng.normal(0.0, 5.0, size=int((~body).sum()))
    return np.round(image).astype(np.int16), lesion.astype(np.uint8)


def write_dataset(raw_root: Path, key: str, seed: int) -> tuple[str, list[dict[str, Any]]]:
    """One nnU-Net v2 raw dataset under ``raw_root``; (folder name, the cases as generated)."""
    dataset_id, name, channel, generator = DATASETS[key]
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    rng = np.random.default_rng([seed, dataset_id])
    cases = generator(rng)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(cases):
        image, label = synth_case(rng, case)
        affine = np.diag([*case["spacing"], 1.0])
        case_id = f"{name.lower()}_{index:03d}"
        for array, path in ((image, folder / "imagesTr" / f"{case_id}_0000.nii.gz"),
                            (label, folder / "labelsTr" / f"{case_id}.nii.gz")):
            nifti = nib.Nifti1Image(array, affine)
            nifti.set_qform(affine, code=1)
            nifti.set_sform(affine, code=1)
            nib.save(nifti, str(path))
        case["case_id"] = case_id
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": LABELS, "numTraining": len(cases), "file_ending": ".nii.gz",
        "name": name}, indent=2))
    return folder.name, cases


def dataset_description(cases: list[dict[str, Any]]) -> dict[str, Any]:
    spacings = np.array([c["spacing"] for c in cases])
    shapes = np.array([c["shape"] for c in cases])
    return {"cases": len(cases),
            "spacing_mm_min": _floats(spacings.min(0)), "spacing_mm_max": _floats(spacings.max(0)),
            "shape_min": [int(v) for v in shapes.min(0)], "shape_max": [int(v) for v in shapes.max(0)]}


# ---------------------------------------------------------------------------------------------- nnU-Net
def run_nnunet(python: str, work: Path, folders: list[str]) -> dict[str, Any]:
    """``benchmarks/nnunet_planner.py`` in nnU-Net's interpreter; its JSON (plans in nnU-Net's axis order)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([python, str(ROOT / "benchmarks" / "nnunet_planner.py"), "--work", str(work), *folders],
                          capture_output=True, text=True, env=env, check=False)
    (work / "nnunet_planner.log").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net's planner failed ({done.returncode}); last lines:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def sitk_axis_to_xyz(sitk_axis: int, ndim: int = 3) -> int:
    """SimpleITK's array axis (z, y, x) → the NIfTI voxel axis (x, y, z)."""
    return ndim - 1 - sitk_axis


def to_xyz(values: Sequence[Any], transpose_forward: Sequence[int]) -> list[Any]:
    """A per-axis value of nnU-Net's 3D plan (transposed SimpleITK order) in x, y, z order."""
    out: list[Any] = [None] * 3
    for position, sitk_axis in enumerate(transpose_forward):
        out[sitk_axis_to_xyz(sitk_axis)] = values[position]
    return out


def nnunet_configuration(plans: dict[str, Any], name: str) -> dict[str, Any] | None:
    """One configuration of ``nnUNetPlans.json`` in x, y, z order (the 2d one: on the two axes it keeps)."""
    config = plans["configurations"].get(name)
    if config is None:
        return None
    forward = plans["transpose_forward"]
    arch = config["architecture"]["arch_kwargs"]
    if name == "2d":  # 2d works on transposed axes 1 and 2
        xyz_axes = [sitk_axis_to_xyz(a) for a in forward[1:]]
        order = np.argsort(xyz_axes)  # report them in x, y, z order
        pick = lambda values: [values[i] for i in order]  # noqa: E731
        axes = ["xyz"[xyz_axes[i]] for i in order]
    else:
        pick = lambda values: to_xyz(values, forward)  # noqa: E731
        axes = ["x", "y", "z"]
    spacing, patch = pick(config["spacing"]), pick(config["patch_size"])
    strides = [pick(s) for s in arch["strides"]]
    return {"axes": axes, "target_spacing_mm": _floats(spacing), "patch_size": [int(v) for v in patch],
            "patch_mm": _floats(np.multiply(patch, spacing)), "batch_size": int(config["batch_size"]),
            "median_shape_resampled": _floats(pick(config["median_image_size_in_voxels"])),
            "n_stages": int(arch["n_stages"]), "features": [int(v) for v in arch["features_per_stage"]],
            "poolings": poolings(strides), "strides": strides[1:],  # the first entry is the stem's stride 1
            "kernel_sizes": [pick(k) for k in arch["kernel_sizes"]]}


def nnunet_summary(result: dict[str, Any]) -> dict[str, Any]:
    plans, fingerprint = result["plans"], result["fingerprint"]
    forward = plans["transpose_forward"]
    spacings_xyz = np.array(fingerprint["spacings"], dtype=float)[:, ::-1]
    shapes_xyz = np.array(fingerprint["shapes_after_crop"], dtype=float)[:, ::-1]
    return {"transpose_forward_sitk_zyx": forward,
            "median_spacing_mm": _floats(np.median(spacings_xyz, 0)),
            "median_shape_after_crop": _floats(np.median(shapes_xyz, 0)),
            "3d_fullres": nnunet_configuration(plans, "3d_fullres"),
            "3d_lowres": None if "3d_lowres" not in plans["configurations"] else "planned (not compared)",
            "2d": nnunet_configuration(plans, "2d"),
            "seconds": result["seconds"]}


# ---------------------------------------------------------------------------------------------- unetflow
def run_unetflow(raw: Path, project: Path, model: dict[str, Any] | None,
                 data: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Ingest ``raw`` as the ingest stage does, then plan as the preprocess stage does (no case written);
    ``model`` / ``data``: params.yaml keys over the defaults; ``device`` cuda: the memory fit is measured."""
    from tasks.config import validate_params
    from tasks.ingest.batch import ingest_dataset
    from tasks.preprocess.in_process import plan_dataset

    sections: dict[str, Any] = {"data": {"source": "nnunet", "raw_dir": str(raw), "dataset_dir": "dataset",
                                         **(data or {})},
                                "train": {"device": device}}
    if model:
        sections["model"] = model
    params = validate_params(sections)
    dataset = project / params.data.dataset_dir
    start = time.perf_counter()
    manifest, results = ingest_dataset(raw, dataset, params.data, workers=2)
    rejected = [f"{r.case_id}: {r.reason}" for r in results if not r.accepted]
    ingested = time.perf_counter()
    plan = plan_dataset(dataset, params)
    split = plan.split
    planned = time.perf_counter()
    dims = plan.spatial_dims
    spacing = list(plan.target_spacing) if plan.target_spacing is not None else None
    patch = [int(v) for v in plan.patch_size]
    network = plan.network
    strides, kernels, batch = network.strides, network.kernel_sizes, plan.batch_size
    fingerprint = plan.fingerprint or {}
    return {
        "ingest": {"accepted": manifest["num_cases"], "rejected": rejected},
        "split": {part: len(getattr(split, part)) for part in ("train", "val", "test")},
        "spatial_dims": dims, "target_spacing_mm": _floats(spacing) if spacing else None,
        "patch_size": patch, "patch_mm": _floats(np.multiply(patch, spacing[:dims])) if spacing else None,
        "batch_size": batch if batch is not None else None,
        "batch_size_source": "plan" if batch is not None else f"train.batch_size {params.train.batch_size}",
        "median_shape_resampled": fingerprint.get("median_shape_resampled"),
        "model": {"name": network.name, "features": list(network.features), "norm": network.norm},
        "poolings": poolings([list(s) for s in strides]) if strides else None,
        "strides": [list(s) for s in strides] if strides else None,
        "kernel_sizes": [list(k) for k in kernels] if kernels else None,
        "memory": plan.memory,
        "seconds": {"ingest": round(ingested - start, 2), "plan": round(planned - ingested, 2)},
    }


def matched_model(nnunet_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """unetflow's ``model`` section for the network nnU-Net planned: its levels and widths, instance norm."""
    if nnunet_config is None:
        return None
    return {"name": "unet", "features": nnunet_config["features"], "norm": "instance"}


# ---------------------------------------------------------------------------------------------- comparison
def poolings(strides: Sequence[Sequence[int]]) -> list[int]:
    """How many times each axis is halved (stride > 1)."""
    return [int(sum(s[axis] > 1 for s in strides)) for axis in range(len(strides[0]))] if strides else []


def compare(nnunet: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """Per-axis ratios unetflow / nnU-Net and the issue's targets, on the axes nnU-Net's configuration has."""
    if nnunet is None:
        return {"comparable": False, "reason": "nnU-Net planned no such configuration"}
    idx = ["xyz".index(a) for a in nnunet["axes"]]
    out: dict[str, Any] = {"axes": nnunet["axes"]}
    if ours["target_spacing_mm"] is not None:
        sp_ratio = [ours["target_spacing_mm"][i] / nnunet["target_spacing_mm"][k] for k, i in enumerate(idx)]
        out["spacing_ratio"] = _floats(sp_ratio, 4)
        out["spacing_within_5pct"] = bool(all(abs(r - 1) <= SPACING_TOLERANCE for r in sp_ratio))
    else:
        out["spacing_ratio"], out["spacing_within_5pct"] = None, False
    if ours["patch_mm"] is not None and len(ours["patch_mm"]) == len(idx):
        ours_mm = ours["patch_mm"]
        ext_ratio = [ours_mm[k] / nnunet["patch_mm"][k] for k in range(len(idx))]
        out["patch_extent_ratio"] = _floats(ext_ratio, 3)
        out["patch_extent_within_0.5_2x"] = bool(all(EXTENT_RANGE[0] <= r <= EXTENT_RANGE[1] for r in ext_ratio))
        out["patch_voxels_ratio"] = round(float(np.prod(ours["patch_size"]) / np.prod(nnunet["patch_size"])), 3)
    else:
        out["patch_extent_ratio"], out["patch_extent_within_0.5_2x"] = None, False
    out["poolings_equal"] = None if ours["poolings"] is None else ours["poolings"] == nnunet["poolings"]
    out["kernel_sizes_equal"] = None if ours["kernel_sizes"] is None else ours["kernel_sizes"] == nnunet["kernel_sizes"]
    out["batch_size"] = {"unetflow": ours["batch_size"], "nnunet": nnunet["batch_size"]}
    return out


def _floats(values: Any, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--nnunet-python", default=str(ROOT / ".venv-nnunet" / "bin" / "python"),
                        help="interpreter with nnunetv2 (the planning-bench extra)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="unetflow's memory fit: estimated from activation sizes (cpu) or measured (cuda)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unetflow-planning-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        raw_root = work / "nnUNet_raw"
        start = time.perf_counter()
        written = {key: write_dataset(raw_root, key, args.seed) for key in args.only}
        generated = time.perf_counter()
        nnunet_run = run_nnunet(args.nnunet_python, work, [folder for folder, _ in written.values()])
        nnunet_seconds = time.perf_counter() - generated

        report: dict[str, Any] = {}
        for key, (folder, cases) in written.items():
            nn = nnunet_summary(nnunet_run["datasets"][folder])
            flat = cases[0]["shape"][2] == 1
            nn_config = nn["2d"] if flat else nn["3d_fullres"]
            raw = raw_root / folder
            matched = run_unetflow(raw, work / "unetflow" / key / "matched", matched_model(nn_config),
                                   device=args.device)
            default = run_unetflow(raw, work / "unetflow" / key / "default", None, device=args.device)
            every = run_unetflow(raw, work / "unetflow" / key / "all_cases", matched_model(nn_config),
                                 {"val_fraction": 0.0, "test_fraction": 0.0}, device=args.device)
            report[key] = {
                "dataset": {"folder": folder, **dataset_description(cases)},
                "compared_configuration": "2d" if flat else "3d_fullres",
                "nnunet": nn,
                "unetflow": matched,
                "unetflow_default_model": default,
                "unetflow_all_cases": every,
                "comparison": compare(nn_config, matched),
                "comparison_default_model": compare(nn_config, default),
                "comparison_all_cases": compare(nn_config, every),
            }

    per_dataset = {key: {"spacing_within_5pct": r["comparison"].get("spacing_within_5pct", False),
                         "patch_extent_within_0.5_2x": r["comparison"].get("patch_extent_within_0.5_2x", False)}
                   for key, r in report.items()}
    same_cases = {key: {"spacing_within_5pct": r["comparison_all_cases"].get("spacing_within_5pct", False),
                        "patch_extent_within_0.5_2x": r["comparison_all_cases"].get("patch_extent_within_0.5_2x",
                                                                                    False)}
                  for key, r in report.items()}
    document = {
        "benchmark": "planning",
        "versions": {"nnunetv2": nnunet_run.get("nnunetv2"), "unetflow": _version("unetflow"),
                     "torch": _version("torch"), "python": platform.python_version()},
        "axis_order": "x, y, z (NIfTI voxel axes, as nibabel and unetflow's plans use them); nnU-Net's plans "
                      "(SimpleITK z, y, x, then transpose_forward) are mapped back",
        "nnunet_planner": "ExperimentPlanner (default, 8 GB), DatasetFingerprintExtractor",
        "unetflow_runs": {"unetflow": "model = nnU-Net's planned network (its n_stages and widths, instance norm)",
                          "unetflow_default_model": "model = params.yaml defaults",
                          "unetflow_all_cases": "as unetflow, with val_fraction = test_fraction = 0: planned "
                                                "from every case, as nnU-Net is (isolates the planning rules "
                                                "from which cases they see)"},
        "targets": {"spacing": f"within {SPACING_TOLERANCE:.0%} per axis",
                    "patch_extent_mm": f"within {EXTENT_RANGE[0]}-{EXTENT_RANGE[1]}x per axis"},
        "seed": args.seed,
        "seconds": {"generate": round(generated - start, 1), "nnunet_total": round(nnunet_seconds, 1),
                    "total": round(time.perf_counter() - start, 1)},
        "datasets": report,
        "targets_met": {"all": bool(all(all(v.values()) for v in per_dataset.values())), **per_dataset,
                        "all_cases_run": {"all": bool(all(all(v.values()) for v in same_cases.values())),
                                          **same_cases}},
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
