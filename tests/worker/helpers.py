"""Helpers for the worker tests: submit through the API, read jobs and events back."""

from __future__ import annotations

TINY = {"stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 2}


def ingest(client, auth, run, data: bytes) -> dict:
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.zip", data)}, data={"name": "d"}).json()
    run(ds["ingest_job_id"])
    return client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()


def get_job(client, auth, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=auth).json()


def job_events(client, auth, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/events?limit=200", headers=auth).json()["data"]


def submit(client, auth, body: dict) -> dict:
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    return r.json()
