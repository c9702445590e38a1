"""The webhook outbox: a job event that endpoints subscribe to becomes one delivery row per endpoint, added in
the transaction that writes the event, so a change that commits is delivered and one that rolls back is not.
The API processes' dispatchers (``api.dispatcher``) send them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.ids import new_id
from api.core.models import Job, WebhookDelivery, WebhookEndpoint

#: Job states whose ``state`` events are webhook events (``job.<status>``).
TERMINAL = ("succeeded", "failed", "cancelled")


def webhook_event(type: str, data: dict[str, Any]) -> str | None:
    """The webhook event a job event is, if any: ``job.succeeded|failed|cancelled`` for a terminal state event,
    ``job.metrics`` for a metrics event."""
    if type == "state" and data.get("status") in TERMINAL:
        return f"job.{data['status']}"
    if type == "metrics":
        return "job.metrics"
    return None


def add_deliveries(session: Session, *, job_id: str, type: str, data: dict[str, Any]) -> int:
    """Add a pending delivery of the job event to each of the job's tenant's endpoints subscribed to it.
    Returns how many."""
    event = webhook_event(type, data)
    if event is None:
        return 0
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.events)
        .join(Job, Job.tenant_id == WebhookEndpoint.tenant_id)
        .where(Job.id == job_id)
    ).all()
    added = 0
    for endpoint_id, tenant_id, events in rows:
        if event in (events or []):
            session.add(
                WebhookDelivery(
                    id=new_id("delivery"),
                    endpoint_id=endpoint_id,
                    tenant_id=tenant_id,
                    event_type=event,
                    job_id=job_id,
                    data=data,
                )
            )
            added += 1
    return added
