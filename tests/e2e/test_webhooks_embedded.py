"""Webhooks under `jaga serve` (SQLite, its own migration, the dispatcher in the served API process): a job's end
reaches a receiver the test runs on 127.0.0.1, signed with the endpoint's secret."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from api.core.webhooks import verify
from tests.helpers import class_folder_zip, wait_for_job
from tests.receiver import Receiver
from tests.servers import HEADERS, Server

pytestmark = pytest.mark.e2e


def test_served_jobs_are_delivered_to_a_registered_endpoint(tmp_path: Path):
    env = {"JAGA_WEBHOOK_ALLOW_PRIVATE": "true", "JAGA_WEBHOOK_POLL_SECONDS": "0.2"}
    server = Server(tmp_path / "jaga-data", tmp_path / "serve.log", env=env)
    try:
        with Receiver() as receiver, httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            r = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["job.succeeded", "job.failed"]})
            assert r.status_code == 201, r.text
            hook = r.json()
            zipped = class_folder_zip(n_per_class=4, size=8)
            ds = c.post("/v1/datasets", files={"file": ("d.zip", zipped)}, data={"name": "hooks"}).json()
            assert wait_for_job(c, ds["ingest_job_id"], timeout=300)["status"] == "succeeded"
            [got] = receiver.wait_for(lambda rs: len(rs) >= 1)
            payload = verify(hook["secret"], got.headers, got.body)
            assert payload["type"] == "job.succeeded"
            assert payload["data"]["job"]["id"] == ds["ingest_job_id"]
            assert payload["data"]["job"]["status"] == "succeeded"
            assert c.post(f"/v1/webhooks/{hook['id']}/test").status_code == 202
            test = receiver.wait_for(lambda rs: len(rs) >= 2)[1]
            assert verify(hook["secret"], test.headers, test.body)["type"] == "webhook.test"
            wait_for_job(
                c,
                ds["ingest_job_id"],
                lambda _: all(
                    d["status"] == "succeeded" for d in c.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
                ),
            )
            deliveries = c.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
            assert sorted(d["event_type"] for d in deliveries) == ["job.succeeded", "webhook.test"]
            assert all(d["attempts"][0]["status_code"] == 200 for d in deliveries)
    finally:
        server.stop()
