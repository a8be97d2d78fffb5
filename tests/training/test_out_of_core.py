"""Out-of-core training data (issue #15): cases as memory-mapped ``.npy`` folders, patches cut from the maps.

What must hold: a case round-trips and is complete only once its marker exists; the loader cuts patches of
the plan's size, centred on foreground when asked, whose image/label/weight voxels are the same voxels of
the case (with the same mirroring and padding as the in-memory pipeline); the dataset holds paths, not
arrays; and validating case by case scores exactly as validating the whole set in memory.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import SpatialPadd

from monai_ext.networks import build_network
from tasks.common.plan import Plan
from tasks.preprocess import case_store
from tasks.preprocess.case_store import IncompleteCase, case_locations, open_case, read_properties, write_case
from tasks.training.data_loader import case_records, iter_cases, load_cases, patch_dataset
from tasks.training.epochs import validate
from tasks.training.valid_padding import valid_padding_steps


def make_plan(patch: list[int], output: list[int] | None = None, weight_maps: bool = True) -> Plan:
    options = {"padding": "valid"} if output else {}
    return Plan.model_validate({
        "spatial_dims": len(patch), "patch_size": patch, "output_size": output, "weight_maps": weight_maps,
        "in_channels": 1, "num_classes": 3, "label_names": {"background": 0, "a": 1, "b": 2},
        "normalization": {"channels": [{"scheme": "none"}]}, "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": [4, 8], "options": options}})


def coded_case(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Image = 1 + the voxel's flat index (so a patch says which voxels it holds; 0 = padding); a sparse
    two-class label; weight = 2 × image (moves with the image, distinct from it)."""
    rng = np.random.default_rng(seed)
    image = (1 + np.arange(int(np.prod(shape)), dtype=np.float32)).reshape(1, *shape)
    label = np.zeros((1, *shape), np.uint8)
    for cls in (1, 2):
        for _ in range(3):
            corner = [int(rng.integers(0, s - 2)) for s in shape]
            label[(0, *(slice(c, c + 2) for c in corner))] = cls
    return {"image": image, "label": label, "weight": 2 * image}


def test_write_case_round_trips_as_memory_maps_with_locations_inside_their_class(tmp_path: Path):
    arrays = coded_case((20, 18, 9))
    properties = write_case(tmp_path, "c0", arrays, seed=1)
    assert properties["shape"] == [20, 18, 9] and set(properties["classes"]) == {"1", "2"}
    opened = open_case(tmp_path, "c0")
    for key, array in arrays.items():
        assert isinstance(opened[key], np.memmap) and opened[key].dtype == array.dtype
        np.testing.assert_array_equal(opened[key], array)
    locations = case_locations(tmp_path, "c0")
    assert set(locations) == {1, 2}
    for cls, coords in locations.items():
        assert coords.shape[1] == 3 and len(coords) == properties["classes"][str(cls)]  # small: all voxels
        assert (arrays["label"][(0, *coords.T)] == cls).all()
    big = np.zeros((1, 200, 200), np.uint8)
    big[0, 10:190, 10:190] = 1  # 32400 voxels: a seeded sample of 10000, all inside the class
    sample = case_store.class_locations(big, seed=3)[1]
    assert len(sample) == 10_000 and (big[(0, *sample.T)] == 1).all()
    np.testing.assert_array_equal(sample, case_store.class_locations(big, seed=3)[1])


def test_an_interrupted_write_leaves_no_complete_looking_case(tmp_path: Path, monkeypatch):
    write_case(tmp_path, "c0", coded_case((12, 12)))
    newer = {key: value + 1 for key, value in coded_case((12, 12), seed=5).items()}

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(case_store.np, "savez", crash)  # dies after the arrays, before the marker
    with pytest.raises(OSError, match="disk gone"):
        write_case(tmp_path, "c0", newer)
    folder = case_store.case_dir(tmp_path, "c0")
    with pytest.raises(IncompleteCase):
        read_properties(folder)  # new arrays, old locations: must not pass as complete
    with pytest.raises(IncompleteCase):
        load_cases(tmp_path, ["c0"])
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left behind
    monkeypatch.undo()
    write_case(tmp_path, "c0", newer)  # a rerun overwrites cleanly
    np.testing.assert_array_equal(open_case(tmp_path, "c0")["image"], newer["image"])


def _dataset(tmp_path: Path, plan: Plan, shapes: list[tuple[int, ...]], fraction: float | None = None):
    ids = [f"c{i}" for i in range(len(shapes))]
    for case_id, shape in zip(ids, shapes, strict=True):
        write_case(tmp_path, case_id, coded_case(shape, seed=len(case_id) + shape[0]))
    dataset = patch_dataset(case_records(tmp_path, ids), plan, False, foreground_fraction=fraction)
    return dataset.set_random_state(0), ids


def test_forced_foreground_patches_have_the_plans_size_and_hold_foreground(tmp_path: Path):
    plan = make_plan([16, 16, 8])
    forced, _ = _dataset(tmp_path, plan, [(64, 60, 30), (50, 70, 24)], fraction=1.0)
    random, _ = _dataset(tmp_path, plan, [(64, 60, 30), (50, 70, 24)], fraction=0.0)
    hits = {"forced": [], "random": []}
    for name, dataset in (("forced", forced), ("random", random)):
        for draw in range(40):
            sample = dataset[draw % 2]
            assert {k: tuple(v.shape) for k, v in sample.items()} == {k: (1, 16, 16, 8) for k in sample}
            hits[name].append(bool((sample["label"] > 0).any()))
    assert all(hits["forced"])  # every forced patch is centred on a labelled voxel
    assert np.mean(hits["random"]) < 0.5  # 6 tiny objects: a random box rarely meets one


@pytest.mark.parametrize(("patch", "output", "shape"), [
    ([12, 10], None, (40, 33)),       # plain crop inside the image
    ([12, 10], None, (7, 33)),        # an axis shorter than the patch: zero padding
    ([20, 16], [12, 8], (30, 9)),     # valid padding: mirrored by the margin and up to the crop
])
def test_a_patch_is_the_in_memory_pipelines_window_for_image_label_and_weight(tmp_path, patch, output, shape):
    """Every patch equals one window of the case as the in-memory pipeline pads it (mirror, then zeros),
    at the same place for image, label and weight; a forced-foreground window is centred on foreground."""
    plan = make_plan(patch, output)
    dataset, _ = _dataset(tmp_path, plan, [shape], fraction=1.0)
    case = open_case(tmp_path, "c0", mmap=False)
    padded = dict(case)
    for step in [*valid_padding_steps(plan, ["image", "label", "weight"], patch),
                 SpatialPadd(["image", "label", "weight"], spatial_size=patch)]:
        padded = {k: np.asarray(v) for k, v in step(padded).items()}
    windows = np.lib.stride_tricks.sliding_window_view(padded["image"][0], patch)
    for draw in range(12):
        sample = {k: v.numpy()[0] for k, v in dataset[0].items()}
        where = np.argwhere((windows == sample["image"]).all(axis=(-2, -1)))
        assert len(where), f"draw {draw}: the patch is no window of the padded case"
        box = tuple(slice(s, s + p) for s, p in zip(where[0], patch, strict=True))
        np.testing.assert_array_equal(sample["label"], padded["label"][0][box])
        np.testing.assert_array_equal(sample["weight"], padded["weight"][0][box])
        assert (sample["weight"] == 2 * sample["image"]).all()
        # centred on a foreground voxel of the case itself (not a mirrored copy), the box moved inside the
        # padded case as MONAI's crop centres are
        offset = np.argwhere(padded["image"][0] == 1)
        assert len(offset) == 1
        total = np.array(padded["label"][0].shape)
        starts = np.clip(np.argwhere(case["label"][0] > 0) + offset[0] - np.array(patch) // 2, 0, total - patch)
        assert (starts == where[0]).all(axis=1).any(), f"draw {draw}: not centred on foreground"


def test_the_dataset_holds_case_paths_not_arrays(tmp_path: Path):
    plan = make_plan([16, 16, 8])
    small, _ = _dataset(tmp_path / "small", plan, [(20, 20, 10)] * 3)
    large, _ = _dataset(tmp_path / "large", plan, [(120, 120, 60)] * 3)  # 216× the voxels
    sizes = [len(pickle.dumps(d)) for d in (small, large)]  # what a worker process receives
    assert abs(sizes[0] - sizes[1]) < 64 and max(sizes) < 200_000, sizes
    assert not any(isinstance(v, np.ndarray) and v.size > 100 for v in vars(large).values())


def test_validation_case_by_case_scores_as_the_whole_set_in_memory(tmp_path: Path):
    plan = make_plan([16, 16], weight_maps=False)
    ids = [f"v{i}" for i in range(3)]
    rng = np.random.default_rng(0)
    for case_id in ids:
        image = rng.normal(size=(1, 40, 36)).astype(np.float32)
        write_case(tmp_path, case_id, {"image": image, "label": (image > 0.5).astype(np.uint8)
                                       + (image > 1.2).astype(np.uint8)})
    torch.manual_seed(0)
    model = build_network("unet", 2, 1, 3, features=(4, 8), norm="instance").eval()
    records = case_records(tmp_path, ids)
    opened = iter_cases(records)
    first = next(opened)
    assert set(first) == {"image", "label", "case_id"} and "image" not in records[0]  # opened on demand
    by_case = validate(model, iter_cases(records), plan, torch.device("cpu"))
    in_memory = validate(model, load_cases(tmp_path, ids), plan, torch.device("cpu"))
    assert by_case == in_memory and "val_dice_2" in by_case


def test_readers_load_only_the_arrays_they_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Training and validation read whole cases into memory: a case's other arrays stay on disk."""
    from tasks.training import data_loader

    read: list[set[str]] = []

    def spy(*args, **kwargs):
        opened = case_store.open_case_dir(*args, **kwargs)
        read.append(set(opened))
        return opened

    monkeypatch.setattr(data_loader, "open_case_dir", spy)

    arrays = {**coded_case((12, 10)), "instances": np.zeros((1, 12, 10), np.int32),
              "target": np.zeros((1, 12, 10), np.uint8)}
    write_case(tmp_path, "c0", arrays)
    assert set(open_case(tmp_path, "c0", keys=["label", "absent"])) == {"label"}  # not stored: simply absent
    assert set(open_case(tmp_path, "c0", mmap=False)) == set(arrays)
    record = case_records(tmp_path, ["c0"])[0]
    assert set(next(iter_cases([record]))) == {"image", "label", "instances", "case_id"}
    loaded = data_loader.LoadPreprocessedd(["image", "target"])({**record, "image": arrays["image"]})
    assert set(loaded) == {"case_id", "case_dir", "image", "target"}
    assert read == [{"image", "label", "instances"}, {"target"}]  # no weight, no target for validation


def test_paper_elastic_follows_the_plans_target_spacing() -> None:
    """Cases are on the target spacing: the paper's elastic bends a thick-slice axis by fewer of its voxels."""
    from tasks.config import AugmentConfig
    from tasks.training.data_loader import elastic_transform

    plan = Plan.model_validate({
        "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "organ": 1},
        "normalization": {"channels": [{"scheme": "zscore"}]}, "patch_size": [32, 32, 8],
        "target_spacing": [0.7, 0.7, 3.5], "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": [4, 8]}})
    elastic = elastic_transform(plan, AugmentConfig(elastic="paper", elastic_prob=1.0), ["image", "label"])
    assert elastic.spacing == (0.7, 0.7, 3.5)
    assert np.allclose(elastic._axis_scale(3), [1.0, 1.0, 0.2])
