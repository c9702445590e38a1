"""A tenant's webhook endpoints (register, list, read, delete, send a test event) and their deliveries."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.auth import lock_tenant
from api.core.ids import new_id
from api.core.models import WebhookDelivery, WebhookEndpoint
from api.core.problems import Problem, field_error
from api.core.settings import Settings
from api.core.webhooks import JOB_EVENTS, TEST_EVENT, AddressRefused, check_address, new_secret
from api.services.lookup import get_owned, list_owned, paginate


def _check_url(url: str, settings: Settings) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise field_error("url", f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise field_error("url", f"scheme must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise field_error("url", "has no host")
    try:
        check_address(url, allow_private=settings.webhook_allow_private)
    except AddressRefused as exc:
        raise field_error("url", str(exc)) from None


def _check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in JOB_EVENTS]
    if unknown:
        raise field_error("events", f"unknown event(s) {', '.join(unknown)}; valid: {', '.join(JOB_EVENTS)}")
    return list(dict.fromkeys(events))


def create_webhook(
    session: Session, *, tenant_id: str, url: str, events: list[str], description: str, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its signing secret (shown once). 422 naming ``url`` or ``events``;
    409 ``webhook_limit`` past ``webhook_max_endpoints_per_tenant``."""
    events = _check_events(events)
    _check_url(url, settings)
    try:
        lock_tenant(session, tenant_id)  # two registrations at once cannot both pass the cap
        count = session.scalar(
            select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
        )
        cap = settings.webhook_max_endpoints_per_tenant
        if (count or 0) >= cap:
            raise Problem(
                409,
                "webhook_limit",
                f"the tenant has {count} webhook endpoints, the most it may have (JAGA_WEBHOOK_MAX_ENDPOINTS_PER_TENANT"
                f"={cap}); delete one first",
            )
        secret = new_secret()
        endpoint = WebhookEndpoint(
            id=new_id("webhook"), tenant_id=tenant_id, url=url, events=events, description=description, secret=secret
        )
        session.add(endpoint)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return endpoint, secret


def list_webhooks(session: Session, *, tenant_id: str, after: str | None, limit: int) -> dict[str, object]:
    return list_owned(session, WebhookEndpoint, tenant_id=tenant_id, after=after, limit=limit)


def get_webhook(session: Session, *, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, "webhook", tenant_id=tenant_id, resource_id=webhook_id)


def delete_webhook(session: Session, *, tenant_id: str, webhook_id: str) -> None:
    """Delete an endpoint and its deliveries; pending ones are not sent."""
    endpoint = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    session.delete(endpoint)
    session.commit()


def list_deliveries(
    session: Session,
    *,
    tenant_id: str,
    webhook_id: str,
    after: str | None,
    limit: int,
    status: str | None = None,
) -> dict[str, object]:
    """The endpoint's deliveries, newest first."""
    get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == webhook_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    rows, has_more = paginate(session, stmt, WebhookDelivery.id, after=after, limit=limit)
    return {"data": rows, "has_more": has_more, "next_after": rows[-1].id if has_more else None}


def send_test(session: Session, *, tenant_id: str, webhook_id: str) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to the endpoint (whatever it subscribes to)."""
    endpoint = get_webhook(session, tenant_id=tenant_id, webhook_id=webhook_id)
    delivery = WebhookDelivery(
        id=new_id("delivery"), endpoint_id=endpoint.id, tenant_id=tenant_id, event_type=TEST_EVENT, data={}
    )
    session.add(delivery)
    session.commit()
    return delivery
