"""Errors that become RFC 9457 ``application/problem+json`` responses, with a stable ``code``."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any


class Problem(Exception):
    """An error for the client. ``errors`` lists ``{"field", "reason"}`` pairs when fields are at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.errors = errors or []
        self.headers = headers or {}
        self.extensions = extensions or {}  # RFC 9457 extension members, e.g. readiness checks

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://jaga.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return {**body, **self.extensions}


def field_error(field: str, reason: str, *, status: int = 422, code: str = "invalid_request") -> Problem:
    return Problem(status, code, f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def unsupported_media_type(accepted: str) -> Problem:
    """A 415 for a body in a Content-Type the route does not read; ``accepted`` says which it does."""
    return field_error("Content-Type", f"must be {accepted}", status=415, code="unsupported_media_type")


def not_found(kind: str, resource_id: str) -> Problem:
    return Problem(404, "not_found", f"no {kind} {resource_id!r}")


#: Where FastAPI says a request value came from; not part of the field name a client sees.
REQUEST_LOCATIONS = ("body", "query", "path", "header", "form")


def invalid(errors: list[dict[str, str]]) -> Problem:
    """A 422 ``invalid_request`` listing ``{"field", "reason"}`` pairs."""
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return Problem(422, "invalid_request", detail, title="Invalid request", errors=errors)


def validation_errors(errors: Iterable[Mapping[str, Any]], *, skip: Collection[str] = ()) -> list[dict[str, str]]:
    """Pydantic's (or FastAPI's) validation errors as ``{"field", "reason"}`` pairs: the field is the dotted
    location without request locations and ``skip`` parts (e.g. union tags); ``body`` for the whole value."""
    out = []
    for err in errors:
        parts = [str(p) for p in err.get("loc", ()) if p not in REQUEST_LOCATIONS and p not in skip]
        reason = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        out.append({"field": ".".join(parts) or "body", "reason": reason})
    return out
