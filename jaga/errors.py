"""The one exception the SDK raises for a refused request or a job that did not succeed."""

from __future__ import annotations

from typing import Any

import httpx


class JagaError(Exception):
    """An error answer (``application/problem+json``) or a failure to reach the service.

    ``status`` is the HTTP status (0 when the service could not be reached), ``code`` the problem's stable code,
    ``errors`` the fields at fault (``[{"field", "reason"}]``), ``problem`` the whole body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        title: str = "",
        detail: str = "",
        errors: list[dict[str, str]] | None = None,
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.request_id = request_id
        self.problem = problem or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> JagaError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text[:500]
            return cls(f"HTTP {response.status_code}: {text}", status=response.status_code, code="http_error")
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        detail = str(body.get("detail", ""))
        fields = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in errors)
        message = f"{response.status_code} {body.get('code', 'error')}: {fields or detail}"
        return cls(
            message,
            status=response.status_code,
            code=str(body.get("code", "")),
            title=str(body.get("title", "")),
            detail=detail,
            errors=errors,
            request_id=body.get("request_id"),
            problem=body,
        )


class JobFailedError(JagaError):
    """A job that ended ``failed`` or ``cancelled``; ``job`` is its last state."""

    def __init__(self, job: Any) -> None:
        error = job.error or {}
        super().__init__(
            f"job {job.id} {job.status}: {error.get('code', job.status)}: {error.get('message', '')}".rstrip(": "),
            code=str(error.get("code", job.status)),
            detail=str(error.get("message", "")),
            problem=dict(error),
        )
        self.job = job
