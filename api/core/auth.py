"""Tenants and API keys. A key is shown once at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from api.core.ids import new_id
from api.core.models import ApiKey, Tenant, utcnow

DEFAULT_TENANT = "default"
#: Each scope may do what the ones before it may.
Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
#: ``last_used_at`` is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def has_scope(key: ApiKey, needed: Scope) -> bool:
    """Whether ``key``'s scope includes ``needed`` (an unknown stored scope includes nothing)."""
    return key.scope in SCOPES and SCOPES.index(key.scope) >= SCOPES.index(needed)  # type: ignore[arg-type]


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def lock_tenant(session: Session, tenant_id: str) -> Tenant:
    """Lock the tenant's row until the transaction ends (serialising quota checks and key revocations) and
    return it freshly read. Raises LookupError for an unknown tenant.

    A no-op UPDATE rather than SELECT … FOR UPDATE because it locks on both backends: the row on PostgreSQL (at
    FOR NO KEY UPDATE strength, so inserts that reference the tenant are not blocked) and the database's write
    lock on SQLite, which ignores FOR UPDATE."""
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(max_active_jobs=Tenant.max_active_jobs)
        .execution_options(synchronize_session=False)
    )
    tenant = session.get(Tenant, tenant_id, populate_existing=True)
    if tenant is None:
        raise LookupError(f"no tenant {tenant_id!r}")
    return tenant


def create_key(
    session: Session,
    *,
    tenant_name: str,
    name: str = "",
    scope: str = "write",
    rate_limit_per_minute: int | None = None,
    secret: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant_name`` (creating the tenant if needed). Returns the row and the secret.

    Raises ValueError for a scope not in ``SCOPES`` or a negative rate limit."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 0:
        raise ValueError(f"rate_limit_per_minute must be 0 (no limit) or more, got {rate_limit_per_minute}")
    tenant = get_or_create_tenant(session, tenant_name)
    secret = secret or "jaga_" + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        name=name,
        key_hash=hash_key(secret),
        scope=scope,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    session.add(key)
    session.flush()
    return key, secret


def ensure_bootstrap_key(session: Session, secret: str) -> None:
    """Make ``secret`` an admin key of the default tenant, once."""
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))) is None:
        create_key(session, tenant_name=DEFAULT_TENANT, name="bootstrap", scope="admin", secret=secret)


def authenticate(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def record_use(session: Session, key: ApiKey, now: datetime | None = None) -> bool:
    """Set ``key.last_used_at`` to ``now`` unless it is less than a minute old; commits when it writes. Returns
    whether it wrote. The UPDATE is conditional, so concurrent requests (or API processes) write once."""
    now = now or utcnow()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return False
    written = session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if written:
        set_committed_value(key, "last_used_at", now)
    return bool(written)
