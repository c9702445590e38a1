"""Webhook deliveries for real: the API (committing, its dispatcher thread running) registers endpoints on a
receiver the test starts on 127.0.0.1, jobs run (``run_job``) or are cancelled, and the receiver gets signed
deliveries, retried on failure, while the jobs never wait for them."""

from __future__ import annotations

import socket
import time

import pytest

from api.core.webhooks import verify
from tests.api.key_factory import scoped_key
from tests.helpers import class_folder_zip
from tests.receiver import Receiver
from tests.worker.helpers import TINY, get_job, submit


@pytest.fixture
def settings(make_settings, clean_database):  # type: ignore[no-untyped-def]
    return make_settings(
        heartbeat_seconds=0.2,
        lease_seconds=5,
        webhook_allow_private=True,  # the receiver is on 127.0.0.1
        webhook_poll_seconds=0.05,
        webhook_retry_seconds=[0.2, 0.2],  # three attempts
        webhook_timeout_seconds=2,
    )


@pytest.fixture
def admin(settings) -> dict[str, str]:
    from api.core.db import session_factory

    return scoped_key(session_factory(settings.database_url), "admin")[1]


def _register(client, admin, url: str, events: list[str]) -> dict:
    r = client.post("/v1/webhooks", headers=admin, json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return r.json()


def _upload(client, admin, n_per_class: int, size: int) -> dict:
    zipped = class_folder_zip(n_per_class=n_per_class, size=size)
    r = client.post("/v1/datasets", headers=admin, files={"file": ("x.zip", zipped)}, data={"name": "d"})
    assert r.status_code == 202, r.text
    return r.json()


def _deliveries(client, admin, webhook_id: str) -> list[dict]:
    return client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin).json()["data"]


def _wait_for_delivery(client, admin, webhook_id: str, status: str) -> dict:
    """The endpoint's newest delivery with ``status``, once there is one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = [d for d in _deliveries(client, admin, webhook_id) if d["status"] == status]
        if got:
            return got[0]
        time.sleep(0.1)
    raise AssertionError(_deliveries(client, admin, webhook_id))


def test_a_finished_job_is_delivered_signed_with_its_metrics(client, admin, run):
    with Receiver() as receiver:
        hook = _register(client, admin, receiver.url, ["job.succeeded", "job.metrics"])
        other = _register(client, admin, receiver.url + "/failed-only", ["job.failed"])
        ds = _upload(client, admin, 8, 16)
        assert run(ds["ingest_job_id"]) == "succeeded"
        job = submit(client, admin, {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1, **TINY})
        assert run(job["id"]) == "succeeded"
        got = receiver.wait_for(
            lambda rs: any(b'"job.succeeded"' in r.body and job["id"].encode() in r.body for r in rs)
        )
    payloads = [verify(hook["secret"], r.headers, r.body) for r in got]  # every one signed with the secret
    assert {r.path for r in got} == {"/hook"}  # nothing for the endpoint that wants failures only
    assert all(r.headers["content-type"] == "application/json" for r in got)
    mine = [p for p in payloads if p["data"]["job"]["id"] == job["id"]]
    succeeded = [p for p in mine if p["type"] == "job.succeeded"]
    assert len(succeeded) == 1
    assert succeeded[0]["data"]["job"]["status"] == "succeeded"
    assert succeeded[0]["data"]["job"]["result"]["model_id"].startswith("mdl_")
    assert succeeded[0]["timestamp"].endswith("Z")
    metrics = [p["data"]["metrics"] for p in mine if p["type"] == "job.metrics"]
    assert any(m.get("epoch") == 1 and "loss" in m for m in metrics)
    ingest = [p for p in payloads if p["data"]["job"]["id"] == ds["ingest_job_id"]]
    assert [p["type"] for p in ingest] == ["job.succeeded"]
    ids = [r.headers["webhook-id"] for r in got]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("msg_") for i in ids)
    delivered = _wait_for_delivery(client, admin, hook["id"], "succeeded")
    assert delivered["response_status_code"] == 200
    assert len(delivered["response_body"]) == 1024  # truncated
    assert delivered["attempts"][0]["status_code"] == 200
    assert _deliveries(client, admin, other["id"]) == []


def test_a_failed_attempt_is_retried_and_both_are_recorded(client, admin):
    with Receiver(statuses=(500, 200)) as receiver:
        hook = _register(client, admin, receiver.url, ["job.cancelled"])
        ds = _upload(client, admin, 2, 8)
        assert client.post(f"/v1/jobs/{ds['ingest_job_id']}/cancel", headers=admin).json()["status"] == "cancelled"
        got = receiver.wait_for(lambda rs: len(rs) >= 2)
        delivery = _wait_for_delivery(client, admin, hook["id"], "succeeded")
    assert [r.headers["webhook-id"] for r in got] == [delivery["id"]] * 2  # the same id on a retry
    assert got[0].body == got[1].body
    for r in got:
        assert verify(hook["secret"], r.headers, r.body)["data"]["job"]["status"] == "cancelled"
    assert delivery["event_type"] == "job.cancelled"
    assert delivery["job_id"] == ds["ingest_job_id"]
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 500), (2, 200)]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert delivery["attempts"][0]["at"] < delivery["attempts"][1]["at"]
    assert delivery["error"] is None
    assert delivery["finished_at"] is not None


def test_a_receiver_that_is_down_never_holds_a_job_up(client, admin, run):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = _register(client, admin, f"http://127.0.0.1:{port}/hook", ["job.succeeded"])
    ds = _upload(client, admin, 2, 8)
    assert run(ds["ingest_job_id"]) == "succeeded"
    assert get_job(client, admin, ds["ingest_job_id"])["status"] == "succeeded"
    delivery = _wait_for_delivery(client, admin, hook["id"], "failed")
    assert len(delivery["attempts"]) == 3  # webhook_retry_seconds has two waits
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in delivery["attempts"])
    assert delivery["next_attempt_at"] is None
