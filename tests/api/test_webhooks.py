"""Webhook endpoints (/v1/webhooks): registration and its refusals, and the Standard Webhooks signature."""

from __future__ import annotations

import base64
import json

import pytest

from api.core.webhooks import (
    WebhookVerificationError,
    check_address,
    headers,
    new_secret,
    refused_address,
    sign,
    verify,
)
from tests.api.key_factory import scoped_key

# The example of the Standard Webhooks reference libraries' tests.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = '{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_standard_webhooks_example():
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    signed = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}
    assert verify(SECRET, signed, BODY, now=TIMESTAMP + 10) == {"test": 2432232314}
    # several signatures (a rotated secret's), header names in any case
    many = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(TIMESTAMP), "Webhook-Signature": f"v1,AAAA {SIGNATURE}"}
    assert verify(SECRET, many, BODY.encode(), now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("change", "now"),
    [
        ({"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"}, TIMESTAMP),
        ({"webhook-signature": "v2," + SIGNATURE[3:]}, TIMESTAMP),
        ({"webhook-id": "msg_other"}, TIMESTAMP),
        ({}, TIMESTAMP + 301),  # too old
        ({}, TIMESTAMP - 301),  # too new
        ({"webhook-timestamp": "soon"}, TIMESTAMP),
    ],
)
def test_verify_refuses_what_the_secret_did_not_sign_now(change, now):
    signed = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE, **change}
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, signed, BODY, now=now)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, {"webhook-id": MSG_ID}, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers(SECRET, MSG_ID, TIMESTAMP, BODY.encode()), BODY, now=TIMESTAMP)


def test_secrets_are_whsec_and_24_or_more_random_bytes():
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert secret != new_secret()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),
        ("224.0.0.1", True),
        ("93.184.215.14", False),
        ("2606:4700::1111", False),
    ],
)
def test_private_addresses_are_refused(address, refused):
    assert refused_address(address) is refused


def test_check_address_resolves_and_names_the_setting():
    from api.core.webhooks import AddressRefused

    check_address("http://127.0.0.1:9/x", allow_private=True)
    with pytest.raises(AddressRefused, match="JAGA_WEBHOOK_ALLOW_PRIVATE"):
        check_address("http://localhost/x", allow_private=False)
    with pytest.raises(AddressRefused, match="does not resolve"):
        check_address("http://no-such-host.invalid/x", allow_private=True)


@pytest.fixture
def admin(db_session) -> dict[str, str]:
    return scoped_key(db_session, "admin")[1]


@pytest.fixture
def private_client(make_settings, db_session):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(
        make_settings(webhook_allow_private=True, webhook_max_endpoints_per_tenant=2), make_session=db_session
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_register_shows_the_secret_once_then_lists_reads_and_deletes(private_client, admin):
    client = private_client
    r = client.post(
        "/v1/webhooks",
        headers=admin,
        json={"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.failed", "job.succeeded"]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"].startswith("wh_")
    assert r.headers["location"] == f"/v1/webhooks/{created['id']}"
    assert r.headers["cache-control"] == "no-store"
    assert created["events"] == ["job.succeeded", "job.failed"]
    assert created["description"] == ""
    secret = created["secret"]
    assert secret.startswith("whsec_")
    shown = client.get(f"/v1/webhooks/{created['id']}", headers=admin)
    listed = client.get("/v1/webhooks", headers=admin)
    assert shown.status_code == 200
    for text in (shown.text, listed.text):
        assert secret not in text
    assert [w["id"] for w in listed.json()["data"]] == [created["id"]]
    assert set(shown.json()) == {"id", "url", "events", "description", "created_at"}
    deliveries = client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=admin).json()
    assert deliveries == {"data": [], "has_more": False, "next_after": None}
    test = client.post(f"/v1/webhooks/{created['id']}/test", headers=admin)
    assert test.status_code == 202, test.text
    assert test.json()["id"].startswith("msg_")
    assert test.json()["event_type"] == "webhook.test"
    assert test.json()["status"] == "pending"
    listed = client.get(f"/v1/webhooks/{created['id']}/deliveries?status=pending", headers=admin).json()["data"]
    assert [d["id"] for d in listed] == [test.json()["id"]]
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 404
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 404


def test_a_tenant_has_at_most_its_cap_of_endpoints_and_sees_only_its_own(private_client, admin, db_session):
    body = {"url": "https://127.0.0.1/hook", "events": ["job.metrics"], "description": "dash"}
    ids = [private_client.post("/v1/webhooks", headers=admin, json=body).json()["id"] for _ in range(2)]
    r = private_client.post("/v1/webhooks", headers=admin, json=body)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "webhook_limit"
    assert "JAGA_WEBHOOK_MAX_ENDPOINTS_PER_TENANT" in r.json()["detail"]
    other = scoped_key(db_session, "admin", tenant="globex")[1]
    assert private_client.get("/v1/webhooks", headers=other).json()["data"] == []
    assert private_client.get(f"/v1/webhooks/{ids[0]}", headers=other).status_code == 404
    assert private_client.get(f"/v1/webhooks/{ids[0]}/deliveries", headers=other).status_code == 404


def test_webhooks_need_an_admin_key(client, db_session):
    for scope in ("read", "write"):
        headers = scoped_key(db_session, scope)[1]
        assert client.get("/v1/webhooks", headers=headers).status_code == 403
        r = client.post(
            "/v1/webhooks", headers=headers, json={"url": "https://93.184.215.14/", "events": ["job.failed"]}
        )
        assert r.status_code == 403


def test_a_public_address_is_taken_by_default(client, admin):
    r = client.post("/v1/webhooks", headers=admin, json={"url": "https://93.184.215.14/h", "events": ["job.failed"]})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://93.184.215.14/x", "events": ["job.failed"]}, "url", "http or https"),
        ({"url": "file:///etc/passwd", "events": ["job.failed"]}, "url", "http or https"),
        ({"url": "http:///x", "events": ["job.failed"]}, "url", "no host"),
        ({"url": "http://127.0.0.1/x", "events": ["job.failed"]}, "url", "JAGA_WEBHOOK_ALLOW_PRIVATE"),
        ({"url": "http://169.254.169.254/latest", "events": ["job.failed"]}, "url", "JAGA_WEBHOOK_ALLOW_PRIVATE"),
        ({"url": "http://[::1]:8000/x", "events": ["job.failed"]}, "url", "JAGA_WEBHOOK_ALLOW_PRIVATE"),
        ({"url": "http://no-such-host.invalid/x", "events": ["job.failed"]}, "url", "does not resolve"),
        ({"url": "https://93.184.215.14/" + "x" * 2048, "events": ["job.failed"]}, "url", "2048"),
        ({"url": "https://93.184.215.14/", "events": ["job.done"]}, "events", "job.succeeded, job.failed"),
        ({"url": "https://93.184.215.14/", "events": []}, "events", ""),
        ({"url": "https://93.184.215.14/", "events": ["job.failed"], "description": "d" * 501}, "description", "500"),
        ({"url": "https://93.184.215.14/", "events": ["job.failed"], "secret": "mine"}, "secret", "unknown"),
        ({"events": ["job.failed"]}, "url", ""),
    ],
)
def test_bad_registrations_are_422_naming_the_field(client, admin, body, field, says):
    r = client.post("/v1/webhooks", headers=admin, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    [error] = [e for e in r.json()["errors"] if e["field"] == field]
    assert says in error["reason"]
    assert client.get("/v1/webhooks", headers=admin).json()["data"] == []


def test_deliveries_of_an_unknown_endpoint_are_404(client, admin):
    assert client.get("/v1/webhooks/wh_000000000000000000000000/deliveries", headers=admin).status_code == 404
    assert client.post("/v1/webhooks/nope/test", headers=admin).status_code == 404
    assert json.loads(client.get("/v1/webhooks?after=bad", headers=admin).text)["errors"][0]["field"] == "after"


def _test_delivery(private_client, admin) -> str:
    hook = private_client.post(
        "/v1/webhooks", headers=admin, json={"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}
    ).json()
    return str(private_client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin).json()["id"])


def test_one_dispatcher_claims_an_attempt_and_fixes_its_body(private_client, admin, db_session, settings):
    """Two dispatchers (two API processes) see the same due delivery: only the first claim holds. (This test's
    rows are never committed, so the app's own dispatcher cannot see them.)"""
    from api.dispatcher import claim

    delivery_id = _test_delivery(private_client, admin)
    with db_session() as s:
        first = claim(s, delivery_id, hold_seconds=60)
        s.commit()
    with db_session() as s:
        second = claim(s, delivery_id, hold_seconds=60)
    assert first is not None
    assert second is None
    assert first.attempt == 1
    body = json.loads(first.body)
    assert body["type"] == "webhook.test"
    assert body["data"] == {"endpoint_id": body["data"]["endpoint_id"]}
    with db_session() as s:
        from api.core.models import WebhookDelivery

        assert s.get(WebhookDelivery, delivery_id).payload == first.body.decode()  # retries send the same body


def test_the_address_is_checked_again_when_sending(private_client, admin, db_session, make_settings):
    """An endpoint registered while private addresses were allowed (or whose name now resolves elsewhere) is
    refused at delivery time, and the attempt says why."""
    from api.dispatcher import claim, make_client, record, send

    delivery_id = _test_delivery(private_client, admin)
    strict = make_settings(webhook_retry_seconds=[])
    with db_session() as s:
        claimed = claim(s, delivery_id, hold_seconds=60)
        s.commit()
    assert claimed is not None
    with make_client(strict) as http:
        result = send(http, claimed, strict)
    assert result.status_code is None
    assert "address refused" in (result.error or "")
    assert "JAGA_WEBHOOK_ALLOW_PRIVATE" in (result.error or "")
    with db_session() as s:
        assert record(s, claimed, result, strict) == "failed"  # no retries left
        s.commit()
    with db_session() as s:
        assert record(s, claimed, result, strict) is None  # the claim is spent
