"""Each network's constraints are checked by the params schema, before any work starts.

``--set model.name=eff_unet`` with the default four widths used to pass validation and fail with a
traceback after ingest and preprocessing (eff_unet needs five). The schema now asks the network
(``check_network_config``) and names the key to change; the constructor refuses the same settings.
"""

from __future__ import annotations

from typing import Any

import pytest
from networks_cases import NAMES

from monai_ext.networks import NetworkConfigError, build_network, check_network_config
from tasks.config import ConfigError, validate_params

BAD: list[tuple[dict[str, Any], str]] = [
    ({"name": "eff_unet"}, "model.features does not suit network 'eff_unet': features must be exactly 5"),
    ({"name": "eff_unet", "features": [8, 16, 32, 64, 128, 256]}, "exactly 5"),
    ({"name": "eff_unet", "features": [8, 16, 32, 64, 128], "options": {"backbone": "efficientnet-b9"}},
     "model.options.backbone does not suit network 'eff_unet': unknown backbone"),
    ({"name": "unet", "features": [16]}, "model.features"),
    ({"name": "unetpp", "options": {"prune_level": 1}}, "model.options.prune_level does not suit network 'unetpp'"),
    ({"name": "unetpp", "options": {"prune_level": 4, "deep_supervision": True}}, "prune_level must be in 1..3"),
    ({"name": "unet", "norm": "batchnorm"}, "model.norm does not suit network 'unet'"),
    ({"name": "unet", "options": {"dropout_position": "middle"}}, "model.options.dropout_position"),
    ({"name": "unet", "options": {"dropout": 1.5}}, "model.options.dropout does not suit"),
    ({"name": "unet", "options": {"padding": "full"}}, "model.options.padding"),
    ({"name": "mobile_unet", "options": {"upsample": "bicubic"}}, "model.options.upsample"),
    ({"name": "unet3p", "options": {"aux_resolution": "half"}}, "model.options.aux_resolution"),
    ({"name": "unet", "options": {"cgm_gate": True}}, "model.options.cgm_gate"),
    ({"name": "unet", "options": {"features": [8, 16]}}, "set model.features directly"),
]


@pytest.mark.parametrize(("model", "named"), BAD, ids=[f"{m['name']}-{n[:24]}" for m, n in BAD])
def test_schema_refuses_what_the_network_cannot_build(model: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_params({"model": model})
    assert named in str(error.value)
    if "directly" in named:
        return
    options = {**model.get("options", {}), "norm": model.get("norm", "batch")}
    with pytest.raises(ValueError):  # what would have failed after ingest and preprocessing
        build_network(model["name"], 2, 1, 2, features=model.get("features", (16, 32, 64, 128)), **options)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", None])
@pytest.mark.parametrize("name", NAMES)
def test_schema_accepts_every_norm_for_every_network(name: str, norm: str | None) -> None:
    features = [16, 32, 64, 128, 256] if name == "eff_unet" else [16, 32, 64, 128]
    params = validate_params({"model": {"name": name, "features": features, "norm": norm}})
    assert params.model.norm == norm


def test_check_names_the_option() -> None:
    with pytest.raises(NetworkConfigError) as error:
        check_network_config("eff_unet", (16, 32, 64, 128))
    assert error.value.option == "features"
    check_network_config("eff_unet", (16, 32, 64, 128, 256), backbone="efficientnet-b1", dropout=0.2)
    check_network_config("unetpp", (8, 16, 32), prune_level=1, deep_supervision=True)
