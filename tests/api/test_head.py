"""HEAD is answered as GET without the body, on every route that answers GET (``api.head.HeadAsGet``)."""

from __future__ import annotations

from tests.api.key_factory import scoped_key


def _same_but_empty(client, path: str, headers: dict[str, str] | None = None) -> int:
    head, get = client.head(path, headers=headers), client.get(path, headers=headers)
    assert head.status_code == get.status_code, path
    assert head.content == b""
    for name in ("content-type", "content-length", "etag"):
        assert head.headers.get(name) == get.headers.get(name), (path, name)
    return head.status_code


def test_head_answers_as_get_without_the_body(client, db_session, served):
    _, model, index = served
    assert _same_but_empty(client, "/healthz") == 200
    assert _same_but_empty(client, "/dashboard") == 200
    assert _same_but_empty(client, "/v1/jobs") == 401  # the same key checks
    _, read = scoped_key(db_session, "read")
    assert _same_but_empty(client, "/v1/models", read) == 200
    assert _same_but_empty(client, f"/v1/indexes/{index.id}", read) == 200
    assert _same_but_empty(client, f"/v1/models/{model.id}/download?format=safetensors", read) == 200  # streamed
    assert _same_but_empty(client, "/v1/models/mdl_nope", read) == 404


def test_head_of_a_polled_job_has_its_etag(client, db_session, served):
    ds, _, _ = served
    _, write = scoped_key(db_session, "write")
    job = client.post("/v1/jobs", headers=write, json={"kind": "pretrain", "dataset_id": ds.id}).json()
    assert _same_but_empty(client, f"/v1/jobs/{job['id']}", write) == 200
    etag = client.head(f"/v1/jobs/{job['id']}", headers=write).headers["etag"]
    assert client.head(f"/v1/jobs/{job['id']}", headers={**write, "If-None-Match": etag}).status_code == 304
