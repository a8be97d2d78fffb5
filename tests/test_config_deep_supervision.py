"""The params schema keeps deep supervision consistent: model heads, the loss term, UNet++ inference modes.

Options that need a loss term must not go untrained in silence: ``model.options.deep_supervision: true``
gets the term by default, and every contradiction is refused with a message naming both keys.
"""

from __future__ import annotations

import pytest

from tasks.config import ConfigError, Params, validate_params
from tasks.evaluation.compare import variant_params

DS_UNETPP = {"name": "unetpp", "features": [4, 8, 16, 32], "options": {"deep_supervision": True}}


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        ({"model": DS_UNETPP, "train": {"loss_options": {"deep_supervision": None}}},
         ["model.options.deep_supervision", "train.loss_options.deep_supervision"]),
        ({"model": {"name": "unet3p", "options": {"deep_supervision": True}},
          "train": {"loss_options": {"deep_supervision": False}}},
         ["model.options.deep_supervision", "train.loss_options.deep_supervision"]),
        ({"train": {"loss_options": {"deep_supervision": "equal"}}},
         ["train.loss_options.deep_supervision", "model.options.deep_supervision"]),
        ({"model": DS_UNETPP, "train": {"loss_options": {"deep_supervision": "halving"}}},
         ["train.loss_options.deep_supervision", "model.name"]),
        ({"model": {"name": "unet"}, "infer": {"prune_level": 1}}, ["infer.prune_level", "model.name"]),
        ({"model": {"name": "unetpp"}, "infer": {"prune_level": 1}},
         ["infer.prune_level", "model.options.deep_supervision"]),
        ({"model": {"name": "unetpp"}, "infer": {"unetpp_heads": "mean"}},
         ["infer.unetpp_heads", "model.options.deep_supervision"]),
        ({"model": {"name": "res_unet", "options": {"deep_supervision": True}}, "infer": {"unetpp_heads": "mean"}},
         ["infer.unetpp_heads", "model.name"]),
        ({"model": DS_UNETPP, "infer": {"prune_level": 4}}, ["infer.prune_level", "model.features"]),
        ({"model": DS_UNETPP, "infer": {"prune_level": 1, "unetpp_heads": "mean"}},
         ["infer.prune_level", "infer.unetpp_heads", "exclude each other"]),
    ],
)
def test_contradictions_are_refused_naming_both_keys(raw: dict, keys: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        validate_params(raw)
    for key in keys:
        assert key in str(error.value), (key, str(error.value))


def test_pruning_a_network_built_without_heads_stays_refused() -> None:
    """``model.options.prune_level`` without deep supervision was refused before (by the network's own check)."""
    with pytest.raises(ConfigError) as error:
        validate_params({"model": {"name": "unetpp", "options": {"prune_level": 1}}})
    assert "model.options.prune_level" in str(error.value) and "deep_supervision" in str(error.value)


def test_deep_supervision_gets_its_loss_term_by_default_and_it_is_recorded() -> None:
    params = validate_params({"model": DS_UNETPP, "infer": {"prune_level": 2}})
    assert params.train.loss_options["deep_supervision"] == "equal"
    assert params.flat()["train.loss_options.deep_supervision"] == "equal"  # what MLflow logs
    assert Params.model_validate(params.model_dump()) == params  # the logged copy validates as it is
    assert validate_params({}).train.loss_options == {}  # no heads, no term
    assert validate_params({"model": DS_UNETPP, "infer": {"unetpp_heads": "mean"}}).infer.unetpp_heads == "mean"


def test_another_models_inference_modes_are_judged_by_its_own_plan() -> None:
    """``infer.model_uri`` names a model the ``model`` section does not describe: inference checks its plan."""
    params = validate_params({"infer": {"model_uri": "models:/other@champion", "prune_level": 1}})
    assert params.infer.prune_level == 1
    with pytest.raises(ConfigError, match="exclude each other"):
        validate_params({"infer": {"model_uri": "models:/other@champion", "prune_level": 1, "unetpp_heads": "mean"}})


def test_compare_variants_of_a_deeply_supervised_base_still_validate() -> None:
    base = validate_params({"model": DS_UNETPP})
    for variant in ("unet", "unetpp", "unet3p"):
        candidate = variant_params(base, variant)
        assert "deep_supervision" not in candidate.train.loss_options
        Params.model_validate(candidate.model_dump())
    assert base.train.loss_options["deep_supervision"] == "equal"  # the base is not changed
