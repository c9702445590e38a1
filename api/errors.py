"""Every error leaves as ``application/problem+json`` (RFC 9457) with a stable ``code``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import logs
from api.core.problems import Problem, invalid, validation_errors
from api.json_body import malformed_json

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    body = problem.body(request.url.path)
    if (rid := logs.current().get("request_id")) is not None:  # to quote when reporting a problem; also in X-Request-ID
        body["request_id"] = rid
    return JSONResponse(body, status_code=problem.status, media_type=PROBLEM, headers=problem.headers)


def _problem_cause(exc: BaseException) -> Problem | None:
    """The Problem behind ``exc``, also when a task group wrapped it in an ExceptionGroup."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        problems = [e for e in cause.exceptions if isinstance(e, Problem)]
        return problems[0] if problems else None
    return cause if isinstance(cause, Problem) else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if broken is not None:  # as the routes that read JSON by hand say it (api.json_body)
            return problem_response(malformed_json(f"is not valid JSON ({broken.get('msg', 'invalid')})"), request)
        return problem_response(invalid(validation_errors(exc.errors())), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = _problem_cause(exc)
        if cause is not None:  # FastAPI turns errors raised while reading the body into a 400
            return problem_response(cause, request)
        if exc.status_code == 400 and "json" in request.headers.get("content-type", ""):  # undecodable or too deep
            return problem_response(
                malformed_json("could not be read as JSON (not UTF-8, or nested too deeply)"), request
            )
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return problem_response(
            Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})), request
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            Problem(500, "internal_error", "an unexpected error occurred; it has been logged"), request
        )
