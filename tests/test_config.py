from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, Params, load_params, parse_override, validate_params

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_repository_params_yaml_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    # Every key of the schema is spelled out in the shipped file, so users see what they can set.
    assert set(on_disk) == set(Params.model_fields)
    for section, fields in on_disk.items():
        assert set(fields) == set(type(getattr(params, section)).model_fields), section


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"trian": {"epochs": 3}}, "unknown key 'trian'"),
        ({"train": {"epochs": -1}}, "'train.epochs'"),
        ({"model": {"name": "unet4"}}, "unknown network 'unet4'"),
        ({"model": {"options": {"depth_of_field": 3}}}, "depth_of_field"),
        ({"train": {"loss": "magic"}}, "unknown loss 'magic'"),
        ({"train": {"loss_options": {"gamma_ray": 2}}}, "gamma_ray"),
        ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "val_fraction"),
        ({"preprocess": {"weight_maps": False}}, "weight_maps"),
    ],
)
def test_bad_params_are_refused_naming_the_key(tmp_path, payload, named):
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, payload))
    assert named in str(error.value)


def test_overrides_pass_through_validation(tmp_path):
    path = write(tmp_path, {"train": {"epochs": 5}})
    assert load_params(path, ["train.epochs=3"]).train.epochs == 3
    assert load_params(path, ["model.features=[8, 16, 32]"]).model.features == (8, 16, 32)
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'"):
        load_params(path, ["train.epochz=3"])
    with pytest.raises(ConfigError, match="'train.epochs'"):
        load_params(path, ["train.epochs=-2"])


def test_override_syntax():
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_flat_params_are_dotted():
    flat = Params().flat()
    assert flat["train.epochs"] == Params().train.epochs
    assert "tracking.model_name" in flat


# --- CGM (issue #14.2): a classifier is never shipped untrained, nor a loss term for a CGM that is not there
def test_a_cgm_model_gets_a_cgm_loss_term_by_default():
    from monai_ext.losses import CGM_DEFAULT_WEIGHT, build_loss

    raw = {"model": {"options": {"cgm": True}}}
    params = validate_params(raw)
    assert params.train.loss_options["cgm_weight"] == CGM_DEFAULT_WEIGHT > 0
    assert params.flat()["train.loss_options.cgm_weight"] == CGM_DEFAULT_WEIGHT  # what MLflow logs is what trains
    assert build_loss(params.train.loss, **params.train.loss_options).cgm_weight == CGM_DEFAULT_WEIGHT
    assert raw == {"model": {"options": {"cgm": True}}}  # the caller's mapping is left alone
    assert validate_params(params.model_dump()) == params
    explicit = {"model": {"options": {"cgm": True}}, "train": {"loss_options": {"cgm_weight": 0.3}}}
    assert validate_params(explicit).train.loss_options["cgm_weight"] == 0.3
    assert "cgm_weight" not in Params().train.loss_options
    assert validate_params({"train": {"loss_options": {"cgm_weight": 0}}}).train.loss_options["cgm_weight"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"model": {"options": {"cgm": True}}, "train": {"loss_options": {"cgm_weight": 0}}},
        {"model": {"options": {"cgm": True}}, "train": {"loss_options": {"cgm_weight": 0.0}}},
        {"train": {"loss_options": {"cgm_weight": 0.5}}},
        {"model": {"options": {"cgm": False}}, "train": {"loss_options": {"cgm_weight": 1.0}}},
    ],
    ids=["cgm-weight-0", "cgm-weight-0.0", "weight-without-cgm", "weight-with-cgm-false"],
)
def test_a_cgm_weight_that_contradicts_the_model_is_refused_naming_both_keys(payload):
    with pytest.raises(ConfigError) as error:
        validate_params(payload)
    assert "model.options.cgm" in str(error.value) and "train.loss_options.cgm_weight" in str(error.value)


def test_loader_cache_none_from_older_params_files_reads_patches_from_the_files():
    from tasks.config import validate_params

    assert validate_params({"train": {"augment": {"loader_cache": "none"}}}).train.augment.loader_cache == "mmap"
    with pytest.raises(ConfigError, match="loader_cache"):
        validate_params({"train": {"augment": {"loader_cache": "disk"}}})
