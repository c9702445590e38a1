"""API keys of the caller's tenant; every route needs an ``admin`` key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.core.auth import Scope
from api.core.models import ApiKey
from api.deps import AdminKey, PageLimit, SessionDep, SettingsDep
from api.openapi import problem, problems
from api.schemas import Cursor, KeyCreate, KeyCreatedOut, KeyOut, Page
from api.services import keys as service

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=problems(403))


@router.post("", status_code=201, response_model=KeyCreatedOut, responses=problems(400, 413, 422))
def create_key(
    body: KeyCreate, response: Response, session: SessionDep, admin: AdminKey, settings: SettingsDep
) -> dict[str, object]:
    """Create a key. Its ``secret`` is in this response only: it is stored hashed and cannot be shown again."""
    key, secret = service.create_key(
        session,
        tenant_id=admin.tenant_id,
        name=body.name,
        scope=body.scope,
        rate_limit_per_minute=body.rate_limit_per_minute,
        settings=settings,
    )
    response.headers["Location"] = f"/v1/keys/{key.id}"
    response.headers["Cache-Control"] = "no-store"
    return {**KeyOut.model_validate(key).model_dump(), "secret": secret}


@router.get("", response_model=Page[KeyOut], responses=problems(422))
def list_keys(
    session: SessionDep, admin: AdminKey, scope: Scope | None = None, after: Cursor = None, limit: PageLimit = 50
) -> dict[str, object]:
    """The tenant's keys, revoked ones included, newest first; ``scope`` keeps one scope."""
    return service.list_keys(session, tenant_id=admin.tenant_id, after=after, limit=limit, scope=scope)


@router.get("/{key_id}", response_model=KeyOut, responses=problems(404))
def read_key(key_id: str, session: SessionDep, admin: AdminKey) -> ApiKey:
    return service.get_key(session, tenant_id=admin.tenant_id, key_id=key_id)


@router.post(
    "/{key_id}/revoke",
    response_model=KeyOut,
    responses={**problems(404), **problem(409, "The key is the tenant's last active admin key")},
)
def revoke_key(key_id: str, request: Request, session: SessionDep, admin: AdminKey) -> ApiKey:
    """Revoke a key: from now on it is refused (401). Revoking a revoked key changes nothing. The tenant's last
    active admin key cannot be revoked (409 ``last_admin_key``)."""
    key = service.revoke_key(session, tenant_id=admin.tenant_id, key_id=key_id)
    request.app.state.key_cache.forget(key.id)  # other API processes' caches let it go within their TTL
    return key
