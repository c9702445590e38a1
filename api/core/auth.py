"""Tenants and API keys. A key is shown once at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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


class KeyCache:
    """Keys found by ``authenticate`` in this process, by the hash of their secret, for ``ttl`` seconds: a poll
    then needs no database round trip to authenticate. Only keys that were valid are kept (an unknown secret
    always reaches the database, so guessing cannot fill the cache), at most ``capacity`` of them. A key revoked
    through this process is forgotten at once (``forget``); one revoked elsewhere (the CLI, another API process)
    is refused at most ``ttl`` seconds later. ``ttl`` 0 turns the cache off."""

    def __init__(self, ttl: float, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            found = self._items.get(key_hash)
            if found is None:
                return None
            if self.clock() >= found[0]:
                del self._items[key_hash]
                return None
            return found[1]

    def put(self, key: ApiKey) -> None:
        """Keep ``key`` (detached from its session: its loaded columns stay readable) until the TTL passes."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[key.key_hash] = (self.clock() + self.ttl, key)
            self._items.move_to_end(key.key_hash)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop the key with id ``key_id`` (after a revocation), so its next request reads the database."""
        with self._lock:
            for key_hash in [h for h, (_, k) in self._items.items() if k.id == key_id]:
                del self._items[key_hash]


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
