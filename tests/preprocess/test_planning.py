"""Planning like nnU-Net (issue #15): topology from the target spacing, patch and batch from a memory budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_ext.networks import build_network
from tasks.common.plan import Plan
from tasks.config import validate_params
from tasks.preprocess.memory_budget import GIB, conv_output_units, estimated_cost
from tasks.preprocess.planning import make_plan, network_factory
from tasks.preprocess.topology import Topology, fit_topology, plan_topology
from tests.preprocess.test_fingerprint import manifest_of

STATS = [{"fg_mean": 0.0, "fg_std": 1.0, "fg_p00_5": -1.0, "fg_p99_5": 1.0, "n": 10}]


def mixed_anisotropic() -> dict:
    """Hospital MR as it comes: in-plane 0.6–0.8 mm on 320²–512², slices 4–6.5 mm, 24–60 of them."""
    spacings = [[0.6, 0.6, 4.0], [0.7, 0.7, 5.0], [0.8, 0.8, 6.5], [0.65, 0.65, 4.5], [0.75, 0.75, 5.0],
                [0.7, 0.7, 5.0]]
    shapes = [[512, 512, 60], [448, 448, 40], [320, 320, 24], [480, 480, 48], [384, 384, 30], [448, 448, 44]]
    return manifest_of(spacings, shapes)


def plan_for(manifest: dict, **train: object) -> Plan:
    params = validate_params({"train": train} if train else {})
    return make_plan(manifest, params.data, params.preprocess, params.model, params.train, STATS)


def test_anisotropic_dataset_gets_nnunet_spacing_strides_and_kernels() -> None:
    plan = plan_for(mixed_anisotropic())
    # nnU-Net's rule: median in-plane; z at its 10th percentile (spacing and voxel anisotropy both > 3×).
    assert plan.target_spacing == pytest.approx((0.7, 0.7, float(np.percentile([4.0, 5.0, 6.5, 4.5, 5.0, 5.0], 10))))
    strides, kernels = plan.network.strides, plan.network.kernel_sizes
    assert strides is not None and kernels is not None
    # 0.7 mm in-plane vs 4.25 mm z: z is neither pooled nor convolved until in-plane has caught up (2 poolings).
    assert strides[:2] == ((2, 2, 1), (2, 2, 1)) and strides[2] == (2, 2, 2)
    assert kernels[:2] == ((3, 3, 1), (3, 3, 1)) and kernels[2:] == ((3, 3, 3), (3, 3, 3))
    assert plan.to_json()["network"]["strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    # The patch covers a similar extent in mm on every axis (not 128 voxels everywhere) and fits the divisors.
    extent = [p * s for p, s in zip(plan.patch_size, plan.target_spacing, strict=True)]
    assert max(extent) / min(extent) < 2.0, extent
    assert all(p % d == 0 for p, d in zip(plan.patch_size, (8, 8, 2), strict=True))


def test_isotropic_dataset_keeps_the_default_topology() -> None:
    plan = plan_for(manifest_of([[1.0, 1.0, 1.0]] * 6, [[96, 112, 80]] * 6))
    assert plan.target_spacing == (1.0, 1.0, 1.0)
    assert plan.network.strides == ((2, 2, 2),) * 3 and plan.network.kernel_sizes == ((3, 3, 3),) * 4
    assert plan.patch_size == (96, 112, 80)  # the median shape fits 8 GB with this network


def test_axis_too_small_to_pool_keeps_its_voxels() -> None:
    """A 12-slice axis pools once at most (nnU-Net: ≥ 4 voxels after pooling, and ≥ 12 when alone)."""
    topology = plan_topology([1.0, 1.0, 1.0], [64, 64, 12], 4)
    assert [s[2] for s in topology.strides] == [2, 1, 1]
    assert topology.divisors == (8, 8, 2) and topology.poolings == (3, 3, 1)
    topology, patch = fit_topology([0.5, 0.5, 3.0], [100, 90, 20], 4)
    assert all(p % d == 0 for p, d in zip(patch, topology.divisors, strict=True))


def test_patch_and_batch_follow_the_budget() -> None:
    manifest = mixed_anisotropic()
    small, default, large = (plan_for(manifest, memory_budget_gb=gb) for gb in (2.0, 8.0, 32.0))
    volume = [math.prod(p.patch_size) for p in (small, default, large)]
    assert volume[0] < volume[1] <= volume[2]
    for plan, gb in ((small, 2.0), (default, 8.0), (large, 32.0)):
        assert plan.memory is not None and plan.memory["fits"] and plan.memory["gb_at_batch_size"] <= gb
        assert plan.memory["method"] == "estimated (activation sizes)"  # no GPU in CI: counted on the meta device
        assert plan.batch_size is not None and plan.batch_size >= 2


def test_batch_grows_with_room_but_covers_at_most_five_percent_of_the_data() -> None:
    many = manifest_of([[1.0, 1.0, 1.0]] * 400, [[64, 64, 64]] * 400)
    plan = plan_for(many, memory_budget_gb=8.0)
    assert plan.patch_size == (64, 64, 64)
    topology = Topology(plan.network.strides, plan.network.kernel_sizes)
    cost = estimated_cost(network_factory(plan.network, 3, 1, 2), topology, 1, plan.patch_size)
    fitting = math.floor((8.0 * GIB - cost.fixed) / cost.per_sample)
    assert plan.batch_size == min(fitting, round(400 * 64 ** 3 * 0.05 / 64 ** 3)) and plan.batch_size > 2
    few = plan_for(manifest_of([[1.0, 1.0, 1.0]] * 6, [[64, 64, 64]] * 6), memory_budget_gb=8.0)
    assert few.batch_size == 2  # 6 cases × 5% is under one patch: nnU-Net's floor of 2


def test_given_patch_and_batch_are_kept() -> None:
    plan = plan_for(mixed_anisotropic(), patch_size=[96, 96, 20], batch_size=3)
    assert plan.patch_size == (96, 96, 20) and plan.batch_size == 3
    assert plan.network.strides is not None and plan.network.strides[0] == (2, 2, 1)


def test_activation_count_is_the_networks_conv_outputs() -> None:
    """The CPU estimate counts every convolution's output on the meta device: check it by hand on a tiny U-Net."""
    topology = Topology(strides=((2, 2),), kernel_sizes=((3, 3), (3, 3)))

    def factory(t: Topology) -> torch.nn.Module:
        return build_network("unet", 2, 1, 2, features=(4, 8), strides=t.strides, kernel_sizes=t.kernel_sizes)

    with torch.device("meta"):
        counted = conv_output_units(factory(topology), 1, (16, 16))
    full, half = 16 * 16, 8 * 8
    # encoder: 2 convs × 4 ch at full res, 2 × 8 at half; decoder: up-conv 4 ch at full, 2 convs × 4 at full, head 2.
    expected = 2 * 4 * full + 2 * 8 * half + 4 * full + 2 * 4 * full + 2 * full
    assert counted == expected
    cost = estimated_cost(factory, topology, 1, (16, 16))
    assert cost.per_sample > 0 and cost.fixed == 16 * sum(p.numel() for p in factory(topology).parameters())


def test_every_variant_plans_and_builds_on_an_anisotropic_dataset() -> None:
    manifest = mixed_anisotropic()
    for name, features in (("unet", [8, 16, 32, 64]), ("unetpp", [8, 16, 32, 64]), ("unet3p", [8, 16, 32, 64]),
                           ("res_unet", [8, 16, 32, 64]), ("mobile_unet", [8, 16, 32, 64])):
        params = validate_params({"model": {"name": name, "features": features},
                                  "train": {"memory_budget_gb": 0.5}})
        plan = make_plan(manifest, params.data, params.preprocess, params.model, params.train, STATS)
        assert plan.network.strides[0] == (2, 2, 1), name
        factory = network_factory(plan.network, 3, 1, 2)
        assert plan.memory["fits"] and plan.memory["gb_at_batch_size"] <= 0.5, name  # shrunk until it fits
        topology = Topology(plan.network.strides, plan.network.kernel_sizes)
        assert estimated_cost(factory, topology, 1, plan.patch_size).at(2) <= 0.5 * GIB, name


def test_eff_unet_gets_a_topology_for_its_six_backbone_levels() -> None:
    """eff_unet's widths are its decoder's; its EfficientNet backbone downsamples five times."""
    params = validate_params({"model": {"name": "eff_unet", "features": [4, 4, 8, 8, 16]},
                              "train": {"memory_budget_gb": 0.5}})
    plan = make_plan(mixed_anisotropic(), params.data, params.preprocess, params.model, params.train, STATS)
    assert len(plan.network.strides) == 5 and len(plan.network.kernel_sizes) == 6
    assert plan.network.strides[0] == (2, 2, 1)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, Topology(plan.network.strides,
                                                                      plan.network.kernel_sizes).divisors,
                                          strict=True))


def with_instances(manifest: dict, every: bool = True) -> dict:
    cases = [{**case, "files": {**case["files"], "instances": f"instancesTr/{case['case_id']}.nii.gz"}}
             if every or k else case for k, case in enumerate(manifest["cases"])]
    return {**manifest, "cases": cases}


def test_instance_maps_plan_a_border_core_target_with_one_more_output_channel() -> None:
    from tasks.common.plan import build_model

    manifest = mixed_anisotropic()
    plain = plan_for(manifest)
    assert not plain.border_core and plain.output_channels == plain.num_classes == 2
    border = plan_for(with_instances(manifest))  # preprocess.border_core: auto
    assert border.border_core and border.border_thickness == 1 and border.output_channels == 3
    assert Plan.model_validate(border.to_json()) == border  # the plan file says it
    with torch.no_grad():
        output = build_model(border)(torch.zeros(1, 1, 32, 32, 8))
    assert output.shape[1] == 3  # background, the class, the rim
    # one case without an instance map: no rims to draw there, so auto stays off and true is refused
    assert not plan_for(with_instances(manifest, every=False)).border_core
    params = validate_params({"preprocess": {"border_core": True}})
    with pytest.raises(ValueError, match="border_core: true needs an instance map for every case"):
        make_plan(with_instances(manifest, every=False), params.data, params.preprocess, params.model,
                  params.train, STATS)
    off = validate_params({"preprocess": {"border_core": False, "border_thickness": 2}})
    assert not make_plan(with_instances(manifest), off.data, off.preprocess, off.model, off.train, STATS).border_core
