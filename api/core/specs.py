"""Job specs for ``POST /v1/jobs``: a flat pretrain spec holds ``TrainConfig``'s fields and the method's own
parameters; unknown keys are refused and every error names its field."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from api.core.params import params_model
from api.core.problems import invalid, validation_errors
from ssl_core.backbones import BACKBONES, default_patch_size
from ssl_core.config import DEFAULT_BACKBONE, DEFAULT_METHOD, TrainConfig
from ssl_core.continual import Preserve
from ssl_core.distill import OBJECTIVE_FIELDS, DistillParams
from ssl_core.finetune import FinetuneConfig
from ssl_core.methods import METHODS
from ssl_core.splits import SplitPlan

#: The spec fields that name a model the job reads (evaluate, embed, index; distill; continued pretraining).
MODEL_REFERENCES = ("model_id", "teacher_model_id", "init_model_id")
#: Experiment trackers a pretrain or distill job may log its metrics events to.
Integration = Literal["tensorboard", "mlflow"]
#: The module each integration needs in the worker, and the extra of Jaga's package that installs it.
INTEGRATION_PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def integration_errors(integrations: Sequence[str]) -> list[dict[str, str]]:
    """One error naming ``integrations`` per integration whose package is not installed (the API and the
    workers run the same image, so what the API lacks the workers lack too)."""
    errors = []
    for name in dict.fromkeys(integrations):
        module, extra = INTEGRATION_PACKAGES[name]
        if not _installed(module):
            errors.append(
                {
                    "field": "integrations",
                    "reason": f"{name} is not installed on this service; install Jaga with the {extra!r} extra "
                    f"(pip install 'jaga[{extra}]')",
                }
            )
    return errors


IntegrationsField: Any = Field(
    default_factory=list,
    max_length=2,
    description="experiment trackers to log every metrics event to, when installed: tensorboard (event files "
    "under JAGA_TENSORBOARD_DIR, downloadable from GET /v1/jobs/{id}/tensorboard) and mlflow (a run named after the "
    "job, on MLflow's MLFLOW_TRACKING_URI)",
)

DatasetId = Annotated[str, Field(pattern=r"^ds_[0-9a-f]{24}$", description="a dataset id")]
DEFAULT_TEST_FRACTION = 0.2
ModelId = Annotated[str, Field(pattern=r"^mdl_[0-9a-f]{24}$", description="a model id")]


def _method_parameters_at_top_level(schema: dict[str, Any]) -> None:
    """A pretrain spec's JSON schema lists ``TrainConfig``'s fields and lets others through: the method's own
    parameters, which differ by method; ``params`` is filled from them, never sent."""
    schema["properties"].pop("params")
    schema["additionalProperties"] = True


TrainConfigModel: Any = params_model(TrainConfig)
DistillParamsModel: Any = params_model(DistillParams)
_TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
_DISTILL_FIELDS = [f.name for f in dataclasses.fields(DistillParams)]


class PretrainSpec(TrainConfigModel):
    """A pretraining job: the training settings and, at the top level too, the method's own parameters (their
    schema is in ``GET /v1/methods``); any other key is refused."""

    model_config = ConfigDict(json_schema_extra=_method_parameters_at_top_level)
    kind: Literal["pretrain"]
    dataset_id: DatasetId
    init_model_id: ModelId | None = Field(
        None,
        description="continue pretraining from this model's encoder; backbone, stem, image_size and patch_size "
        "default to the model's and must match it",
    )
    preserve: Preserve = Field(
        "none",
        description="with init_model_id: none (plain continued pretraining); lwf: a term pulling the features "
        "towards a frozen copy of the starting encoder's; cassle: the same through a learned predictor",
    )
    preserve_weight: float = Field(1.0, ge=0, le=100, description="lwf or cassle: the weight of the preservation term")
    integrations: list[Integration] = IntegrationsField
    #: The method's own parameters, filled from the flat body by ``parse_job_spec``.
    params: dict[str, Any] = Field(default_factory=dict, exclude=True)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in _TRAIN_FIELDS})

    def cross_field_errors(self) -> list[dict[str, str]]:
        errors = []
        if self.preserve != "none" and self.init_model_id is None:
            errors.append({"field": "preserve", "reason": f"{self.preserve} needs init_model_id (what to preserve)"})
        if "preserve_weight" in self.model_fields_set and self.preserve == "none":
            errors.append({"field": "preserve_weight", "reason": "applies to preserve lwf or cassle"})
        return errors + integration_errors(self.integrations)


def _no_method_field(schema: dict[str, Any]) -> None:
    """A distill spec trains with its objective: ``method`` is fixed and not part of the request."""
    schema["properties"].pop("method")


class DistillSpec(TrainConfigModel, DistillParamsModel):
    """Distillation of ``teacher_model_id`` into a fresh ``backbone`` (the student) on ``dataset_id``'s images
    (labels needed only for ``logits``), with the budget and optimiser settings of a pretrain spec. ``stem`` and
    ``image_size`` default to the teacher's; the image size must be the teacher's."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_method_field)
    kind: Literal["distill"]
    method: str = Field("distill", exclude=True)
    teacher_model_id: ModelId
    integrations: list[Integration] = IntegrationsField
    dataset_id: DatasetId
    backbone: str = Field("mobilenet_v3_small", description="the student's backbone (GET /v1/backbones)")
    stem: Literal["small", "standard"] | None = Field(None, description="the student's stem; default the teacher's")
    image_size: int | None = Field(None, ge=8, le=512, description="default and only choice: the teacher's")

    def train_config(self) -> TrainConfig:
        assert self.stem is not None, "filled from the teacher at submission"
        assert self.image_size is not None, "filled from the teacher at submission"
        return TrainConfig(
            **{name: getattr(self, name) for name in _TRAIN_FIELDS if name != "method"}, method="distill"
        )

    def distill_params(self) -> DistillParams:
        return DistillParams(**{name: getattr(self, name) for name in _DISTILL_FIELDS})

    def cross_field_errors(self) -> list[dict[str, str]]:
        errors = [
            {
                "field": name,
                "reason": f"applies to objective {' or '.join(OBJECTIVE_FIELDS[name])}, not {self.objective}",
            }
            for name in sorted(self.model_fields_set & OBJECTIVE_FIELDS.keys())
            if self.objective not in OBJECTIVE_FIELDS[name]
        ]
        if self.backbone not in BACKBONES:
            errors.append(
                {
                    "field": "backbone",
                    "reason": f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES.names())}",
                }
            )
        elif self.patch_size is not None and BACKBONES.get(self.backbone).family != "vit":
            errors.append({"field": "patch_size", "reason": f"applies to ViT backbones only, not {self.backbone}"})
        return errors + integration_errors(self.integrations)


class IndexSpec(BaseModel):
    """An index of ``dataset_id``'s embeddings by ``model_id``: exact up to ``ann_threshold`` items, approximate
    past it (``auto``), or the kind ``index_type`` names."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["index"]
    model_id: ModelId
    dataset_id: DatasetId
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="flat: exact inner-product search; hnsw or ivf: approximate, tuned to recall@10 >= 0.99; "
        "auto: flat up to ann_threshold items, else the approximate kind",
    )
    ann_threshold: int | None = Field(
        None, ge=1, le=2**31 - 1, description="auto only; default JAGA_INDEX_ANN_THRESHOLD (100000)"
    )

    def cross_field_errors(self) -> list[dict[str, str]]:
        if self.ann_threshold is not None and self.index_type != "auto":
            return [{"field": "ann_threshold", "reason": f"applies to index_type auto, not {self.index_type}"}]
        return []


class EmbedSpec(BaseModel):
    """Bulk embeddings: every image of ``dataset_id`` embedded by ``model_id`` under the evaluation transform, the
    same as ``POST /v1/models/{id}/embeddings``, downloaded from ``GET /v1/jobs/{id}/embeddings``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["embed"]
    model_id: ModelId
    dataset_id: DatasetId
    batch_size: int = Field(256, ge=1, le=4096, description="images per forward pass")

    def cross_field_errors(self) -> list[dict[str, str]]:
        return []


Protocol = Literal["knn", "linear", "finetune", "supervised"]
#: Settings that only some protocols take: submitting one with another protocol is refused, naming the field.
PROTOCOL_FIELDS: dict[str, tuple[str, ...]] = {
    "k": ("knn",),
    "temperature": ("knn",),
    "strategy": ("finetune",),
    "trainable_blocks": ("finetune",),
    "backbone_lr_multiplier": ("finetune",),
    "epochs": ("finetune", "supervised"),
    "max_minutes": ("finetune", "supervised"),
    "batch_size": ("finetune", "supervised"),
    "learning_rate": ("finetune", "supervised"),
    "weight_decay": ("finetune", "supervised"),
    "augment": ("finetune", "supervised"),
    "patience": ("finetune", "supervised"),
    "precision": ("finetune", "supervised"),
    "backbone": ("supervised",),
    "stem": ("supervised",),
    "image_size": ("supervised",),
    "model_id": ("knn", "linear", "finetune"),
}


class EvaluateSpec(BaseModel):
    """An evaluation of ``model_id`` (or, for ``supervised``, of ``backbone`` trained from scratch) on the labelled
    images of ``dataset_id``, tested on ``test_dataset_id`` or a stratified ``test_fraction`` of the dataset."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["evaluate"]
    protocol: Protocol
    dataset_id: DatasetId
    model_id: ModelId | None = None
    test_dataset_id: DatasetId | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1, description="default 0.2 without test_dataset_id")
    val_fraction: float = Field(0.1, gt=0, le=0.5, description="of the labelled images, for model selection")
    label_fraction: float | None = Field(None, gt=0, le=1, description="class-balanced fraction of labels to use")
    labels_per_class: int | None = Field(None, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the splits, the label subset and training")
    k: int = Field(20, ge=1, le=1000)
    temperature: float = Field(0.1, gt=0, le=100)
    strategy: Literal["frozen", "partial", "full"] = "full"
    trainable_blocks: int = Field(1, ge=1, le=64, description="partial: how many of the last stages train")
    backbone_lr_multiplier: float = Field(0.1, ge=0, le=10, description="backbone LR / head LR")
    epochs: int | None = Field(None, ge=1, le=10_000)
    max_minutes: float | None = Field(None, gt=0, le=7 * 24 * 60, description="default 5 when epochs is not given")
    batch_size: int = Field(256, ge=4, le=8192)
    learning_rate: float = Field(0.03, gt=0, le=100, description="the head's, for batch 256, scaled linearly")
    weight_decay: float = Field(5e-4, ge=0, le=1)
    augment: bool = True
    patience: int = Field(20, ge=1, le=10_000, description="epochs without a better validation accuracy")
    precision: Literal["auto", "bf16", "float32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware runs it faster than float32 (measured)"
    )
    backbone: str = DEFAULT_BACKBONE
    stem: Literal["small", "standard"] = "standard"
    image_size: int = Field(32, ge=8, le=512)

    def cross_field_errors(self) -> list[dict[str, str]]:
        errors = []
        for name in sorted(self.model_fields_set):
            allowed = PROTOCOL_FIELDS.get(name)
            if allowed is not None and self.protocol not in allowed:
                errors.append(
                    {"field": name, "reason": f"applies to protocol {' or '.join(allowed)}, not {self.protocol}"}
                )
        if self.protocol != "supervised" and self.model_id is None:
            errors.append({"field": "model_id", "reason": f"is required for protocol {self.protocol}"})
        if self.protocol == "supervised" and self.backbone not in BACKBONES:
            valid = ", ".join(BACKBONES.names())
            errors.append({"field": "backbone", "reason": f"unknown backbone {self.backbone!r}; valid: {valid}"})
        elif self.protocol == "supervised" and BACKBONES.get(self.backbone).family == "vit":
            patch = default_patch_size(self.image_size)
            if self.image_size % patch:
                errors.append({"field": "image_size", "reason": f"must be divisible by the ViT patch size ({patch})"})
        if self.test_dataset_id is not None and self.test_fraction is not None:
            errors.append({"field": "test_fraction", "reason": "give test_fraction or test_dataset_id, not both"})
        if self.label_fraction is not None and self.labels_per_class is not None:
            errors.append({"field": "labels_per_class", "reason": "give label_fraction or labels_per_class, not both"})
        if self.epochs is not None and self.max_minutes is not None:
            errors.append({"field": "max_minutes", "reason": "give epochs or max_minutes, not both"})
        if "trainable_blocks" in self.model_fields_set and self.strategy != "partial":
            errors.append({"field": "trainable_blocks", "reason": "applies to strategy partial only"})
        return errors

    def split_plan(self) -> SplitPlan:
        test_fraction = None if self.test_dataset_id else (self.test_fraction or DEFAULT_TEST_FRACTION)
        return SplitPlan(test_fraction, self.label_fraction, self.labels_per_class, self.val_fraction, self.seed)

    def finetune_config(self, image_size: int) -> FinetuneConfig:
        return FinetuneConfig(
            image_size=image_size,
            strategy="full" if self.protocol == "supervised" else self.strategy,
            trainable_blocks=self.trainable_blocks,
            epochs=self.epochs,
            max_minutes=self.max_minutes,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            # From scratch, the backbone learns at the head's rate.
            backbone_lr_multiplier=1.0 if self.protocol == "supervised" else self.backbone_lr_multiplier,
            weight_decay=self.weight_decay,
            augment=self.augment,
            patience=self.patience,
            precision=self.precision,
            seed=self.seed,
        )


class IngestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ingest"]
    dataset_id: DatasetId
    source_format: Literal["zip", "tar", "npz"]
    max_side: int


SUBMITTABLE_KINDS = ("pretrain", "distill", "index", "evaluate", "embed")
SubmittableSpec = PretrainSpec | DistillSpec | IndexSpec | EvaluateSpec | EmbedSpec
JobSpec = PretrainSpec | DistillSpec | IndexSpec | EvaluateSpec | EmbedSpec | IngestSpec
_adapter: TypeAdapter[SubmittableSpec] = TypeAdapter(Annotated[SubmittableSpec, Field(discriminator="kind")])


def parse_job_spec(body: Any) -> SubmittableSpec:
    """Validate a ``POST /v1/jobs`` body. Raises ``Problem`` (422) naming every bad field."""
    if not isinstance(body, dict):
        raise invalid([{"field": "body", "reason": "must be a JSON object"}])
    kind = body.get("kind")
    if kind not in SUBMITTABLE_KINDS:
        reason = (
            "is required"
            if kind is None
            else f"must be one of {', '.join(SUBMITTABLE_KINDS)} (got {kind!r}); "
            "ingest jobs are created by POST /v1/datasets"
            if kind == "ingest"
            else f"must be one of {', '.join(SUBMITTABLE_KINDS)} (got {kind!r})"
        )
        raise invalid([{"field": "kind", "reason": reason}])
    body = dict(body)
    params: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    if kind == "distill" and "method" in body:
        errors.append(
            {"field": "method", "reason": "applies to pretrain jobs; a distill job trains with its objective"}
        )
        body.pop("method")
    if kind == "pretrain":
        method = body.get("method", DEFAULT_METHOD)
        if not isinstance(method, str) or method not in METHODS:
            raise invalid(
                [{"field": "method", "reason": f"unknown method {method!r}; valid: {', '.join(METHODS.names())}"}]
            )
        method_cls = METHODS.get(method)
        backbone = body.get("backbone", DEFAULT_BACKBONE)
        if "backbone" not in body and body.get("init_model_id") is not None:
            pass  # the starting model's, checked once it is known
        elif not isinstance(backbone, str) or backbone not in BACKBONES:
            errors.append(
                {"field": "backbone", "reason": f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES.names())}"}
            )
            body.pop("backbone")
        elif BACKBONES.get(backbone).family not in method_cls.families:
            errors.append(
                {
                    "field": "backbone",
                    "reason": f"{method} does not support {backbone}; supported: "
                    f"{', '.join(supported_backbones(method))}",
                }
            )
        method_params = params_model(method_cls.Params)
        params = {k: body.pop(k) for k in list(body) if k in method_params.model_fields}
        if "params" in body:
            errors.append({"field": "params", "reason": "unknown field; give method parameters at the top level"})
            body.pop("params")
        try:
            params = dataclasses.asdict(method_cls.Params(**method_params(**params).model_dump()))
        except ValidationError as exc:
            errors += validation_errors(exc.errors(include_url=False))
    try:
        spec = _adapter.validate_python(body)
    except ValidationError as exc:
        errors += validation_errors(exc.errors(include_url=False), skip=SUBMITTABLE_KINDS)
    if not errors and isinstance(spec, EvaluateSpec | IndexSpec | PretrainSpec | DistillSpec | EmbedSpec):
        errors = spec.cross_field_errors()
    if errors:
        raise invalid(errors)
    if isinstance(spec, PretrainSpec):
        spec.params = params
    if isinstance(spec, DistillSpec) and spec.image_size is None:
        return spec  # the teacher's, checked once it is known
    if not (
        isinstance(spec, PretrainSpec) and spec.init_model_id is not None and "backbone" not in spec.model_fields_set
    ):
        errors = patch_errors(spec)  # else once the starting model's backbone is known
        if errors:
            raise invalid(errors)
    return spec


def patch_errors(spec: SubmittableSpec) -> list[dict[str, str]]:
    """A pretrain or distill spec's patch size: for ViTs only, and it must divide the image size."""
    if not isinstance(spec, PretrainSpec | DistillSpec) or spec.image_size is None:
        return []
    if spec.patch_size is not None and BACKBONES.get(spec.backbone).family != "vit":
        return [{"field": "patch_size", "reason": f"applies to ViT backbones only, not {spec.backbone}"}]
    if BACKBONES.get(spec.backbone).family == "vit":
        patch = spec.patch_size or default_patch_size(spec.image_size)
        if spec.image_size % patch:
            return [{"field": "patch_size", "reason": f"{patch} does not divide image_size {spec.image_size}"}]
    return []


def supported_backbones(method: str) -> list[str]:
    families = METHODS.get(method).families
    return [name for name in BACKBONES.names() if BACKBONES.get(name).family in families]


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """The stored form of a spec: for pretraining, method parameters sit in ``params``; an evaluation keeps only
    the settings its protocol uses."""
    data = spec.model_dump(mode="json")
    if isinstance(spec, PretrainSpec):
        data["params"] = spec.params
    if isinstance(spec, EvaluateSpec):  # only the settings the protocol uses
        data = {k: v for k, v in data.items() if spec.protocol in PROTOCOL_FIELDS.get(k, (spec.protocol,))}
        if spec.protocol != "finetune" or spec.strategy != "partial":
            data.pop("trainable_blocks", None)
    return data


def spec_from_json(data: dict[str, Any]) -> JobSpec:
    data = dict(data)
    if data["kind"] == "pretrain":
        params = data.pop("params", {})
        spec = PretrainSpec(**data)
        spec.params = params
        return spec
    if data["kind"] == "distill":
        return DistillSpec(**data)
    if data["kind"] == "index":
        return IndexSpec(**data)
    if data["kind"] == "evaluate":
        return EvaluateSpec(**data)
    if data["kind"] == "embed":
        return EmbedSpec(**data)
    return IngestSpec(**data)
