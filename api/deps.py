"""FastAPI dependencies and shared query parameters as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.auth import authenticate
from api.core.models import ApiKey
from api.core.problems import Problem
from api.core.settings import Settings
from api.services.lookup import MAX_LIMIT


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
#: The ``limit`` of every list.
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="jaga"'})


def current_key(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    if not authorization:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("Authorization header must be 'Bearer <key>'")
    key = authenticate(session, secret.strip())
    if key is None:
        raise _unauthorized("invalid or revoked API key")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def current_tenant_id(key: CurrentKey) -> str:
    return key.tenant_id


TenantId = Annotated[str, Depends(current_tenant_id)]
