"""Per-tenant quotas on concurrent active jobs and stored bytes.

Checked where jobs and uploads are written, inside the transaction that writes them and after
``api.core.auth.lock_tenant``, so two concurrent requests cannot both take a tenant's last place. A tenant's own
column overrides the service-wide default from the settings; 0 means no limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.models import Dataset, Job, Tenant
from api.core.problems import Problem
from api.core.settings import Settings

#: The ``Retry-After`` of a refusal for too many active jobs: jobs have no predictable end, so a polling interval.
ACTIVE_JOBS_RETRY_AFTER = 30
Quota = Literal["max_active_jobs", "max_stored_bytes"]


class QuotaExceeded(Problem):
    """A refusal naming the quota, its limit and the tenant's usage (also as members of the problem body)."""

    def __init__(self, quota: Quota, *, limit: int, usage: int, requested: int, status: int, detail: str) -> None:
        headers = {"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER)} if status == 429 else {}
        extensions = {"quota": quota, "limit": limit, "usage": usage, "requested": requested}
        super().__init__(
            status, "quota_exceeded", detail, title="Quota exceeded", headers=headers, extensions=extensions
        )
        self.quota, self.limit, self.usage, self.requested = quota, limit, usage, requested


@dataclass(frozen=True)
class Limits:
    max_active_jobs: int
    max_stored_bytes: int


@dataclass(frozen=True)
class Usage:
    active_jobs: int
    stored_bytes: int


def limits_of(tenant: Tenant, settings: Settings) -> Limits:
    """The tenant's quotas: its own where set, else the settings' defaults (0: no limit)."""
    return Limits(
        max_active_jobs=(
            settings.max_active_jobs_per_tenant if tenant.max_active_jobs is None else tenant.max_active_jobs
        ),
        max_stored_bytes=(
            settings.max_stored_bytes_per_tenant if tenant.max_stored_bytes is None else tenant.max_stored_bytes
        ),
    )


def active_jobs(session: Session, tenant_id: str) -> int:
    """Jobs of every kind (ingest included) that are queued, running or cancelling."""
    return (
        session.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(jobs.ACTIVE))
        )
        or 0
    )


def stored_bytes(session: Session, tenant_id: str) -> int:
    """The uploaded archives the tenant's datasets keep (whatever their status) until they are deleted."""
    return int(session.scalar(select(func.sum(Dataset.source_bytes)).where(Dataset.tenant_id == tenant_id)) or 0)


def usage_of(session: Session, tenant_id: str) -> Usage:
    return Usage(active_jobs=active_jobs(session, tenant_id), stored_bytes=stored_bytes(session, tenant_id))


def check_active_jobs(session: Session, *, tenant: Tenant, settings: Settings) -> None:
    """Raise QuotaExceeded (429, Retry-After) if one more active job would pass the tenant's quota."""
    limit = limits_of(tenant, settings).max_active_jobs
    if limit == 0:
        return
    current = active_jobs(session, tenant.id)
    if current + 1 > limit:
        raise QuotaExceeded(
            "max_active_jobs",
            limit=limit,
            usage=current,
            requested=1,
            status=429,
            detail=f"quota max_active_jobs: this tenant has {current} active jobs (queued, running or cancelling) "
            f"of at most {limit}; retry when one has ended, or cancel one",
        )


def check_stored_bytes(session: Session, *, tenant: Tenant, settings: Settings, adding: int) -> None:
    """Raise QuotaExceeded (413) if ``adding`` more uploaded bytes would pass the tenant's quota."""
    limit = limits_of(tenant, settings).max_stored_bytes
    if limit == 0:
        return
    current = stored_bytes(session, tenant.id)
    if current + adding > limit:
        raise QuotaExceeded(
            "max_stored_bytes",
            limit=limit,
            usage=current,
            requested=adding,
            status=413,
            detail=f"quota max_stored_bytes: this tenant stores {current} bytes of uploads of at most {limit}, "
            f"and this upload adds {adding}; delete datasets to make room",
        )


def set_quotas(session: Session, *, tenant_name: str, quotas: dict[Quota, int | None]) -> Tenant:
    """Set ``tenant_name``'s quotas named in ``quotas`` (None: back to the settings' default; 0: no limit).
    Raises LookupError for an unknown tenant, ValueError for a negative value."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise LookupError(f"no tenant {tenant_name!r}")
    for quota, value in quotas.items():
        if value is not None and value < 0:
            raise ValueError(f"{quota} must be 0 (no limit) or more, got {value}")
        setattr(tenant, quota, value)
    session.flush()
    return tenant


def tenant_usage(session: Session, *, tenant_id: str, settings: Settings) -> dict[str, Any]:
    """The tenant's effective quotas (0: no limit) and its usage of them, as ``GET /v1/usage`` answers."""
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None  # the caller's key belongs to it
    limits, usage = limits_of(tenant, settings), usage_of(session, tenant.id)
    return {"tenant": tenant.name, "quotas": asdict(limits), "usage": asdict(usage)}


def describe_tenants(session: Session, settings: Settings) -> list[dict[str, Any]]:
    """Every tenant with its quotas (``own``: its columns, None for the default; ``effective``) and usage."""
    out = []
    for tenant in session.scalars(select(Tenant).order_by(Tenant.name)):
        limits, usage = limits_of(tenant, settings), usage_of(session, tenant.id)
        out.append(
            {
                "id": tenant.id,
                "name": tenant.name,
                "own": {"max_active_jobs": tenant.max_active_jobs, "max_stored_bytes": tenant.max_stored_bytes},
                "effective": asdict(limits),
                "usage": asdict(usage),
            }
        )
    return out
