"""Webhook signatures as the Standard Webhooks scheme (https://www.standardwebhooks.com), the event names, and
the address rules for endpoint URLs.

Standard library only, so a client can import ``verify`` without the service's dependencies::

    from api.core.webhooks import verify
    verify(secret, request.headers, body)  # raises WebhookVerificationError, else returns the parsed payload

A delivery carries ``webhook-id`` (``msg_…``, the same on every retry), ``webhook-timestamp`` (unix seconds of
the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` of ``f"{id}.{timestamp}.{body}"`` keyed with
the base64-decoded part of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"
#: Events an endpoint may subscribe to. ``webhook.test`` is sent on request (``POST /v1/webhooks/{id}/test``)
#: and needs no subscription.
JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.metrics")
TEST_EVENT = "webhook.test"
#: How far a delivery's timestamp may be from the receiver's clock, by default (the Standard Webhooks value).
TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(Exception):
    """The request is not a delivery signed with this secret (or it is too old or too new)."""


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` header's value: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    payload = body.encode() if isinstance(body, str) else body
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed delivery."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload if ``headers`` (any mapping; names are matched case-insensitively) sign
    ``body`` with ``secret`` within ``tolerance_seconds`` of ``now``; else ``WebhookVerificationError``. Any one
    of several space-separated ``v1,`` signatures may match (as when a secret is being rotated)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"missing header {missing.args[0]}") from None
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    try:
        expected = sign(secret, msg_id, timestamp, body).encode()
    except ValueError:
        raise WebhookVerificationError("the secret is not whsec_ and base64") from None
    for candidate in signatures.split(" "):
        version, _, _ = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return json.loads(body)
    raise WebhookVerificationError("no matching signature")


class AddressRefused(ValueError):
    """A URL whose host is missing, does not resolve, or resolves to an address deliveries may not go to."""


def refused_address(address: str) -> bool:
    """Whether deliveries may not go to this IP address unless private addresses are allowed: loopback,
    private, link-local (cloud metadata services), shared, multicast, reserved and unspecified ones."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_address(url: str, *, allow_private: bool) -> None:
    """Raise ``AddressRefused`` when ``url``'s host does not resolve, or (unless ``allow_private``) resolves to
    any address ``refused_address`` refuses. Called when an endpoint is registered and before every delivery."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise AddressRefused("has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError, UnicodeError) as exc:
        raise AddressRefused(f"host {host!r} does not resolve ({exc})") from None
    if allow_private:
        return
    for info in infos:
        address = str(info[4][0])
        if refused_address(address):
            raise AddressRefused(
                f"host {host!r} resolves to {address}, a private, loopback, link-local or reserved address; "
                "set JAGA_WEBHOOK_ALLOW_PRIVATE=true to allow such addresses"
            )
