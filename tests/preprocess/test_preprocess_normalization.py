"""nnU-Net intensity normalisation per channel: CT clip + foreground z-score, other modalities per image."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.common.normalization import normalize
from tasks.common.plan import Plan
from tasks.preprocess.intensity_stats import foreground_intensities, intensity_statistics, normalization_from
from tasks.preprocess.planning import Split, training_cases
from tests.preprocess.conftest import preprocess


def ct_case() -> tuple[np.ndarray, np.ndarray]:
    """10×10×2 volume: 200 voxels, the 40 under the label hold 0..39 HU, the rest −1000 (air)."""
    label = np.zeros((10, 10, 2), np.uint8)
    label[:4, :5, :] = 1
    image = np.full(label.shape, -1000.0, np.float32)
    image[label > 0] = np.arange(40, dtype=np.float32)
    return image, label


def test_ct_clips_to_foreground_percentiles_then_zscores_with_foreground_stats():
    image, label = ct_case()
    stats = intensity_statistics([foreground_intensities(image, label)])
    assert len(stats) == 1 and stats[0]["n"] == 40
    assert stats[0]["fg_mean"] == pytest.approx(19.5)
    assert stats[0]["fg_std"] == pytest.approx(np.sqrt((40**2 - 1) / 12))  # population std of 0..39
    # numpy's linear percentile of 0..39: 0.5 % → 0.195, 99.5 % → 38.805
    assert stats[0]["fg_p00_5"] == pytest.approx(0.195) and stats[0]["fg_p99_5"] == pytest.approx(38.805)
    norm = normalization_from(stats, "auto", "CT")
    assert norm.channels[0].scheme == "ct"
    out = normalize(image, norm)
    std = np.sqrt((40**2 - 1) / 12)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out[5, 5, 0] == pytest.approx((0.195 - 19.5) / std)  # air clipped to the low percentile
    assert out[0, 1, 0] == pytest.approx((2.0 - 19.5) / std)  # voxel value 2 (z fastest) inside the range
    assert out[label > 0].max() == pytest.approx((38.805 - 19.5) / std)  # 39 clipped to the high one


def test_statistics_and_schemes_are_per_channel():
    image, label = ct_case()
    rng = np.random.default_rng(0)
    mr = rng.normal(300.0, 40.0, size=image.shape).astype(np.float32)
    both = np.stack([image, mr], axis=-1)  # X×Y×Z×C, as ingest stores multi-channel images
    stats = intensity_statistics([foreground_intensities(both, label)])
    assert len(stats) == 2 and stats[0]["fg_mean"] == pytest.approx(19.5)
    assert stats[1]["fg_mean"] == pytest.approx(float(mr[label > 0].mean()), rel=1e-6)
    norm = normalization_from(stats, "auto", ["CT", "MR"])
    assert [c.scheme for c in norm.channels] == ["ct", "zscore"]
    out = normalize(both, norm)
    np.testing.assert_allclose(out[..., 0], normalize(image, normalization_from(stats[:1], "ct", "")), atol=1e-6)
    assert out[..., 1].mean() == pytest.approx(0.0, abs=1e-5) and out[..., 1].std() == pytest.approx(1.0, abs=1e-4)
    # nnU-Net's channel_names form of the modality works too
    assert normalization_from(stats, "auto", {"0": "CT", "1": "T2"}) == norm


def test_zscore_gives_each_channel_mean_0_std_1():
    rng = np.random.default_rng(1)
    scales = np.array([1.0, 50.0, 1e4])
    image = (rng.normal(size=(12, 9, 5, 3)) * scales + scales * 3).astype(np.float32)
    label = np.zeros((12, 9, 5), np.uint8)
    stats = intensity_statistics([foreground_intensities(image, label)])  # no foreground: fine for zscore
    assert [s["n"] for s in stats] == [0, 0, 0]
    out = normalize(image, normalization_from(stats, "auto", "MR"))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(-1, 3).std(axis=0), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="CT normalisation needs foreground"):
        normalization_from(stats, "ct", "CT")


def test_foreground_sample_is_capped_and_reproducible():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(30, 30, 4)).astype(np.float32)
    label = np.ones((30, 30, 4), np.uint8)
    a = foreground_intensities(image, label, max_samples=500, seed=7)
    assert a.shape == (500, 1)
    np.testing.assert_array_equal(a, foreground_intensities(image, label, max_samples=500, seed=7))


def test_older_plans_still_load_and_normalise():
    """plan.json of older models: a single-scheme normalisation and network options written flat."""
    image, _ = ct_case()
    legacy = {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "organ": 1},
              "normalization": {"scheme": "ct", "clip": [0.0, 10.0], "mean": 5.0, "std": 2.0},
              "patch_size": [8, 8, 8], "split": {"train": ["a"], "val": [], "test": []}, "weight_maps": False,
              "network": {"name": "unet", "features": [4, 8], "norm": "batch", "cgm": True, "cgm_threshold": 0.3}}
    plan = Plan.model_validate(legacy)
    np.testing.assert_allclose(normalize(image, plan.normalization), (np.clip(image, 0, 10) - 5) / 2)
    assert plan.network.options == {"cgm": True, "cgm_gate_threshold": 0.3}
    assert Plan.model_validate(plan.to_json()) == plan  # the JSON form reads back to the same plan


def test_statistics_come_from_training_cases_only(tiny_project):
    root, params = tiny_project(preprocess={"normalization": "ct"})
    plan, _ = preprocess(root, params)
    train = plan.split.train
    assert plan.intensity_statistics.cases == train and set(train).isdisjoint(plan.split.test)
    manifest = {"cases": [{"case_id": c} for c in ["a", "b", "c"]]}
    assert training_cases(manifest, Split(train=("a", "c"), val=("b",), test=())) == [{"case_id": "a"},
                                                                                        {"case_id": "c"}]
    channel = plan.normalization.channels[0]
    assert channel.scheme == "ct" and channel.clip[0] < channel.clip[1]
