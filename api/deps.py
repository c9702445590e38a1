"""FastAPI dependencies and shared query parameters as ``Annotated`` aliases.

Every authenticated route depends on ``current_key``, which also enforces what applies to every request: the
key's scope against the request's method (a read key only reads), and the key's rate limit.

The dependencies that do no I/O are ``async``: a sync one costs a trip to the thread pool on every request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.security.http import HTTPAuthorizationCredentials, HTTPBase
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from api import logs
from api.core.artifacts import ArtifactStore
from api.core.auth import LAST_USED_RESOLUTION, KeyCache, Scope, authenticate, has_scope, hash_key, record_use
from api.core.models import ApiKey, utcnow
from api.core.problems import Problem
from api.core.ratelimit import RateLimiter
from api.core.settings import Settings
from api.services.lookup import MAX_LIMIT

#: Methods that change nothing.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where ``api.gate.AuthorizeFirst`` leaves the key of a request it has authorised, on the ASGI scope.
AUTHORIZED_KEY = "jaga.authorized_key"
#: POST routes that only compute an answer from the request (images in the body) and store nothing, so a read
#: key may call them: serving embeddings, predictions and search is what a read-only client is for.
READ_ONLY_POSTS = frozenset(
    {"/v1/models/{model_id}/embeddings", "/v1/models/{model_id}/predictions", "/v1/indexes/{index_id}/search"}
)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for the request; it connects on first use (in the route's thread), so making it is no I/O."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        if session.in_transaction():  # returning its connection rolls back: I/O, kept off the event loop
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
#: The ``limit`` of every list.
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or depends_on(d, call) for d in dependant.dependencies)


def required_scope(method: str, route: object) -> Scope:
    """The scope a request needs: ``admin`` where the route depends on ``admin_key``, else by its method (and
    ``READ_ONLY_POSTS``)."""
    dependant = getattr(route, "dependant", None)
    if dependant is not None and depends_on(dependant, admin_key):
        return "admin"
    if method in READ_METHODS or (method == "POST" and getattr(route, "path", None) in READ_ONLY_POSTS):
        return "read"
    return "write"


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="jaga"'})


def forbidden(key: ApiKey, needed: Scope) -> Problem:
    return Problem(
        403, "forbidden", f"this request needs a key with scope '{needed}' or above; this key's scope is '{key.scope}'"
    )


def rate_limit_of(key: ApiKey, settings: Settings) -> int:
    """The key's requests a minute: its own where set, else the service's (0: no limit)."""
    return settings.rate_limit_per_minute if key.rate_limit_per_minute is None else key.rate_limit_per_minute


def _check_rate(limiter: RateLimiter, key: ApiKey, settings: Settings) -> None:
    per_minute = rate_limit_of(key, settings)
    if per_minute == 0:  # no limit
        return
    decision = limiter.take(key.id, per_minute)
    if not decision.allowed:
        raise Problem(
            429,
            "rate_limited",
            f"this key may make {per_minute} requests a minute; retry in {decision.retry_after} s",
            headers={
                "Retry-After": str(decision.retry_after),
                "RateLimit-Limit": str(decision.limit),
                "RateLimit-Remaining": str(decision.remaining),
                "RateLimit-Reset": str(decision.reset),
            },
        )


#: How a request sends its key, as the OpenAPI document shows it; ``current_key`` answers every failure itself.
bearer = HTTPBase(
    scheme="bearer", scheme_name="bearer", description="an API key: 'Authorization: Bearer <key>'", auto_error=False
)


def _look_up_key(make_session: sessionmaker[Session], secret: str) -> ApiKey | None:
    """``authenticate`` in a session of its own (the key outlives it, detached, in the key cache)."""
    with make_session() as session:
        key = authenticate(session, secret)
        if key is not None:
            record_use(session, key)
    return key


def _record_use(make_session: sessionmaker[Session], key: ApiKey) -> None:
    with make_session() as session:
        record_use(session, key)


async def authorize(state: State, authorization: str | None, method: str, route: object) -> ApiKey:
    """The key of a request with this ``Authorization`` header, method and matched route: 401 when missing,
    wrong or revoked, 429 over its rate limit, 403 when its scope does not cover the request. A key seen in the
    last ``auth_cache_seconds`` is taken from this process's cache. ``state`` is the app's."""
    if not authorization:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, secret = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not secret:
        raise _unauthorized("Authorization header must be 'Bearer <key>'")
    cache: KeyCache = state.key_cache
    key = cache.get(hash_key(secret))
    if key is None:
        key = await run_in_threadpool(_look_up_key, state.sessionmaker, secret)
        if key is None:
            raise _unauthorized("invalid or revoked API key")
        cache.put(key)
    elif key.last_used_at is None or utcnow() - key.last_used_at >= LAST_USED_RESOLUTION:
        await run_in_threadpool(_record_use, state.sessionmaker, key)
    logs.bind(tenant_id=key.tenant_id)
    _check_rate(state.rate_limiter, key, state.settings)
    needed = required_scope(method, route)
    if not has_scope(key, needed):
        raise forbidden(key, needed)
    return key


async def current_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],  # for the OpenAPI document
) -> ApiKey:
    """The request's key (``authorize``), unless ``api.gate.AuthorizeFirst`` has authorised the request already."""
    key: ApiKey | None = request.scope.get(AUTHORIZED_KEY)
    if key is not None:
        return key
    return await authorize(
        request.app.state, request.headers.get("authorization"), request.method, request.scope.get("route")
    )


CurrentKey = Annotated[ApiKey, Depends(current_key)]


async def admin_key(key: CurrentKey) -> ApiKey:
    """The request's key if its scope is ``admin`` (``current_key`` checks that first, as ``required_scope`` sees
    this dependency), else 403."""
    if not has_scope(key, "admin"):
        raise forbidden(key, "admin")
    return key


AdminKey = Annotated[ApiKey, Depends(admin_key)]


async def current_tenant_id(key: CurrentKey) -> str:
    return key.tenant_id


TenantId = Annotated[str, Depends(current_tenant_id)]
