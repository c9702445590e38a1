"""The catalogue of SSL methods and backbones: what ``POST /v1/jobs`` accepts for ``kind: pretrain``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.core.problems import not_found
from api.core.specs import supported_backbones
from api.deps import TenantId
from api.openapi import problems
from ssl_core.backbones import BACKBONES
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
        "parameters": method.Params.model_json_schema(),
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


@router.get("/backbones")
def list_backbones(tenant_id: TenantId) -> dict[str, Any]:
    """The backbones a pretrain spec can name, with their family (methods list the families they support)."""
    return {
        "data": [
            {"name": name, "family": BACKBONES.get(name).family, "description": BACKBONES.get(name).description}
            for name in BACKBONES.names()
        ]
    }
