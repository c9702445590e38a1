"""Errors are problem+json, and an oversized request is refused before it is read."""

from __future__ import annotations


def test_unknown_route_is_problem_json(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_oversized_request_is_413_before_reading(client, auth):
    r = client.post("/v1/jobs", headers={**auth, "Content-Length": str(1 << 40)}, content=b"{}")
    assert r.status_code == 413
