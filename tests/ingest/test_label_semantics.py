"""Issue #13: the pipeline never changes what a label means.

``dataset.json`` names the classes and channels of an nnU-Net/MSD inbox and the default ``params.yaml``
follows it (``label_names: auto``); a label value nobody declared refuses its case; a missing, cut-off or
incomplete ``dataset.json`` refuses the whole dataset, writing nothing; instance maps are an explicit input
(``instancesTr/`` or ``data.instance_labels``), and the plan says what the weight maps separate.
Real files written by nibabel throughout; the three-class case runs on to a trained model and its MLflow run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tasks.config import DataConfig, Params, load_params
from tasks.ingest.batch import ingest_dataset
from tests.conftest import REPO
from tests.ingest.makers import save_nifti, write_dataset_json

THREE = {"background": 0, "lesion": 1, "organ": 2}
CELLS = {"background": 0, "cell": 1}
TINY = ["model.features=[4, 8]", "train.epochs=1", "train.batch_size=2", "train.overlay_every=0",
        "train.num_threads=1", "train.augment.enabled=false", "tracking.system_metrics=false"]


def three_classes(rng: np.random.Generator) -> np.ndarray:
    label = np.zeros((20, 20, 1), np.uint8)
    row, col = rng.integers(1, 6, 2)
    label[row:row + 5, col:col + 5] = 1
    label[11:17, 10:18] = 2
    return label


def write_cases(raw: Path, n: int, make_label: Callable[[np.random.Generator], np.ndarray]) -> dict[str, np.ndarray]:
    """``n`` 2D cases (``imagesTr/<case>_0000``, ``labelsTr/<case>``); the labels as written."""
    rng = np.random.default_rng(7)
    labels = {}
    for index in range(n):
        case, label = f"case_{index:02d}", make_label(rng)
        image = (rng.normal(size=label.shape) + 2.0 * label).astype(np.float32)
        save_nifti(image, raw / "imagesTr" / f"{case}_0000.nii.gz")
        save_nifti(label, raw / "labelsTr" / f"{case}.nii.gz")
        labels[case] = label
    return labels


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def preprocess(root: Path, params: Params):  # noqa: ANN201 (the Plan; imported late like the flow does)
    """What ``flows/preprocess.py`` does, as the plain functions it maps; returns the plan."""
    from tasks.preprocess.in_process import preprocess_dataset

    return preprocess_dataset(root, params)[0]


def test_three_classes_survive_default_params_into_the_plan_the_network_and_mlflow(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tasks.tracking.model_package import load_model
    from tasks.training.trainer import train_model

    written = write_cases(tmp_path / "data", 6, three_classes)
    write_dataset_json(tmp_path / "data", THREE, channels=("MR",), numTraining=6)
    params = load_params(REPO / "params.yaml", TINY)  # the project's own data section, untouched
    manifest, results = ingest_dataset(tmp_path / "data", tmp_path / params.data.dataset_dir, params.data)
    assert [r.reason for r in results if not r.accepted] == []
    assert manifest["labels"] == THREE and manifest["channel_names"] == ["MR"]
    for case in manifest["cases"]:
        label = voxels(tmp_path / params.data.dataset_dir / case["files"]["label"])
        assert np.array_equal(label, written[case["case_id"]]) and set(np.unique(label)) == {0, 1, 2}
        assert "instances" not in case["files"]  # none given, none invented

    plan = preprocess(tmp_path, params)
    assert plan.num_classes == 3 and plan.label_names == THREE
    assert plan.weight_map_objects == "connected_components"  # no instance maps: the plan says so

    result = train_model(params, tmp_path, register=False)
    model, _ = load_model(result.checkpoint)
    assert model(torch.zeros(1, 1, 20, 20)).shape[1] == 3  # one output channel per class
    logged = MlflowClient().get_run(result.run_id).data.params
    assert logged["plan.num_classes"] == "3" and json.loads(logged["plan.label_names"]) == THREE


def test_an_undeclared_label_value_refuses_its_case_by_value_and_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    labels = write_cases(raw, 3, lambda rng: three_classes(rng) % 2)
    odd = labels["case_01"].copy()
    odd[0, 0, 0] = 7
    save_nifti(odd, raw / "labelsTr" / "case_01.nii.gz")
    write_dataset_json(raw, {"background": 0, "lesion": 1})
    manifest, results = ingest_dataset(raw, tmp_path / "out", DataConfig())
    assert sorted(c["case_id"] for c in manifest["cases"]) == ["case_00", "case_02"]
    (bad,) = [r for r in results if not r.accepted]
    assert bad.code == "label_values" and bad.reason.startswith("labelsTr/case_01.nii.gz: label values [7] outside")


def refusal(raw: Path, out: Path, data: DataConfig | None = None) -> Exception:
    """The error that refused the whole dataset, after checking nothing was written for it."""
    with pytest.raises(Exception) as caught:
        ingest_dataset(raw, out, data or DataConfig())
    assert type(caught.value).__name__ == "DatasetRejected", caught.value
    assert not out.exists()
    return caught.value


def cut_off(raw: Path) -> None:
    text = write_dataset_json(raw, numTraining=3).read_text()
    (raw / "dataset.json").write_text(text[: len(text) // 2])


@pytest.mark.parametrize(("spoil", "reason"), [
    (cut_off, "dataset.json: unreadable, not valid JSON - cut off or damaged?"),
    (lambda raw: None, "dataset.json: missing; an nnU-Net/MSD inbox needs one naming its label values"),
    (lambda raw: write_dataset_json(raw, labels={}), 'dataset.json: no "labels" naming the label values'),
    (lambda raw: write_dataset_json(raw, channels=()), 'dataset.json: no "channel_names" (nnU-Net v2) or "modality"'),
    (lambda raw: write_dataset_json(raw, labels={"background": 0, "edema": 1, "whole tumor": [1, 2]},
                                    regions_class_order=[1, 2]),
     "region-based training is not supported"),
    (lambda raw: write_dataset_json(raw, numTraining=5),
     "dataset.json: numTraining is 5, but imagesTr/ holds 3 case(s)"),
    (lambda raw: write_dataset_json(raw, file_ending=".mha"), "file_ending '.mha': unetflow reads NIfTI only"),
])
def test_a_missing_or_broken_dataset_json_refuses_the_whole_dataset(tmp_path: Path, spoil, reason: str) -> None:
    raw = tmp_path / "raw"
    write_cases(raw, 3, lambda rng: three_classes(rng) % 2)
    spoil(raw)
    error = refusal(raw, tmp_path / "out")
    assert str(error).startswith("dataset.json: ") and reason in str(error) and error.code == "dataset_json"


def test_region_labels_say_how_to_convert(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_cases(raw, 1, lambda rng: three_classes(rng) % 2)
    write_dataset_json(raw, labels={"background": 0, "whole tumor": [1, 2, 3], "enhancing": 3})
    assert "Convert: name each value found in labelsTr/ once" in str(refusal(raw, tmp_path / "out"))


@pytest.mark.parametrize("source", ["pairs", "dicom"])
def test_label_names_auto_without_a_dataset_json_is_refused_naming_the_key(tmp_path: Path, source: str) -> None:
    raw = tmp_path / "raw"
    save_nifti(np.zeros((8, 8, 4), np.float32), raw / "images" / "a.nii.gz")
    save_nifti(np.zeros((8, 8, 4), np.uint8), raw / "labels" / "a.nii.gz")
    error = refusal(raw, tmp_path / "out", DataConfig(source=source))
    assert str(error).startswith(f"data.label_names is auto, but a {source} inbox has no dataset.json")
    assert "set data.label_names in params.yaml, e.g. {background: 0, liver: 1}" in str(error)


def test_explicit_label_names_must_agree_with_dataset_json(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_cases(raw, 2, three_classes)
    write_dataset_json(raw, THREE)
    error = refusal(raw, tmp_path / "out", DataConfig(label_names={"background": 0, "cell": 1}))
    assert "{'background': 0, 'cell': 1}" in str(error) and str(THREE) in str(error) and error.code == "params"


def test_msd_form_names_the_classes_and_channels(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    written = write_cases(raw, 2, three_classes)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion", "2": "organ"},
                                                  "modality": {"0": "CT"}, "numTraining": 2}))
    manifest, results = ingest_dataset(raw, tmp_path / "out", DataConfig())
    assert all(r.accepted for r in results) and manifest["labels"] == THREE
    assert manifest["channel_names"] == ["CT"] and manifest["modality"] == "CT"
    assert all(np.array_equal(voxels(tmp_path / "out" / c["files"]["label"]), written[c["case_id"]])
               for c in manifest["cases"])


def cells(rng: np.random.Generator) -> np.ndarray:
    """Instance ids of three touching squares (a binary-instance label)."""
    label = np.zeros((20, 20, 1), np.uint16)
    label[2:8, 2:8], label[2:8, 8:14], label[10:16, 4:12] = 1, 2, 3
    return label


def test_instance_labels_true_reads_labels_as_instances_of_the_one_declared_class(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    written = write_cases(raw, 2, cells)
    write_dataset_json(raw, CELLS)
    manifest, _ = ingest_dataset(raw, tmp_path / "out", DataConfig(instance_labels=True))
    assert manifest["labels"] == CELLS and manifest["num_cases"] == 2
    for case in manifest["cases"]:
        assert np.array_equal(voxels(tmp_path / "out" / case["files"]["label"]), written[case["case_id"]] > 0)
        assert np.array_equal(voxels(tmp_path / "out" / case["files"]["instances"]), written[case["case_id"]])
        assert case["n_objects"] == 3
    write_dataset_json(raw, THREE)  # two classes cannot be instance maps of one
    error = refusal(raw, tmp_path / "other", DataConfig(instance_labels=True))
    assert "data.instance_labels is true" in str(error) and "['lesion', 'organ']" in str(error)


def test_an_instances_folder_gives_the_instance_maps_and_the_plan_says_so(tmp_path: Path) -> None:
    raw, out = tmp_path / "data", tmp_path / "outputs" / "dataset"
    classes = write_cases(raw, 5, three_classes)
    instances = {}
    for case, label in classes.items():
        ids = label.astype(np.uint16)
        ids[label == 2] = 5  # the organ is object 5, the lesion object 1
        instances[case] = ids
        save_nifti(ids, raw / "instancesTr" / f"{case}.nii.gz")
    spilled = instances["case_03"].copy()
    spilled[0, 0, 0] = 9  # foreground where the label has none
    save_nifti(spilled, raw / "instancesTr" / "case_03.nii.gz")
    mixed = instances["case_04"].copy()
    mixed[classes["case_04"] > 0] = 1  # one instance across both classes
    save_nifti(mixed, raw / "instancesTr" / "case_04.nii.gz")
    write_dataset_json(raw, THREE, channels=("MR",))
    params = load_params(REPO / "params.yaml", [*TINY, "data.val_fraction=0.2", "data.test_fraction=0.2"])
    manifest, results = ingest_dataset(raw, out, params.data)
    reasons = {r.case_id: (r.code, r.reason) for r in results if not r.accepted}
    assert reasons["case_03"] == ("instances", "instancesTr/case_03.nii.gz: instance map disagrees with the "
                                               "label's foreground (1 voxel(s) are foreground in one and "
                                               "background in the other)")
    assert reasons["case_04"] == ("instances", "instancesTr/case_04.nii.gz: instance(s) [1] span more than one class")
    assert sorted(c["case_id"] for c in manifest["cases"]) == ["case_00", "case_01", "case_02"]
    for case in manifest["cases"]:
        assert np.array_equal(voxels(out / case["files"]["instances"]), instances[case["case_id"]])
        assert np.array_equal(voxels(out / case["files"]["label"]), classes[case["case_id"]])
    assert preprocess(tmp_path, params).weight_map_objects == "instances"
