"""Webhook endpoints of the caller's tenant and their deliveries; every route needs an ``admin`` key (an endpoint
sends the tenant's job data to a URL of its choosing)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from api.core.models import WebhookDelivery, WebhookEndpoint
from api.deps import AdminKey, PageLimit, SessionDep, SettingsDep
from api.openapi import problems
from api.schemas import Cursor, DeliveryOut, Page, WebhookCreate, WebhookCreatedOut, WebhookOut
from api.services import webhooks as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=problems(403))


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreatedOut,
    responses={**problems(400, 413, 422), 409: problems(409)[409] | {"description": "The tenant's endpoint cap"}},
)
def create_webhook(
    body: WebhookCreate, response: Response, session: SessionDep, admin: AdminKey, settings: SettingsDep
) -> dict[str, object]:
    """Register an endpoint for job events. The ``secret`` that signs its deliveries (Standard Webhooks:
    ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` headers) is in this response only."""
    endpoint, secret = service.create_webhook(
        session,
        tenant_id=admin.tenant_id,
        url=body.url,
        events=body.events,
        description=body.description,
        settings=settings,
    )
    response.headers["Location"] = f"/v1/webhooks/{endpoint.id}"
    response.headers["Cache-Control"] = "no-store"
    return {**WebhookOut.model_validate(endpoint).model_dump(), "secret": secret}


@router.get("", response_model=Page[WebhookOut], responses=problems(422))
def list_webhooks(
    session: SessionDep, admin: AdminKey, after: Cursor = None, limit: PageLimit = 50
) -> dict[str, object]:
    """The tenant's endpoints, newest first."""
    return service.list_webhooks(session, tenant_id=admin.tenant_id, after=after, limit=limit)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=problems(404))
def read_webhook(webhook_id: str, session: SessionDep, admin: AdminKey) -> WebhookEndpoint:
    return service.get_webhook(session, tenant_id=admin.tenant_id, webhook_id=webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses=problems(404))
def delete_webhook(webhook_id: str, session: SessionDep, admin: AdminKey) -> Response:
    """Delete an endpoint with its deliveries; those still pending are not sent."""
    service.delete_webhook(session, tenant_id=admin.tenant_id, webhook_id=webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut], responses=problems(404, 422))
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    admin: AdminKey,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    after: Cursor = None,
    limit: PageLimit = 50,
) -> dict[str, object]:
    """The endpoint's deliveries, newest first, each with its attempts and the last answer."""
    return service.list_deliveries(
        session, tenant_id=admin.tenant_id, webhook_id=webhook_id, after=after, limit=limit, status=status
    )


@router.post("/{webhook_id}/test", status_code=202, response_model=DeliveryOut, responses=problems(404))
def send_test(webhook_id: str, session: SessionDep, admin: AdminKey) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to the endpoint; follow it in its deliveries."""
    return service.send_test(session, tenant_id=admin.tenant_id, webhook_id=webhook_id)
