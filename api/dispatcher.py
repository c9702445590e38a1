"""The webhook dispatcher: a thread in each API process that sends due deliveries (``webhook_deliveries`` rows,
added by ``api.core.outbox``), signed as ``api.core.webhooks`` describes.

Several API processes may run one each: a dispatcher *claims* a delivery before each attempt with a conditional
UPDATE (pending, due, and the attempt count it read), which moves ``next_attempt_at`` past the attempt's
timeout, so no two send the same attempt; one that dies mid-attempt leaves the delivery to be retried once that
time has passed. An attempt's result is written only while the claim still holds (same attempt count).

A 2xx answer is success; anything else (other statuses, redirects, which are not followed, timeouts, refused
addresses) is a failed attempt, retried after ``webhook_retry_seconds`` (±20 % jitter) until they run out. Jobs
never wait for any of it."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.core.db import session_scope
from api.core.models import Job, WebhookDelivery, WebhookEndpoint, utcnow
from api.core.settings import Settings
from api.core.webhooks import TEST_EVENT, AddressRefused, check_address, headers
from api.schemas import JobOut

log = logging.getLogger(__name__)
#: Bytes of a response body kept with the delivery.
RESPONSE_BODY_LIMIT = 1024
#: Characters of an error kept.
ERROR_LIMIT = 500
USER_AGENT = "Jaga-Webhooks/1"


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one attempt, with what sending it needs."""

    id: str
    attempt: int
    url: str
    secret: str
    body: bytes
    attempts: list[dict[str, Any]]


def _iso(value: Any) -> str:
    return str(value.isoformat().replace("+00:00", "Z"))


def build_payload(session: Session, delivery: WebhookDelivery) -> str:
    """The body of a delivery: ``{"type", "timestamp" (of the event), "data"}``; ``data.job`` is the job as
    ``GET /v1/jobs/{id}`` shows it when the first attempt is made, ``data.metrics`` a metrics event's values."""
    data: dict[str, Any] = {}
    if delivery.job_id is not None:
        job = session.get(Job, delivery.job_id)
        data["job"] = None if job is None else JobOut.model_validate(job).model_dump(mode="json")
    if delivery.event_type == "job.metrics":
        data["metrics"] = delivery.data
    if delivery.event_type == TEST_EVENT:
        data["endpoint_id"] = delivery.endpoint_id
    body = {"type": delivery.event_type, "timestamp": _iso(delivery.created_at), "data": data}
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def due_deliveries(session: Session, *, limit: int) -> list[str]:
    """Ids of pending deliveries whose next attempt is due, most overdue first."""
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )


def claim(session: Session, delivery_id: str, *, hold_seconds: float) -> Claimed | None:
    """Claim a due delivery for one attempt (the caller commits), fixing its body on the first; None when another
    dispatcher claimed it first, it is no longer due, or its endpoint is gone."""
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    now = utcnow()
    if row is None or row.status != "pending" or row.next_attempt_at is None or row.next_attempt_at > now:
        return None
    attempt = row.attempt_count + 1
    res = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempt_count == row.attempt_count,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempt_count=attempt, next_attempt_at=now + timedelta(seconds=hold_seconds))
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    endpoint = session.get(WebhookEndpoint, row.endpoint_id)
    if endpoint is None:
        return None
    if row.payload is None:
        payload = build_payload(session, row)
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(payload=payload))
    else:
        payload = row.payload
    return Claimed(row.id, attempt, endpoint.url, endpoint.secret, payload.encode(), list(row.attempts or []))


@dataclass(frozen=True)
class Result:
    status_code: int | None
    body: str | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def send(client: httpx.Client, claimed: Claimed, settings: Settings) -> Result:
    """Make one attempt: check the URL's addresses now (DNS may have changed since it was registered), POST the
    signed body, read at most ``RESPONSE_BODY_LIMIT`` bytes of the answer."""
    start = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - start) * 1000, 1)

    try:
        check_address(claimed.url, allow_private=settings.webhook_allow_private)
    except AddressRefused as exc:
        return Result(None, None, f"address refused: {exc}"[:ERROR_LIMIT], took())
    signed = headers(claimed.secret, claimed.id, int(time.time()), claimed.body)
    request_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **signed}
    try:
        with client.stream("POST", claimed.url, content=claimed.body, headers=request_headers) as response:
            kept = bytearray()
            for chunk in response.iter_raw():
                kept += chunk[: RESPONSE_BODY_LIMIT - len(kept)]
                if len(kept) >= RESPONSE_BODY_LIMIT:
                    break
            error = None
            if response.is_redirect:
                error = f"redirect to {response.headers.get('location', '?')!r} not followed"[:ERROR_LIMIT]
            elif not response.is_success:
                error = f"HTTP {response.status_code}"
            return Result(response.status_code, kept.decode("utf-8", "replace"), error, took())
    except httpx.HTTPError as exc:
        return Result(None, None, f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT], took())


def record(session: Session, claimed: Claimed, result: Result, settings: Settings) -> str | None:
    """Write an attempt's result while the claim holds; returns the delivery's status then (None: the claim was
    lost, or the endpoint deleted, and nothing was written)."""
    now = utcnow()
    attempts = [
        *claimed.attempts,
        {
            "attempt": claimed.attempt,
            "at": _iso(now),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
        },
    ]
    values: dict[str, Any] = {
        "attempts": attempts,
        "response_status_code": result.status_code,
        "response_body": result.body,
        "error": result.error,
        "duration_ms": result.duration_ms,
    }
    schedule = settings.webhook_retry_seconds
    if result.ok:
        values.update(status="succeeded", next_attempt_at=None, finished_at=now)
    elif claimed.attempt > len(schedule):
        values.update(status="failed", next_attempt_at=None, finished_at=now)
    else:
        delay = schedule[claimed.attempt - 1] * random.uniform(0.8, 1.2)
        values.update(next_attempt_at=now + timedelta(seconds=delay))
    res = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempt_count == claimed.attempt,
        )
        .values(**values)
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    return str(values.get("status", "pending"))


def deliver(claimed: Claimed, settings: Settings, client: httpx.Client) -> str | None:
    result = send(client, claimed, settings)
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        status = record(s, claimed, result, settings)
    if not result.ok:
        log.info("webhook delivery %s attempt %d failed: %s", claimed.id, claimed.attempt, result.error)
    return status


def hold_seconds(settings: Settings) -> float:
    """How long a claim keeps others off an attempt: past its timeout (connect, write, read), with a margin."""
    return settings.webhook_timeout_seconds * 3 + 30


def dispatch_once(settings: Settings, client: httpx.Client, pool: ThreadPoolExecutor | None = None) -> int:
    """Claim up to ``webhook_batch_size`` due deliveries and make one attempt at each (on ``pool`` if given).
    Returns how many were claimed."""
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        ids = due_deliveries(s, limit=settings.webhook_batch_size)
    claimed: list[Claimed] = []
    for delivery_id in ids:
        with session_scope(settings.database_url, settings.db_pool_size) as s:
            c = claim(s, delivery_id, hold_seconds=hold_seconds(settings))
        if c is not None:
            claimed.append(c)
    if pool is None:
        for c in claimed:
            deliver(c, settings, client)
    else:
        for future in [pool.submit(deliver, c, settings, client) for c in claimed]:
            future.result()
    return len(claimed)


def make_client(settings: Settings) -> httpx.Client:
    """No redirects followed, no proxies from the environment, no cookies kept between endpoints."""
    return httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False)


class Dispatcher:
    """``dispatch_once`` every ``webhook_poll_seconds`` on a daemon thread (at once again after a full batch); a
    failed pass (database down) is logged and retried."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="jaga-webhooks")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _loop(self) -> None:
        settings = self.settings
        with make_client(settings) as client, ThreadPoolExecutor(settings.webhook_concurrency) as pool:
            wait = settings.webhook_poll_seconds
            while not self._stop.wait(wait):
                try:
                    claimed = dispatch_once(settings, client, pool)
                except Exception:  # keep going; an outage is logged and retried
                    log.warning("webhook dispatch failed", exc_info=True)
                    claimed = 0
                wait = 0 if claimed >= settings.webhook_batch_size else settings.webhook_poll_seconds
