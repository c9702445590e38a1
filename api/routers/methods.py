"""The catalogue of SSL methods and backbones: what ``POST /v1/jobs`` accepts for ``kind: pretrain``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.core.params import params_model
from api.core.problems import not_found
from api.core.specs import supported_backbones
from api.deps import TenantId
from api.openapi import problems
from ssl_core.backbones import BACKBONES, Stem, backbone_cost
from ssl_core.config import DEFAULT_BACKBONE
from ssl_core.methods import METHODS

router = APIRouter(prefix="/v1", tags=["methods"])


def describe_method(name: str) -> dict[str, Any]:
    method = METHODS.get(name)
    by_family = {family: method.optimizer_defaults(method.Params(), family).settings() for family in method.families}
    spec_default = BACKBONES.get(DEFAULT_BACKBONE).family
    primary = spec_default if spec_default in method.families else method.families[0]
    return {
        "name": name,
        "category": method.category,
        "summary": method.summary,
        "backbones": supported_backbones(name),
        # For the backbone a spec without one trains; adamw_betas and the last two are not settable in a spec.
        "defaults": by_family[primary],
        "defaults_by_family": by_family,
        "parameters": params_model(method.Params).model_json_schema(),
    }


@router.get("/methods")
def list_methods(tenant_id: TenantId) -> dict[str, Any]:
    """Every method with its parameters (a JSON schema with defaults and bounds), default optimiser settings
    and the backbones it supports. Method parameters go at the top level of a pretrain spec."""
    return {"data": [describe_method(name) for name in METHODS.names()]}


@router.get("/methods/{name}", responses=problems(404))
def read_method(name: str, tenant_id: TenantId) -> dict[str, Any]:
    if name not in METHODS:
        raise not_found("method", name)
    return describe_method(name)


@router.get("/backbones", responses=problems(422))
def list_backbones(
    tenant_id: TenantId,
    image_size: Annotated[int, Query(ge=8, le=512, description="input side the costs are counted at")] = 32,
    stem: Annotated[Stem, Query(description="ResNets' stem the costs are counted with")] = "standard",
) -> dict[str, Any]:
    """The backbones a pretrain spec can name, with their family (methods list the families they support),
    feature dimension, parameters and the FLOPs of one image's forward pass at ``image_size`` (torch's FLOP
    counter, 2 per multiply-add; ViTs with the default patch size for that size, null with ``unavailable``
    where none divides it)."""
    data = []
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        entry: dict[str, Any] = {"name": name, "family": spec.family, "description": spec.description}
        try:
            cost = backbone_cost(name, stem, image_size)
        except ValueError as exc:  # e.g. no ViT patch size divides an odd image size
            entry.update(dim=None, parameters=None, flops=None, unavailable=str(exc))
        else:
            entry.update(dim=cost.dim, parameters=cost.parameters, flops=cost.flops)
        data.append(entry)
    return {"image_size": image_size, "stem": stem, "data": data}
