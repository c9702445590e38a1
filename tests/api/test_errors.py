"""Errors are problem+json, and an oversized request is refused before it is read."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from api.core.problems import Problem
from api.json_body import parse_json
from api.main import MAX_SMALL_BODY
from tests.api.factories import trained_classifier
from tests.api.live import live_server


def test_unknown_route_is_problem_json(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_oversized_request_is_413_before_reading(client, auth):
    r = client.post("/v1/jobs", headers={**auth, "Content-Length": str(1 << 40)}, content=b"{}")
    assert r.status_code == 413


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


def test_chunked_body_over_the_small_body_limit_is_413(client, auth):
    """Without a Content-Length the limit is enforced as the body streams in, on every route."""
    headers = {**auth, "Content-Type": "application/json"}
    r = client.post("/v1/jobs", headers=headers, content=_chunks(MAX_SMALL_BODY + (1 << 20)))
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "request_too_large"
    metrics = client.get("/metrics").text
    assert 'jaga_http_requests_total{method="POST",route="/v1/jobs",status="413"} 1.0' in metrics


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, lower-cased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_chunked_body_over_the_limit_leaves_the_connection_usable(app, auth):
    """Over a real socket: a 413 problem, then the same keep-alive connection answers the next request."""
    with live_server(app) as (host, port), socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n" + f"Authorization: {auth['Authorization']}\r\n\r\n".encode()
        )
        for chunk in _chunks(MAX_SMALL_BODY + (2 << 20)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = _read_response(sock)
        assert status == 413, body
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "request_too_large"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, body = _read_response(sock)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


DEEP_JSON_ROUTES = [
    "/v1/jobs",
    "/v1/models/{model}/embeddings",
    "/v1/models/{classifier}/predictions",
    "/v1/indexes/{index}/search",
]


@pytest.mark.parametrize("route", DEEP_JSON_ROUTES)
@pytest.mark.parametrize("body", [b"[" * 100_000, b"[" * 33 + b"]" * 33, b'{"a": ' * 40 + b"1" + b"}" * 40])
def test_deeply_nested_json_is_400_on_every_json_route(client, auth, served, db_session, route, body):
    ds, model, index = served
    if "{classifier}" in route:  # predictions refuse an encoder before reading the body
        model = trained_classifier(db_session, client.app.state.store, ds.tenant_id, ds.id, source_model_id=model.id)
    url = route.format(model=model.id, classifier=model.id, index=index.id)
    r = client.post(url, headers={**auth, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "malformed_json"
    assert r.json()["errors"] == [{"field": "body", "reason": "is nested more than 32 levels deep"}]


@pytest.mark.parametrize("body", [b'{"vector": [NaN]}', b'{"item": Infinity}', b'{"k": -Infinity}', b"\xff\xfe{"])
def test_json_that_is_not_standard_is_400(client, auth, served, body):
    _, _, index = served
    r = client.post(
        f"/v1/indexes/{index.id}/search", headers={**auth, "Content-Type": "application/json"}, content=body
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_json"
    assert r.json()["errors"][0]["field"] == "body"


def test_json_nested_to_the_limit_is_parsed():
    nested = b"[" * 32 + b"]" * 32
    assert parse_json(nested) == json.loads(nested)
    assert parse_json(b'{"a": [1, {"b": [2.5, "c"]}]}') == {"a": [1, {"b": [2.5, "c"]}]}
    with pytest.raises(Problem):
        parse_json(b"[" * 33 + b"]" * 33)
    assert parse_json(b"1e400") == float("inf")  # valid JSON; the fields that take numbers bound them


@pytest.mark.parametrize("after", [str(2**31), str(2**63), str(2**64), "1e3", "-1"])
def test_event_cursor_out_of_range_is_422_naming_after(client, auth, served, after):
    ds, model, _ = served
    job = client.post("/v1/jobs", headers=auth, json={"kind": "index", "dataset_id": ds.id, "model_id": model.id})
    r = client.get(f"/v1/jobs/{job.json()['id']}/events", params={"after": after}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "after"


def test_event_cursor_at_the_largest_event_id_is_an_empty_page(client, auth, served):
    ds, model, _ = served
    job = client.post("/v1/jobs", headers=auth, json={"kind": "index", "dataset_id": ds.id, "model_id": model.id})
    r = client.get(f"/v1/jobs/{job.json()['id']}/events", params={"after": 2**31 - 1}, headers=auth)
    assert r.status_code == 200, r.text
    assert (r.json()["data"], r.json()["has_more"]) == ([], False)


@pytest.mark.parametrize("resource", ["jobs", "models", "indexes"])
@pytest.mark.parametrize("after", ["\0", "job_\0", "é", "x" * 5000, "job_" + "g" * 24])
def test_list_cursor_that_is_not_an_id_is_422_naming_after(client, auth, resource, after):
    r = client.get(f"/v1/{resource}", params={"after": after}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "after"


@pytest.mark.parametrize("top_k", [str(10**30), "10001", "0", "1.5"])
def test_predictions_top_k_out_of_range_is_422(client, auth, served, db_session, top_k):
    ds, model, _ = served
    classifier = trained_classifier(db_session, client.app.state.store, ds.tenant_id, ds.id, source_model_id=model.id)
    r = client.post(
        f"/v1/models/{classifier.id}/predictions", params={"top_k": top_k}, headers=auth, json={"images": ["x"]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "top_k"
