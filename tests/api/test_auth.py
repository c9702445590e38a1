"""API keys: a missing, wrong or badly sent key is a 401 problem; a valid one is let in."""

from __future__ import annotations


def test_missing_key_is_401_problem(client):
    r = client.get("/v1/datasets")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_wrong_key_and_wrong_scheme_are_401(client):
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_valid_key_is_let_in(client, auth):
    r = client.get("/v1/datasets", headers=auth)
    assert r.status_code == 200
    assert r.json() == {"data": [], "has_more": False, "next_after": None}
