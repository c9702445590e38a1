"""Managing API keys: create (the secret is returned once and never stored), list, read, revoke.

A tenant's admin keys manage only that tenant's keys; operators manage every tenant's from the ``jaga`` CLI."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core import auth
from api.core.auth import Scope
from api.core.ids import looks_like
from api.core.models import ApiKey, Tenant, utcnow
from api.core.problems import Problem, field_error
from api.core.settings import Settings
from api.services.lookup import get_owned, list_owned


def create_key(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    scope: Scope,
    rate_limit_per_minute: int | None,
    settings: Settings,
) -> tuple[ApiKey, str]:
    """A new key of the tenant and its secret. A tenant may lower a key's rate limit below the service's
    default but not raise it (that is the operator's, from the CLI): a larger figure is a 422."""
    default = settings.rate_limit_per_minute
    if rate_limit_per_minute is not None and default and rate_limit_per_minute > default:
        raise field_error("rate_limit_per_minute", f"at most {default}, the service's limit per key")
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None  # the caller's key belongs to it
    key, secret = auth.create_key(
        session, tenant_name=tenant.name, name=name, scope=scope, rate_limit_per_minute=rate_limit_per_minute
    )
    session.commit()
    return key, secret


def list_keys(
    session: Session, *, tenant_id: str, after: str | None, limit: int, scope: Scope | None = None
) -> dict[str, object]:
    return list_owned(session, ApiKey, tenant_id=tenant_id, after=after, limit=limit, scope=scope)


def get_key(session: Session, *, tenant_id: str, key_id: str) -> ApiKey:
    return get_owned(session, ApiKey, "key", tenant_id=tenant_id, resource_id=key_id)


def _other_active_admins(session: Session, key: ApiKey) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.tenant_id == key.tenant_id,
                ApiKey.id != key.id,
                ApiKey.scope == "admin",
                ApiKey.revoked_at.is_(None),
            )
        )
        or 0
    )


def revoke(session: Session, key: ApiKey, *, keep_an_admin: bool) -> bool:
    """Revoke ``key`` and commit; the next request with it is a 401. Idempotent: returns whether this call
    revoked it. With ``keep_an_admin``, refuses (409 ``last_admin_key``) to revoke the tenant's last active admin
    key, so the tenant can still manage its keys; the tenant's row is locked meanwhile, so two admin keys
    revoking each other at once cannot both succeed."""
    if key.revoked_at is not None:
        return False
    auth.lock_tenant(session, key.tenant_id)
    session.refresh(key)
    if key.revoked_at is not None:  # revoked while we waited for the lock
        session.commit()
        return False
    if keep_an_admin and key.scope == "admin" and _other_active_admins(session, key) == 0:
        session.rollback()
        raise Problem(
            409,
            "last_admin_key",
            f"key {key.id} is the tenant's last active admin key; create another admin key before revoking it",
        )
    key.revoked_at = utcnow()
    session.commit()
    return True


def revoke_key(session: Session, *, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys (see ``revoke``); a key of another tenant is a 404."""
    key = get_key(session, tenant_id=tenant_id, key_id=key_id)
    revoke(session, key, keep_an_admin=True)
    return key


def find_key(session: Session, key_id: str) -> ApiKey | None:
    """Any tenant's key by id (for operators)."""
    return session.get(ApiKey, key_id) if looks_like("key", key_id) else None


def all_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (of one tenant, if named) with its tenant's name, by tenant then oldest first."""
    stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(stmt)]


def has_active_admin(session: Session, tenant_id: str) -> bool:
    return bool(
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.scope == "admin", ApiKey.revoked_at.is_(None))
        )
    )
