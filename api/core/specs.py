"""Job specs for ``POST /v1/jobs``: a flat pretrain spec holds ``TrainConfig``'s fields and the method's own
parameters; unknown keys are refused and every error names its field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from api.core.problems import invalid, validation_errors
from ssl_core.backbones import BACKBONES, default_patch_size
from ssl_core.config import DEFAULT_BACKBONE, DEFAULT_METHOD, TrainConfig
from ssl_core.methods import METHODS

DatasetId = Annotated[str, Field(pattern=r"^ds_[0-9a-f]{24}$", description="a dataset id")]
ModelId = Annotated[str, Field(pattern=r"^mdl_[0-9a-f]{24}$", description="a model id")]


class PretrainSpec(TrainConfig):
    kind: Literal["pretrain"]
    dataset_id: DatasetId
    #: The method's own parameters, filled from the flat body by ``parse_job_spec``.
    params: dict[str, Any] = Field(default_factory=dict, exclude=True)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields)))


class IndexSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["index"]
    model_id: ModelId
    dataset_id: DatasetId
    index_type: Literal["flat"] = Field("flat", description="flat: exact inner-product search")


class IngestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ingest"]
    dataset_id: DatasetId
    source_format: Literal["zip", "tar", "npz"]
    max_side: int


SUBMITTABLE_KINDS = ("pretrain", "index")
JobSpec = PretrainSpec | IndexSpec | IngestSpec
_adapter: TypeAdapter[PretrainSpec | IndexSpec] = TypeAdapter(
    Annotated[PretrainSpec | IndexSpec, Field(discriminator="kind")]
)


def parse_job_spec(body: Any) -> PretrainSpec | IndexSpec:
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
    if kind == "pretrain":
        method = body.get("method", DEFAULT_METHOD)
        if not isinstance(method, str) or method not in METHODS:
            raise invalid(
                [{"field": "method", "reason": f"unknown method {method!r}; valid: {', '.join(METHODS.names())}"}]
            )
        method_cls = METHODS.get(method)
        backbone = body.get("backbone", DEFAULT_BACKBONE)
        if not isinstance(backbone, str) or backbone not in BACKBONES:
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
        params_model = method_cls.Params
        params = {k: body.pop(k) for k in list(body) if k in params_model.model_fields}
        if "params" in body:
            errors.append({"field": "params", "reason": "unknown field; give method parameters at the top level"})
            body.pop("params")
        try:
            params = params_model(**params).model_dump()
        except ValidationError as exc:
            errors += validation_errors(exc.errors(include_url=False))
    try:
        spec = _adapter.validate_python(body)
    except ValidationError as exc:
        errors += validation_errors(exc.errors(include_url=False), skip=SUBMITTABLE_KINDS)
    if errors:
        raise invalid(errors)
    if isinstance(spec, PretrainSpec):
        spec.params = params
        if BACKBONES.get(spec.backbone).family == "vit":
            patch = spec.patch_size or default_patch_size(spec.image_size)
            if spec.image_size % patch:
                raise invalid(
                    [{"field": "patch_size", "reason": f"{patch} does not divide image_size {spec.image_size}"}]
                )
    return spec


def supported_backbones(method: str) -> list[str]:
    families = METHODS.get(method).families
    return [name for name in BACKBONES.names() if BACKBONES.get(name).family in families]


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """The stored form of a spec: for pretraining, method parameters sit in ``params``."""
    data = spec.model_dump(mode="json")
    if isinstance(spec, PretrainSpec):
        data["params"] = spec.params
    return data


def spec_from_json(data: dict[str, Any]) -> JobSpec:
    data = dict(data)
    if data["kind"] == "pretrain":
        params = data.pop("params", {})
        spec = PretrainSpec(**data)
        spec.params = params
        return spec
    if data["kind"] == "index":
        return IndexSpec(**data)
    return IngestSpec(**data)
