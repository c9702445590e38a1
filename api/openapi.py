"""The OpenAPI document's parts that FastAPI cannot derive: error responses as ``application/problem+json``, and
the schemas of the request bodies that routes read by hand (job specs, images, search queries).

Routes declare them (``responses=problems(404)``, ``openapi_extra=JOB_SPEC_BODY``) by referring to component
schemas, which ``install_openapi`` adds to the document, generated from their models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, Field, TypeAdapter

from api.core.specs import SubmittableSpec
from api.errors import PROBLEM
from api.schemas import BatchSearchForm, BatchSearchQuery, ImagesForm, ImagesJson, ProblemOut, SearchForm, SearchQuery

REF = "#/components/schemas/{model}"

#: What each error status means wherever it is documented; a route can say more (``problem``).
MEANINGS = {
    400: "The body is not valid JSON, or not valid multipart/form-data",
    401: "No API key, or one that is unknown or revoked",
    403: "The key's scope does not allow this request",
    404: "No such resource of the key's tenant",
    409: "The resource is not in a state that allows this",
    413: "The body, an image in it, or the tenant's stored bytes would be too large",
    415: "The Content-Type is not one this route reads",
    422: "A field is invalid; `errors` names each one",
    429: "The key's rate limit, or the tenant's quota of active jobs, is reached; retry after `Retry-After` seconds",
    503: "The service cannot take this request now: not ready (`checks` says what is missing), or overloaded; retry "
    "after `Retry-After` seconds where given",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def problem(status: int, description: str | None = None) -> dict[int | str, dict[str, Any]]:
    """One error response of a route, with the problem body."""
    response: dict[str, Any] = {
        "description": description or MEANINGS[status],
        "content": {PROBLEM: {"schema": {"$ref": REF.format(model="Problem")}}},
    }
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return {status: response}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error responses of a route, each with its usual meaning."""
    return {k: v for status in statuses for k, v in problem(status).items()}


def _body(content: dict[str, str]) -> dict[str, Any]:
    """``openapi_extra`` for a body a route reads by hand: media type → component schema name."""
    return {
        "requestBody": {
            "required": True,
            "content": {media: {"schema": {"$ref": REF.format(model=name)}} for media, name in content.items()},
        }
    }


JOB_SPEC_BODY = _body({"application/json": "JobSpec"})
IMAGES_BODY = _body({"multipart/form-data": "ImagesForm", "application/json": "ImagesJson"})
SEARCH_BODY = _body({"multipart/form-data": "SearchForm", "application/json": "SearchQuery"})
BATCH_SEARCH_BODY = _body({"multipart/form-data": "BatchSearchForm", "application/json": "BatchSearchQuery"})


def _schemas() -> dict[str, Any]:
    """The component schemas the references above name, generated from their models."""
    spec = TypeAdapter(Annotated[SubmittableSpec, Field(discriminator="kind")]).json_schema(ref_template=REF)
    schemas: dict[str, Any] = {**spec.pop("$defs"), "JobSpec": {**spec, "title": "JobSpec"}}
    models: dict[str, type[BaseModel]] = {
        "Problem": ProblemOut,
        "ImagesForm": ImagesForm,
        "ImagesJson": ImagesJson,
        "SearchForm": SearchForm,
        "SearchQuery": SearchQuery,
        "BatchSearchForm": BatchSearchForm,
        "BatchSearchQuery": BatchSearchQuery,
    }
    for name, model in models.items():
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas


def _drop_default_422(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 of its own shape for every route with a parameter; this app answers 422 as a
    problem, and only where a value can be invalid, which routes declare themselves."""
    default = REF.format(model="HTTPValidationError")
    for operations in document["paths"].values():
        for operation in operations.values():
            response = operation["responses"].get("422", {})
            if response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == default:
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)


def install_openapi(app: FastAPI) -> None:
    """Serve ``app``'s document with the schemas that routes refer to by name."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(_schemas())
            _drop_default_422(document)
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]
