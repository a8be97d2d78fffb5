"""Weight maps are computed once and cached by label hash + w0/σ: exactly those changes recompute them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from tasks.preprocess.case_store import open_case
from tests.preprocess.conftest import TINY, make_params, preprocess, write_case, write_manifest


def weights(root, plan) -> dict[str, np.ndarray]:
    ids = plan.split.train + plan.split.val + plan.split.test
    return {case_id: open_case(root / "outputs" / "preprocessed", case_id, mmap=False)["weight"] for case_id in ids}


def computed(results) -> set[str]:
    return {r["case_id"] for r in results if r["weight_map_cached"] is False}


def test_cache_recomputes_on_sigma_and_on_a_changed_label_only(tiny_project):
    root, params = tiny_project()
    plan, results = preprocess(root, params)
    all_ids = {r["case_id"] for r in results}
    assert len(all_ids) == TINY.n_train and computed(results) == all_ids  # first run: every map computed
    before = weights(root, plan)
    assert all(w.max() > 2.0 for w in before.values())  # touching cells: border term present

    _, results = preprocess(root, params)
    assert computed(results) == set()  # same inputs: every map from the cache

    # 1. sigma changed: a cache miss for every case, and the maps really change.
    sharper = make_params(preprocess={"sigma": 2.0})
    plan, results = preprocess(root, sharper)
    assert computed(results) == all_ids
    after = weights(root, plan)
    assert all(not np.allclose(before[i], after[i]) for i in all_ids)

    # 2. one label file changed (a cell removed), manifest rewritten: only that case is recomputed.
    victim = sorted(all_ids)[1]
    dataset = root / "outputs" / "dataset"
    instances = np.asarray(nib.load(str(dataset / "instancesTr" / f"{victim}.nii.gz")).dataobj)[..., 0].copy()
    image = np.asarray(nib.load(str(dataset / "imagesTr" / f"{victim}.nii.gz")).dataobj)[..., 0]
    instances[instances == instances.max()] = 0
    write_case(dataset, victim, image, instances)
    write_manifest(dataset)
    plan, results = preprocess(root, sharper)
    assert computed(results) == {victim}
    changed = weights(root, plan)
    assert not np.allclose(changed[victim], after[victim])
    assert all(np.array_equal(changed[i], after[i]) for i in all_ids - {victim})

    # 3. unrelated settings (training length, normalisation, model) hit the cache for every case.
    unrelated = make_params(preprocess={"sigma": 2.0, "normalization": "none"}, train={"epochs": 3},
                            model={"features": [4, 8, 16]})
    plan, results = preprocess(root, unrelated)
    assert computed(results) == set()
    assert [c.scheme for c in plan.normalization.channels] == ["none"]
    assert all(np.array_equal(w, changed[i]) for i, w in weights(root, plan).items())


def test_damaged_cache_entry_is_recomputed(tiny_project):
    root, params = tiny_project()
    _, results = preprocess(root, params)
    entries = sorted((root / params.preprocess.weight_map_cache).glob("*.npy"))
    assert len(entries) == len(results)
    entries[0].write_bytes(b"not an array")
    _, results = preprocess(root, params)
    assert len(computed(results)) == 1
    np.load(entries[0])  # rewritten, readable again


def test_with_instance_maps_w_c_balances_the_classes_and_binary_maps_stay_bit_identical(tmp_path):
    from monai_ext.transforms.weight_maps import class_weight_map, unet_weight_map
    from tasks.config import PreprocessConfig
    from tasks.preprocess.weight_map_cache import cached_weight_map

    instances = np.zeros((24, 24, 1), np.uint16)
    instances[2:8, 2:8], instances[2:8, 9:15], instances[12:20, 4:20] = 1, 2, 3
    classes = np.where(instances == 2, 2, instances > 0).astype(np.uint8)  # object 2 is of class 2
    config = PreprocessConfig()
    weights, _ = cached_weight_map(instances, "multi", [1.0, 1.0, 1.0], config, tmp_path, 2, classes=classes)
    # inside objects only w_c counts: one weight per class (an instance map alone would give both the same)
    expected = class_weight_map(classes[..., 0], "balanced", labels_are_instances=False)
    assert np.array_equal(weights[..., 0][instances[..., 0] > 0], expected[instances[..., 0] > 0])
    assert weights[4, 4, 0] != weights[4, 11, 0]
    binary, _ = cached_weight_map(instances, "binary", [1.0, 1.0, 1.0], config, tmp_path, 2,
                                  classes=(instances > 0).astype(np.uint8))
    assert np.array_equal(binary[..., 0], unet_weight_map(instances[..., 0], w0=config.w0, sigma=config.sigma,
                                                          spacing=(1.0, 1.0)))


def _touching_discs() -> np.ndarray:
    """Four discs (r = 12 px) 3 px apart in a 64² image (X×Y×1): cells as a microscope stores them."""
    yy, xx = np.indices((64, 64))
    instances = np.zeros((64, 64, 1), np.uint16)
    for k, (cy, cx) in enumerate([(18, 18), (18, 45), (45, 18), (45, 45)], start=1):
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2, 0] = k
    return instances


def test_sigma_is_in_pixels_by_default_whatever_the_header_spacing(tmp_path):
    """The paper's σ = 5 is in pixels: a 0.1 mm pixdim must not turn it into 50 px (+w0 on all background)."""
    from monai_ext.transforms.weight_maps import class_weight_map, unet_weight_map
    from tasks.config import PreprocessConfig
    from tasks.preprocess.weight_map_cache import cached_weight_map

    instances, config = _touching_discs(), PreprocessConfig()
    assert config.sigma_units == "voxels"
    fine, cached = cached_weight_map(instances, "discs", [0.1, 0.1, 1.0], config, tmp_path / "a", 2)
    unit, _ = cached_weight_map(instances, "discs", [1.0, 1.0, 1.0], config, tmp_path / "b", 2)
    assert not cached and np.array_equal(fine, unit)
    objects = instances[..., 0]
    border = fine[..., 0] - class_weight_map(objects, config.class_weights)
    far = ndimage.distance_transform_edt(objects == 0) > 2 * config.sigma  # > 10 px from every cell
    assert far.sum() > 50 and border[far].max() < 1e-3 * config.w0  # nothing far from the cells
    assert border[18, 31] > 0.5 * config.w0 and border[31, 18] > 0.5 * config.w0  # the gaps between them
    # in voxels the header spacing is no part of the key: another pixdim hits the same entry
    assert cached_weight_map(instances, "discs", [1.0, 1.0, 1.0], config, tmp_path / "a", 2)[1] is True

    physical = PreprocessConfig(sigma_units="mm")  # today's behaviour, for anisotropic 3D: σ = 5 mm = 50 px
    mm, cached = cached_weight_map(instances, "discs", [0.1, 0.1, 1.0], physical, tmp_path / "a", 2)
    assert not cached  # the units are part of the key
    assert np.array_equal(mm[..., 0], unet_weight_map(objects, w0=physical.w0, sigma=physical.sigma,
                                                      spacing=(0.1, 0.1)))
    border_mm = mm[..., 0] - class_weight_map(objects, physical.class_weights)
    assert border_mm[far].min() > 0.5 * physical.w0  # a near-constant +w0 over the whole background
