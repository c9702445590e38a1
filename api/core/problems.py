"""Errors that become RFC 9457 ``application/problem+json`` responses, with a stable ``code``."""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """An error for the client. ``errors`` lists ``{"field", "reason"}`` pairs when fields are at fault."""

    def __init__(self, status: int, code: str, detail: str, *, title: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.errors = errors or []
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"https://jaga.dev/problems/{self.code}", "title": self.title,
                                "status": self.status, "code": self.code, "detail": self.detail}
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return body


def field_error(field: str, reason: str, *, status: int = 422, code: str = "invalid_request") -> Problem:
    return Problem(status, code, f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def not_found(kind: str, resource_id: str) -> Problem:
    return Problem(404, "not_found", f"no {kind} {resource_id!r}")
