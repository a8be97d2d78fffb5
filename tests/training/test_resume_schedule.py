"""``--resume`` continues the same run with the same schedule: bit for bit with the same settings, a longer
schedule (not LR 0) with more epochs, a refusal naming what changed otherwise, and one registered version."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

import tasks.training.trainer as trainer_module
from tasks.config import Params, load_params
from tasks.tracking.model_package import load_checkpoint, load_model
from tasks.training.resume import ResumeRefused
from tasks.training.trainer import train_model


class Interrupted(RuntimeError):
    """Stands in for a kill: raised when an epoch starts, after the previous one was checkpointed."""


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch_call: int) -> None:
    original, calls = trainer_module.run_epoch, []

    def run_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) > epoch_call:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_epoch", run_epoch)


def _with(root: Path, **train: object) -> Params:
    """params.yaml with these ``train`` keys changed (what an operator edits before ``--resume``)."""
    settings = yaml.safe_load((root / "params.yaml").read_text())
    settings["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return load_params(root / "params.yaml")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_same_epochs_resume_is_bit_for_bit_an_uninterrupted_run(preprocessed_copy, tmp_path, monkeypatch):
    root, params = preprocessed_copy
    params = _with(root, epochs=3)
    uninterrupted = tmp_path / "uninterrupted"
    train_model(params, root, output_dir=uninterrupted, register=False)

    _interrupt_at(monkeypatch, 1)  # killed as epoch 2 starts: the checkpoint holds epoch 1
    with pytest.raises(Interrupted):
        train_model(params, root)
    monkeypatch.undo()
    checkpoint = load_checkpoint(root / "outputs" / "model" / "checkpoint.pt")
    assert checkpoint["epoch"] == 0 and checkpoint["epochs"] == 3 and "train.learning_rate" in checkpoint["params"]
    result = train_model(params, root, resume=True)
    assert result.epochs_run == 3
    expected, got = _weights(uninterrupted / "model.pt"), _weights(root / "outputs" / "model" / "model.pt")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [h["lr"] for h in result.history] == [h["lr"] for h in load_checkpoint(
        uninterrupted / "checkpoint.pt")["history"]]


def test_more_epochs_extend_the_schedule_tag_the_change_and_keep_one_version(preprocessed_copy):
    root, params = preprocessed_copy
    first = train_model(params, root)  # 2 epochs: the poly schedule ends at LR 0; version registered
    assert first.history[-1]["lr"] == 0.0
    longer = _with(root, epochs=4)
    resumed = train_model(longer, root, resume=True)
    assert resumed.run_id == first.run_id and resumed.epochs_run == 4
    base = params.train.learning_rate  # poly, power 0.9, planned for 4 epochs from the start
    assert [h["lr"] for h in resumed.history[2:]] == pytest.approx(
        [base * (1 - 3 / 4) ** 0.9, 0.0], rel=1e-6, abs=1e-12)
    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.data.tags["unetflow.resumed_epochs"] == "2→4"
    assert run.data.params["train.epochs"] == "2"  # MLflow params are immutable: the tag says what changed
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [0, 1, 2, 3]
    versions = client.search_model_versions(f"name = '{params.tracking.model_name}'")
    assert [(str(v.version), v.run_id) for v in versions] == [(first.registered_version, first.run_id)]
    assert resumed.registered_version == first.registered_version
    # the one version holds the resumed run's weights, not the 2-epoch ones
    registered, _ = load_model(f"models:/{params.tracking.model_name}/{first.registered_version}")
    final = _weights(root / "outputs" / "model" / "model.pt")
    assert all(torch.equal(final[k], v) for k, v in registered.state_dict().items())


@pytest.mark.parametrize(("key", "value"), [("learning_rate", 0.02), ("optimizer", "adamw")])
def test_a_changed_training_setting_is_refused_by_name(preprocessed_copy, key, value, monkeypatch):
    root, params = preprocessed_copy
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train_model(params, root)
    monkeypatch.undo()
    before = (root / "outputs" / "model" / "checkpoint.pt").read_bytes()
    with pytest.raises(ResumeRefused, match=rf"train\.{key} .*→ {value!r}"):
        train_model(_with(root, **{key: value}), root, resume=True)
    assert (root / "outputs" / "model" / "checkpoint.pt").read_bytes() == before
