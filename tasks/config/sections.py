"""The sections of ``params.yaml``: one pydantic model per section, each refusing unknown keys.

Each section checks what it can on its own (ranges, known networks and losses, a network's widths and
options); rules that tie sections together live on :class:`~tasks.config.params.Params`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monai_ext.losses import LOSS_REGISTRY, build_loss
from monai_ext.networks import NetworkConfigError, available_networks, check_network_config, network_options


class ConfigError(ValueError):
    """A ``params.yaml`` (or an override) that does not fit the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the raw inbox lies, what kind of source it is, how cases are validated and split.

    ``source`` picks the reader: an nnU-Net raw / MSD folder (``dataset.json``, ``imagesTr/``,
    ``labelsTr/``), NIfTI ``pairs`` matched by ``image_pattern``/``label_pattern`` (``{case}`` is
    the case ID; relative to ``raw_dir``), or ``dicom`` trees (series found by SeriesInstanceUID,
    labels as NIfTI by ``label_pattern`` or as DICOM SEG). ``auto`` picks by what the inbox holds.
    ``workers`` cases are converted at once (threads: GDCM decode, gzip and sha256 release the GIL).
    ``spatial_dims`` declares the dataset 2D or 3D (``auto``: what most cases are); a case of the other kind
    is refused, and a DICOM series of one slice is a case only in a dataset declared 2D.

    ``label_names`` says what each label value means. ``auto`` takes it from an nnU-Net/MSD ``dataset.json``
    (the source of truth there: an explicit mapping must agree with it); ``pairs`` and ``dicom`` inboxes
    have none, so there it must be given (``{background: 0, liver: 1}``, values 0..N-1). Labels are never
    remapped: a value outside the declared classes refuses the case. ``instance_labels: true`` is for
    sources whose labels *are* instance maps of one class (label value = object id): they become class 1
    where > 0 and the ids are kept as instance maps. Otherwise instance maps come only from an
    ``instancesTr/`` folder beside ``labelsTr/``.
    """

    raw_dir: str = "data"
    source: Literal["auto", "nnunet", "pairs", "dicom"] = "auto"
    images_dir: str = "imagesTr"
    labels_dir: str = "labelsTr"
    test_images_dir: str = "imagesTs"
    image_pattern: str = "images/{case}.nii.gz"
    label_pattern: str = "labels/{case}.nii.gz"
    dicom_case_id: Literal["hash", "folder"] = "hash"
    dicom_id_salt: str = "unetflow"
    dataset_dir: str = "outputs/dataset"
    modality: str = "auto"
    spatial_dims: Literal["auto", 2, 3] = "auto"
    instance_labels: bool = False
    label_names: Literal["auto"] | dict[str, int] = "auto"
    geometry_tolerance: float = Field(1e-4, gt=0.0)
    slice_spacing_tolerance: float = Field(0.01, gt=0.0, lt=0.5)
    max_voxels: int = Field(1_000_000_000, gt=0)
    workers: int = Field(2, gt=0)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0

    @field_validator("image_pattern", "label_pattern")
    @classmethod
    def _pattern_names_the_case(cls, pattern: str) -> str:
        if pattern.count("{case}") != 1 or pattern.startswith("/") or ".." in pattern.split("/"):
            raise ValueError("needs exactly one '{case}' and must stay inside raw_dir, e.g. 'labels/{case}.nii.gz'")
        return pattern

    @model_validator(mode="after")
    def _fractions_leave_training_cases(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave cases to train on (< 0.9)")
        if isinstance(self.label_names, dict) and (
                len(self.label_names) < 2 or sorted(self.label_names.values()) != list(range(len(self.label_names)))):
            raise ValueError("label_names must be auto, or name the values 0..N-1 (background 0, at least one class)")
        return self


class PreprocessConfig(Section):
    """U-Net weight maps (w_c + w0·exp(−(d1+d2)²/2σ²)) and intensity normalisation.

    ``normalization`` follows nnU-Net: ``auto`` picks, per channel, ``ct`` for CT (clip to the training
    foreground's 0.5/99.5 percentiles, z-score with its mean/std) and ``zscore`` (per image) otherwise.
    Weight maps are cached in ``weight_map_cache`` under the label hash + w0/σ/class weights, so only a
    change of those recomputes them. ``sigma_units``: the distances d1, d2 and σ are in ``voxels`` (the
    paper's σ = 5 is in pixels; the header spacing is ignored, so microscopy stored at 0.1 mm pixdim still
    gets a border term between the cells rather than +w0 over all background) or in ``mm`` (header
    spacing: physical distances, for anisotropic 3D). ``intensity_samples`` caps the foreground voxels
    drawn per training case for the statistics (nnU-Net: 10000), which keeps the pass over a large dataset
    cheap. ``target_spacing`` (mm, X/Y/Z) replaces the spacing planning chooses from the dataset fingerprint
    (nnU-Net v2's rule, ``tasks.preprocess.fingerprint``); every case is resampled to it (images third order,
    labels per class without losing one) and inference resamples the probabilities back to the input's grid.
    ``runner``: ``threads`` (``workers`` threads) or ``dask`` (``workers`` local processes, or the
    cluster at ``dask_address``; needs the ``dask`` extra); weight maps are pure Python/NumPy work
    that threads share under the GIL, so a large dataset gains from processes.
    ``border_core`` (``auto``: when every case has an instance map) trains on nnU-Net's border-core target:
    each object's rim, ``border_thickness`` voxels, is an extra class, so touching objects have apart cores to
    seed a watershed from (``monai_ext.transforms.border_core``); the weight maps' border term then measures
    the cores. Inference folds the rim back into its class: the masks keep their meaning.
    """

    output_dir: str = "outputs/preprocessed"
    weight_maps: bool = True
    w0: float = Field(10.0, ge=0.0)
    sigma: float = Field(5.0, gt=0.0)
    sigma_units: Literal["voxels", "mm"] = "voxels"
    class_weights: Literal["balanced", "none"] = "balanced"
    border_core: bool | Literal["auto"] = "auto"
    border_thickness: int = Field(1, ge=1)
    normalization: Literal["auto", "zscore", "ct", "none"] = "auto"
    weight_map_cache: str = "outputs/cache/weight_maps"
    intensity_samples: int = Field(10000, gt=0)
    target_spacing: tuple[float, ...] | None = None
    runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(2, gt=0)
    dask_address: str | None = None


class ModelConfig(Section):
    """Which member of the U-Net family to build (see ``monai_ext.networks.build_network``).

    ``norm``: ``batch``, ``instance`` (nnU-Net's choice for small batches), ``group`` or none, for every
    variant. Each network's own constraints (widths it needs, option values) are checked here, at load time.
    """

    name: str = "unet"
    spatial_dims: Literal["auto", 2, 3] = "auto"
    features: tuple[int, ...] = (16, 32, 64, 128)
    norm: str | None = "batch"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_network(cls, name: str) -> str:
        known = available_networks()
        if name not in known:
            raise ValueError(f"unknown network {name!r}; known: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _known_options(self) -> ModelConfig:
        known = network_options(self.name)
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for network {self.name!r}; known: {', '.join(known)}")
        return self

    @field_validator("features")
    @classmethod
    def _positive_widths(cls, features: tuple[int, ...]) -> tuple[int, ...]:
        if len(features) < 2 or any(f <= 0 for f in features):
            raise ValueError("features needs at least two positive widths, e.g. [16, 32, 64, 128]")
        return features

    @model_validator(mode="after")
    def _fits_the_network(self) -> ModelConfig:
        """The network's own constraints (eff_unet: five widths; unetpp: pruning needs deep supervision; ...).

        Why here: the network is built only after ingest and preprocessing; asking it now refuses such a config
        before any work starts, naming the key to change.
        """
        repeated = sorted({"features", "norm"} & set(self.options))
        if repeated:
            raise ValueError(f"set model.{repeated[0]} directly, not inside model.options")
        try:
            check_network_config(self.name, self.features, norm=self.norm, **self.options)
        except NetworkConfigError as error:
            key = error.option if error.option in ("features", "norm") else f"options.{error.option}"
            raise ValueError(f"model.{key} does not suit network {self.name!r}: {error}") from None
        return self


class AugmentConfig(Section):
    """Training-time augmentation and the loader that runs it (``train.augment``).

    Spatial transforms move image, label and weight map together (label by nearest neighbour, so it
    keeps its values). ``elastic`` picks MONAI's ``Rand2DElasticd``/``Rand3DElasticd`` (by the plan's
    spatial dims; ``elastic_sigma`` is the field's smoothness in voxels — the 3D Gaussian σ, twice it the
    2D control-point spacing — and ``elastic_magnitude`` the displacement range in voxels), or the
    U-Net paper's own (``paper``: a coarse ``grid``³ of Gaussian displacements with std ``sigma_px``).
    ``loader_workers`` processes run the random part; ``loader_cache`` says where cases live: ``mmap``
    = patches read from memory-mapped case files (memory independent of the number of cases), ``memory``
    = every case held in memory (MONAI CacheDataset; small datasets only); the older ``none`` reads as ``mmap``.
    ``train.augment: false`` is still accepted and means ``enabled: false``.
    """

    enabled: bool = True
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    rotate90_prob: float = Field(0.5, ge=0.0, le=1.0)
    affine_prob: float = Field(0.0, ge=0.0, le=1.0)
    rotate_range: float = Field(0.26, ge=0.0, le=3.1416)
    scale_range: float = Field(0.15, ge=0.0, lt=1.0)
    intensity_scale_prob: float = Field(0.15, ge=0.0, le=1.0)
    intensity_shift_prob: float = Field(0.15, ge=0.0, le=1.0)
    noise_prob: float = Field(0.1, ge=0.0, le=1.0)
    noise_std: float = Field(0.1, ge=0.0)
    elastic: Literal["none", "monai", "paper"] = "none"
    elastic_prob: float = Field(0.2, ge=0.0, le=1.0)
    elastic_sigma: float = Field(10.0, gt=0.0)
    elastic_magnitude: tuple[float, float] = (2.0, 5.0)
    grid: int = Field(3, ge=2)
    sigma_px: float = Field(10.0, ge=0.0)
    loader_workers: int = Field(0, ge=0)
    loader_cache: Literal["mmap", "memory"] = "mmap"

    @model_validator(mode="before")
    @classmethod
    def _bool_means_enabled(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data

    @field_validator("loader_cache", mode="before")
    @classmethod
    def _none_was_reading_files(cls, value: Any) -> Any:
        """``none`` (before memory-mapped cases: re-read each file per sample) now means reading patches from
        the files, which is what ``mmap`` does; older params files keep working."""
        return "mmap" if value == "none" else value

    @field_validator("elastic_magnitude")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1]:
            raise ValueError("elastic_magnitude must be [low, high] with 0 <= low <= high")
        return value


class TrainConfig(Section):
    """How the trainer executes the plan.

    ``patch_size`` and ``batch_size`` (null: planned) and ``memory_budget_gb`` are read by *preprocess*: the
    plan fits the patch and the batch to the budget (default: a GPU of 8 GB, nnU-Net's reference), measured
    on CUDA and estimated from activation sizes elsewhere (``tasks.preprocess.memory_budget``).
    ``keep_best_by``: the validation score the kept weights are the best by; ``auto`` is object F1 (IoU 0.5) when
    every validation case has an instance map (a model that merges touching cells can have the best Dice),
    Dice otherwise.
    """

    output_dir: str = "outputs/model"
    epochs: int = Field(30, gt=0)
    batch_size: int | None = Field(None, gt=0)
    patch_size: tuple[int, ...] | None = None
    memory_budget_gb: float = Field(8.0, gt=0.0)
    learning_rate: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    scheduler: Literal["poly", "cosine", "constant"] = "poly"
    grad_clip: float = Field(12.0, ge=0.0)
    early_stopping_patience: int | None = Field(None, gt=0)
    overlay_every: int = Field(5, ge=0)
    amp: bool = True
    compile: bool = False
    max_steps_per_epoch: int | None = Field(None, gt=0)
    loss: str = "wce"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    val_every: int = Field(1, gt=0)
    keep_best_by: Literal["auto", "dice", "object_f1", "pq"] = "auto"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _loss_builds(self) -> TrainConfig:
        if self.loss not in LOSS_REGISTRY:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(sorted(LOSS_REGISTRY))}")
        build_loss(self.loss, **self.loss_options)  # refuses unknown options, naming them
        return self


class InferConfig(Section):
    """Batch segmentation of new studies (``unetflow infer``); preprocessing itself comes from the model's plan.

    Windows: ``roi_size`` (null: the plan's patch size), ``overlap``, ``sw_batch_size`` windows per forward
    pass, Gaussian blending; ``mirror_tta`` averages over every axis flip (2^dims passes, slower).
    ``device`` runs the windows (``auto``: CUDA when present), ``amp`` uses mixed precision there, and
    ``stitch_device`` holds the blended volume: ``auto`` keeps it on the GPU only when it fits easily.
    CGM post-filtering (networks built with ``cgm: true``): foreground of an image/slice (2D) or of the
    windows (3D) whose "foreground present" probability is below ``cgm_threshold`` is removed. (This post-filter
    is not the network's own eval-time gate, the model option ``cgm_gate``/``cgm_gate_threshold``, which is off
    by default; ``cgm_threshold`` here is the one inference uses.)
    ``keep_largest_component`` keeps one connected component per class. ``dicom_seg`` also writes a
    DICOM SEG for DICOM inputs. ``runner``: ``threads`` (``workers`` threads) or ``dask`` (``workers``
    local processes, or the cluster at ``dask_address``; needs the ``dask`` extra).
    A UNet++ trained with deep supervision runs pruned to ``prune_level`` or averages its heads
    (``unetpp_heads: mean``); see :mod:`tasks.config.deep_supervision`.
    ``instances`` also writes ``<case>_instances.nii.gz``, one id per object (:mod:`tasks.inference.instances`):
    ``components`` (connected components) or ``watershed`` (touching objects split); ``none``, the default,
    writes nothing more and keeps earlier reports valid.
    """

    input_dir: str = "data/imagesTs"
    output_dir: str = "outputs/predictions"
    model_uri: str | None = None
    roi_size: tuple[int, ...] | None = None
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, gt=0)
    mirror_tta: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    stitch_device: Literal["auto", "cpu", "device"] = "auto"
    cgm_filter: bool = True
    cgm_threshold: float = Field(0.5, ge=0.0, le=1.0)
    keep_largest_component: bool = False
    dicom_seg: bool = True
    runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(2, gt=0)
    dask_address: str | None = None
    prune_level: int | None = Field(None, ge=1)
    unetpp_heads: Literal["last", "mean"] = "last"
    instances: Literal["none", "components", "watershed"] = "none"


class TrackingConfig(Section):
    """MLflow: a SQLite store in the project folder unless a tracking URI is given."""

    uri: str | None = None
    artifact_root: str | None = None
    experiment: str = "unetflow"
    model_name: str = "unetflow-segmenter"
    system_metrics: bool = True
    # Test Dice a model needs before it may become champion, the first one included: "no champion yet" must not
    # crown a model that learned nothing (Dice 0). 0.5 is far below any model worth serving (the demo reaches
    # > 0.9) yet above what an untrained or collapsed network scores; raise it to your task's bar.
    min_test_score: float = Field(0.5, ge=0.0, le=1.0)
    # The test score promotion compares (and min_test_score applies to): mean test Dice, or for touching objects
    # the object F1 at IoU 0.5 or the panoptic quality (tasks/evaluation/object_metrics.py). The object scores
    # need instance maps in the test cases; without them no candidate is promoted and the reason says why.
    promote_on: Literal["test_dice", "object_f1", "pq"] = "test_dice"


class PacsConfig(Section):
    """``unetflow pacs-sync``: segment new series of a PACS and store the results back (``tasks.pacs``).

    One transport: ``url``, a DICOMweb root (``http://127.0.0.1:8042/dicom-web``), or ``dimse``,
    ``HOST:PORT:AET`` of the PACS (C-FIND, C-GET, C-STORE as ``calling_aet``, which the PACS must know).
    Filters: ``study_date`` (``YYYYMMDD-YYYYMMDD``, inclusive) or ``recent_days`` (studies of the last N days,
    today included, by the host's date: what a schedule wants), ``modality``, ``series_description`` (a regex);
    the model's own modality and dimensionality are checked as well. ``model_uri`` (null: ``infer.model_uri``,
    then the champion). Credentials never live here (unknown keys are refused): ``UNETFLOW_PACS_TOKEN`` or
    ``UNETFLOW_PACS_USER`` + ``UNETFLOW_PACS_PASSWORD`` (prefix ``credentials_env``), or the Prefect Secret block
    ``credentials_block`` (a token, or ``{"user": …, "password": …}``). ``work_dir`` holds the state and the
    pseudonymous results; ``retries``/``backoff_s``/``timeout_s`` how long an unreachable PACS is waited for.
    """

    url: str | None = None
    dimse: str | None = None
    calling_aet: str = Field("UNETFLOW", min_length=1, max_length=16)
    model_uri: str | None = None
    study_date: str | None = None
    recent_days: int | None = Field(None, ge=1)
    modality: str | None = None
    series_description: str | None = None
    work_dir: str = "outputs/pacs"
    verify_tls: bool = True
    credentials_env: str = "UNETFLOW_PACS"
    credentials_block: str | None = None
    retries: int = Field(4, ge=1)
    backoff_s: float = Field(1.0, ge=0.0)
    timeout_s: float = Field(30.0, gt=0.0)

    @field_validator("study_date")
    @classmethod
    def _date_range(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{8}(-\d{8})?", value):
            raise ValueError(f"study_date must be YYYYMMDD-YYYYMMDD or YYYYMMDD, got {value!r}")
        return value

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"series_description is not a regular expression: {error}") from None
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> PacsConfig:
        if self.url and self.dimse:
            raise ValueError("pacs: give url (DICOMweb) or dimse (HOST:PORT:AET), not both")
        if self.study_date and self.recent_days:
            raise ValueError("pacs: give study_date (a fixed range) or recent_days (the last N days), not both")
        if self.url and "@" in self.url.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("pacs.url must not hold credentials: use UNETFLOW_PACS_TOKEN / _USER / _PASSWORD "
                             "or pacs.credentials_block")
        return self
