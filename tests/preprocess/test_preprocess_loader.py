"""Training transforms built from params keep image, label and weight map aligned; the loader feeds
the pixel-weighted CE with a weight map that matches the label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.data import CacheDataset, DataLoader
from scipy import ndimage

from monai_ext.losses import build_loss
from monai_ext.transforms import RandUNetElasticd, coarse_to_dense_displacement, unet_weight_map
from tasks.common.plan import Plan
from tasks.config import AugmentConfig, validate_params
from tasks.training.data_loader import (
    case_records,
    load_cases,
    training_dataset,
    training_loader,
    training_transforms,
    validation_transforms,
)
from tasks.training.patch_sampler import PatchDataset
from tests.preprocess.conftest import preprocess

REPO = Path(__file__).resolve().parents[2]
STILL = {"flip_prob": 0.0, "rotate90_prob": 0.0, "intensity_scale_prob": 0.0, "intensity_shift_prob": 0.0,
         "noise_prob": 0.0}


def balls(shape: tuple[int, ...], radius: int, pitch: int) -> np.ndarray:
    """Instances on a regular grid, separated by thin background gaps (2D discs or 3D balls)."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    centres = np.stack(np.meshgrid(*[np.arange(pitch // 2, s, pitch) for s in shape], indexing="ij"), -1)
    for k, centre in enumerate(centres.reshape(-1, len(shape)), start=1):
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        labels[dist2 <= radius**2] = k
    return labels


def loader_plan(dims: int, patch: list[int]) -> Plan:
    """A plan with what the loader reads (dims, patch, weight maps); the rest is filler."""
    return Plan.model_validate({"spatial_dims": dims, "patch_size": patch, "weight_maps": True, "in_channels": 1,
                                "num_classes": 2, "label_names": {"background": 0, "cell": 1},
                                "normalization": {"channels": [{"scheme": "none"}]},
                                "split": {"train": [], "val": [], "test": []},
                                "network": {"name": "unet", "features": [4, 8]}})


def marker_item(instances: np.ndarray) -> dict[str, np.ndarray]:
    """Image = the label as float, so a bilinear image and a nearest label must still agree."""
    binary = (instances > 0).astype(np.uint8)
    return {"image": binary[None].astype(np.float32), "label": binary[None],
            "weight": unet_weight_map(instances, class_weights=None)[None]}  # w_c = 1: interiors exactly 1


@pytest.mark.parametrize(("dims", "shape", "patch", "radius", "pitch", "sigma"),
                         [(2, (64, 64), [48, 48], 7, 16, 8.0), (3, (36, 36, 24), [24, 24, 16], 5, 12, 4.0)])
def test_monai_elastic_from_params_keeps_image_label_weight_aligned(dims, shape, patch, radius, pitch, sigma):
    instances = balls(shape, radius, pitch)
    plan = loader_plan(dims, patch)
    config = AugmentConfig(elastic="monai", elastic_prob=1.0, elastic_sigma=sigma, elastic_magnitude=(2.0, 3.0),
                           **STILL)
    transform = training_transforms(plan, config)
    names = [type(t).__name__ for t in transform.transforms]
    assert f"Rand{dims}DElasticd" in names  # chosen by the plan's spatial dims
    transform.set_random_state(11)
    out = transform(marker_item(instances))[0]
    image, label, weight = (out[key].numpy()[0] for key in ("image", "label", "weight"))
    assert image.shape == label.shape == weight.shape == tuple(patch)
    assert set(np.unique(label).tolist()) <= {0, 1}  # nearest keeps the label set
    assert ((image > 0.01) & (image < 0.99)).mean() > 0.01  # it did deform (bilinear made partial voxels)
    assert (np.round(image) == label).mean() > 0.97  # one field for image and label
    interior = ndimage.binary_erosion(label > 0, iterations=3)
    assert interior.any() and np.abs(weight[interior] - 1).max() < 1e-3  # weight moved with the label
    # the weight's ridges follow the deformed gaps: recompute it from the deformed label (objects split
    # at the gaps), compare away from the patch border where cut-off objects change distances
    recomputed = unet_weight_map(label, class_weights=None, labels_are_instances=False)
    centre = tuple(slice(s // 6, s - s // 6) for s in patch)
    assert np.corrcoef(recomputed[centre].ravel(), weight[centre].ravel())[0, 1] > 0.8


def test_paper_elastic_and_disabled_augmentation_from_params():
    plan = loader_plan(2, [32, 32])
    paper = training_transforms(plan, AugmentConfig(elastic="paper", grid=3, sigma_px=10.0))
    elastic = [t for t in paper.transforms if isinstance(t, RandUNetElasticd)]
    assert len(elastic) == 1 and elastic[0].sigma_px == 10.0 and elastic[0].orders == [1, 0, 1]
    off = training_transforms(plan, False)  # the old boolean form still works
    assert [type(t).__name__ for t in off.transforms] == ["LoadPreprocessedd", "SpatialPadd", "EnsureTyped",
                                                          "RandCropByPosNegLabeld", "EnsureTyped"]
    # rot90 only in a plane where the patch is square, so batches of anisotropic 3D patches still collate
    anisotropic = training_transforms(loader_plan(3, [16, 24, 24]).model_copy(update={"weight_maps": False}))
    rot = [t for t in anisotropic.transforms if type(t).__name__ == "RandRotate90d"]
    assert rot and rot[0].spatial_axes == (1, 2)


def _mean_abs_displacement_gradient(rows: np.ndarray, cols: np.ndarray) -> float:
    """Strain of a field read off two warped coordinate ramps (bilinear warps a ramp exactly): the
    Jacobian of ``x + u(x)`` minus identity. Voxels the warp pulled from beyond the crop (a reflected ramp:
    the Jacobian's diagonal turns negative) are left out: they say where the margin ended, not how the
    field bends."""
    jacobian = np.stack([np.stack(np.gradient(ramp.astype(np.float64))) for ramp in (rows, cols)])
    inside = (jacobian[0, 0] > 0.2) & (jacobian[1, 1] > 0.2)
    assert inside.mean() > 0.8
    strain = np.abs(jacobian - np.eye(2)[:, :, None, None])
    return float(strain[:, :, inside].mean())


def test_paper_elastic_strain_follows_the_whole_image_grid_not_the_patch():
    """The paper's 3x3 grid spans the image: a 128 patch of a 512 image is strained like the image's field
    there, not ~3x more (a grid laid over the cropped patch puts its nodes ~3x closer)."""
    size, patch, draws = 512, 128, 30
    plan = loader_plan(2, [patch, patch])
    config = AugmentConfig(elastic="paper", elastic_prob=1.0, grid=3, sigma_px=10.0, **STILL)
    rows, cols = np.indices((size, size), dtype=np.float32)
    label = np.zeros((1, size, size), np.uint8)
    label[0, 192:320, 192:320] = 1
    item = {"image": rows[None], "label": label, "weight": cols[None]}  # image, weight: coordinate ramps
    transform = training_transforms(plan, config)
    patched = []
    for seed in range(draws):
        out = transform.set_random_state(seed)(item)[0]
        assert set(out) == {"image", "label", "weight"}  # the image's shape rode along and was dropped
        patched.append(_mean_abs_displacement_gradient(out["image"].numpy()[0], out["weight"].numpy()[0]))
    rng = np.random.default_rng(0)
    whole = []  # the paper's field over the whole image, seen through a 128 window anywhere in it
    for _ in range(draws):
        field = coarse_to_dense_displacement(rng.normal(0.0, 10.0, size=(2, 3, 3)), (size, size))
        x, y = rng.integers(0, size - patch + 1, size=2)
        window = field[:, x:x + patch, y:y + patch]
        whole.append(float(np.abs(np.stack([np.stack(np.gradient(c)) for c in window])).mean()))
    ratio = np.mean(patched) / np.mean(whole)
    assert 0.75 < ratio < 1.33, ratio
    batch = next(iter(DataLoader(CacheDataset([item, item], transform, progress=False), batch_size=2)))
    assert set(batch) == {"image", "label", "weight"}  # collated batches carry only the data


@pytest.fixture
def preprocessed(tiny_project):
    root, params = tiny_project(preprocess={"class_weights": "balanced"})
    plan, _ = preprocess(root, params)
    return root, params, plan


def test_loader_batches_carry_weight_maps_aligned_with_labels_and_feed_weighted_ce(preprocessed):
    root, params, plan = preprocessed
    items = load_cases(root / params.preprocess.output_dir, plan.split.train)
    torch.manual_seed(0)
    loader = training_loader(items, plan, 2, params.train.augment)  # what the trainer calls
    assert isinstance(loader.dataset, CacheDataset)  # items holding arrays: the in-memory pipeline
    batches = list(loader)
    assert batches
    for batch in batches:
        label, weight = batch["label"].numpy(), batch["weight"].numpy()
        assert weight.shape == label.shape == (2, 1, *plan.patch_size)
        for lab, wmap in zip(label, weight, strict=True):
            # balanced w_c + border term on background only: every foreground voxel carries the one
            # foreground class weight, and the touching-cell ridges (largest weights) lie on background
            if (lab == 1).any():
                assert np.ptp(wmap[lab == 1]) < 1e-5
                assert wmap[lab == 0].max() > wmap[lab == 1].max() + 1.0
    batch = batches[0]
    logits = torch.randn(2, plan.num_classes, *plan.patch_size, generator=torch.Generator().manual_seed(0))
    target = batch["label"].long()
    weighted = build_loss("wce")(logits, target, batch["weight"])
    plain = build_loss("ce")(logits, target, batch["weight"])
    assert torch.isfinite(weighted) and not torch.isclose(weighted, plain)
    with pytest.raises(ValueError, match="weight map"):
        build_loss("wce")(logits, target, None)


def test_mmap_loader_reads_case_files_and_workers_run_the_random_part(preprocessed):
    root, params, plan = preprocessed
    records = case_records(root / params.preprocess.output_dir, plan.split.train)
    uncached = AugmentConfig(loader_cache="mmap", loader_workers=1)
    assert params.train.augment.loader_cache == "mmap"  # the default
    assert isinstance(training_dataset(records, plan, uncached), PatchDataset)
    assert isinstance(training_dataset(records, plan, AugmentConfig(loader_cache="memory")), CacheDataset)
    loader = training_loader(records, plan, 2, uncached)
    assert loader.num_workers == 1
    batch = next(iter(loader))
    assert set(batch) >= {"image", "label", "weight"} and batch["image"].shape[2:] == plan.patch_size


def test_validation_transforms_are_deterministic(preprocessed):
    root, params, plan = preprocessed
    record = case_records(root / params.preprocess.output_dir, plan.split.val)[0]
    arrays = load_cases(root / params.preprocess.output_dir, plan.split.val)[0]
    first, second = validation_transforms(plan)(record), validation_transforms(plan)(record)
    for key in ("image", "label", "weight"):
        np.testing.assert_array_equal(first[key].numpy(), arrays[key])
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())


def test_augment_config_is_spelled_out_and_accepts_the_old_boolean():
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert set(on_disk["train"]["augment"]) == set(AugmentConfig.model_fields)
    assert set(on_disk["preprocess"]) == set(validate_params({}).preprocess.model_fields)
    assert validate_params({"train": {"augment": False}}).train.augment.enabled is False
    assert validate_params({"train": {"augment": {"elastic": "paper"}}}).train.augment.elastic == "paper"
    with pytest.raises(ValueError, match="elastic"):
        validate_params({"train": {"augment": {"elastic": "sideways"}}})
    assert "train.augment.elastic" in validate_params({}).flat()


def test_instance_data_trains_on_border_core_targets_weighted_on_the_rims_between_cells(preprocessed):
    """The tiny cells have instance maps: cases store the rims' target beside the true classes, the weight map's
    border term sits on the rims where two cells touch, and the loader hands the target on as the label."""
    from monai_ext.transforms import border_core_labels
    from tasks.preprocess.case_store import open_case

    root, params, plan = preprocessed
    assert plan.border_core and plan.num_classes == 2
    touching_rims = 0
    for case_id in plan.split.train:
        case = open_case(root / params.preprocess.output_dir, case_id, mmap=False)
        assert set(case) == {"image", "label", "instances", "target", "weight"}
        assert set(np.unique(case["label"])) <= {0, 1}  # the label keeps the classes (validation scores them)
        np.testing.assert_array_equal(case["target"], border_core_labels(case["label"], case["instances"], 2, 1))
        ids, target, weight = case["instances"][0], case["target"][0], case["weight"][0]
        grown = [ndimage.binary_dilation(ids == k) for k in range(1, int(ids.max()) + 1)]
        between = (np.sum(grown, axis=0) >= 2) & (target == 2)  # rim voxels next to another cell
        touching_rims += int(between.sum())
        if between.any():  # the paper's ridge: rims between cells outweigh every core voxel
            assert np.median(weight[between]) > weight[target == 1].max() + 1.0
        assert np.ptp(weight[target == 1]) < 1e-5  # cores carry their class weight alone
    assert touching_rims > 0
    batch = next(iter(training_loader(case_records(root / params.preprocess.output_dir, plan.split.train),
                                      plan, 2, AugmentConfig(enabled=False, loader_workers=0))))
    assert set(batch) == {"image", "label", "weight"} and set(np.unique(batch["label"].numpy())) == {0, 1, 2}
