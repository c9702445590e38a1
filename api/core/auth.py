"""Tenants and API keys. A key is shown once at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.ids import new_id
from api.core.models import ApiKey, Tenant

DEFAULT_TENANT = "default"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session, *, tenant_name: str, name: str = "", scope: str = "write", secret: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant_name`` (creating the tenant if needed). Returns the row and the secret."""
    tenant = get_or_create_tenant(session, tenant_name)
    secret = secret or "jaga_" + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, name=name, key_hash=hash_key(secret), scope=scope)
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
