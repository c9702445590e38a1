from __future__ import annotations

import json
import sys

import pytest
from sqlalchemy import func, select

from api.core.models import Job
from tests.api.factories import ready_dataset, tenant_id, trained_model


@pytest.fixture
def dataset(client, db_session):
    return ready_dataset(db_session, client.app.state.store, tenant_id(db_session))


def _submit(client, auth, body, **headers):
    return client.post("/v1/jobs", headers={**auth, **headers}, json=body)


def _job_count(db_session) -> int:
    with db_session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_submit_pretrain_is_202_with_location_and_defaults(client, auth, dataset):
    r = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id, "max_minutes": 1, "temperature": 0.3})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["kind"] == "pretrain"
    assert job["progress"] == 0
    assert job["spec"]["method"] == "simclr"
    assert job["spec"]["backbone"] == "resnet18"
    assert job["spec"]["params"]["temperature"] == 0.3


BAD_SPECS = [
    ({"kind": "pretrain", "surprise": 1}, "surprise", "unknown field"),
    ({"kind": "pretrain", "method": "dino2000"}, "method", "unknown method"),
    ({"kind": "pretrain", "backbone": "vgg11"}, "backbone", "unknown backbone"),
    ({"kind": "pretrain", "stem": "huge"}, "stem", ""),
    ({"kind": "pretrain", "image_size": 4}, "image_size", "greater than or equal"),
    ({"kind": "pretrain", "image_size": "big"}, "image_size", "integer"),
    ({"kind": "pretrain", "batch_size": 10**9}, "batch_size", "less than or equal"),
    ({"kind": "pretrain", "epochs": 0}, "epochs", ""),
    ({"kind": "pretrain", "max_minutes": -1}, "max_minutes", ""),
    ({"kind": "pretrain", "learning_rate": 0}, "learning_rate", ""),
    ({"kind": "pretrain", "temperature": 0}, "temperature", "greater than"),
    ({"kind": "pretrain", "temperature": "hot"}, "temperature", ""),
    ({"kind": "pretrain", "seed": -1}, "seed", ""),
    ({"kind": "pretrain", "optimizer": "adagrad"}, "optimizer", ""),
    ({"kind": "pretrain", "method": "jigsaw", "layout": "spiral"}, "layout", "'tiles' or 'image'"),
    (
        {
            "kind": "pretrain",
            "method": "multitask",
            "tasks": [{"method": "rotation"}, {"method": "simclr", "params": {"temperature": -1}}],
        },
        "tasks.1.params.temperature",
        "greater than 0",
    ),
    ({"kind": "pretrain", "epochs": 1, "max_minutes": 1}, "body", "either epochs or max_minutes"),
    ({"kind": "pretrain", "dataset_id": "nope"}, "dataset_id", "pattern"),
    ({"kind": "fly"}, "kind", "must be one of"),
    ({"kind": "ingest"}, "kind", "POST /v1/datasets"),
    ({}, "kind", "required"),
    ({"kind": "index", "model_id": "mdl_x"}, "model_id", ""),
    ({"kind": "index", "index_type": "annoy"}, "index_type", "'auto', 'flat', 'hnsw' or 'ivf'"),
    ({"kind": "index", "ann_threshold": 0}, "ann_threshold", "greater than or equal to 1"),
    ({"kind": "index", "index_type": "flat", "ann_threshold": 10}, "ann_threshold", "applies to index_type auto"),
    ({"kind": "pretrain", "backbone": "vit_tiny", "image_size": 32, "patch_size": 5}, "patch_size", "does not divide"),
    ({"kind": "pretrain", "backbone": "vit_tiny", "patch_size": 64}, "patch_size", "less than or equal"),
    ({"kind": "pretrain", "backbone": "resnet18", "patch_size": 4}, "patch_size", "ViT backbones only"),
    ({"kind": "pretrain", "patch_size": 8}, "patch_size", "ViT backbones only, not resnet18"),
]


@pytest.mark.parametrize(
    ("patch", "field", "reason"), BAD_SPECS, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_SPECS)]
)
def test_bad_specs_are_422_naming_the_field(client, auth, dataset, db_session, patch, field, reason):
    body = {"dataset_id": dataset.id, **patch}
    if patch.get("kind") == "index":
        body.setdefault("model_id", "mdl_" + "0" * 24)
    before = _job_count(db_session)
    r = _submit(client, auth, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    errors = r.json()["errors"]
    fields = [e["field"] for e in errors]
    assert field in fields, errors
    assert reason.lower() in errors[fields.index(field)]["reason"].lower()
    assert _job_count(db_session) == before


def test_non_object_and_malformed_json(client, auth):
    r = _submit(client, auth, [1, 2])
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 400
    assert r.json()["code"] == "malformed_json"


def test_unknown_and_foreign_dataset_are_named(client, auth, new_key, dataset):
    r = _submit(client, auth, {"kind": "pretrain", "dataset_id": "ds_" + "0" * 24})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"
    r = _submit(client, new_key("globex"), {"kind": "pretrain", "dataset_id": dataset.id})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"


def test_dataset_not_ready_is_409(client, auth, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    with db_session() as s:
        s.get(type(ds), ds.id).status = "ingesting"
        s.commit()
    r = _submit(client, auth, {"kind": "pretrain", "dataset_id": ds.id})
    assert r.status_code == 409
    assert r.json()["code"] == "dataset_not_ready"


def test_index_job_needs_an_existing_model(client, auth, dataset, db_session):
    r = _submit(client, auth, {"kind": "index", "dataset_id": dataset.id, "model_id": "mdl_" + "0" * 24})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "model_id"
    model = trained_model(db_session, client.app.state.store, dataset.tenant_id, dataset.id)
    r = _submit(client, auth, {"kind": "index", "dataset_id": dataset.id, "model_id": model.id})
    assert r.status_code == 202, r.text


def test_idempotency_key_returns_same_job_and_refuses_other_body(client, auth, dataset, db_session):
    body = {"kind": "pretrain", "dataset_id": dataset.id, "epochs": 1}
    first = _submit(client, auth, body, **{"Idempotency-Key": "abc"})
    again = _submit(client, auth, body, **{"Idempotency-Key": "abc"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = _submit(client, auth, {**body, "epochs": 2}, **{"Idempotency-Key": "abc"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert _job_count(db_session) == 1


def test_list_filters_and_paginates(client, auth, dataset):
    ids = [
        _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id, "seed": i}).json()["id"] for i in range(3)
    ]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    queued = client.get("/v1/jobs?status=queued&kind=pretrain", headers=auth).json()
    assert {j["id"] for j in queued["data"]} == set(ids[1:])
    page = client.get("/v1/jobs?limit=2", headers=auth).json()
    assert page["has_more"]
    assert len(page["data"]) == 2
    rest = client.get(f"/v1/jobs?limit=2&after={page['next_after']}", headers=auth).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]]
    assert client.get("/v1/jobs?status=sleeping", headers=auth).json()["errors"][0]["field"] == "status"
    assert client.get("/v1/jobs?kind=fly", headers=auth).json()["errors"][0]["field"] == "kind"


def test_cancel_queued_job_ends_cancelled_and_is_terminal(client, auth, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.json()["code"] == "job_finished"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [e["data"]["status"] for e in events["data"]] == ["queued", "cancelled"]
    after = client.get(f"/v1/jobs/{job['id']}/events?after={events['next_after']}", headers=auth).json()
    assert after["data"] == []
    assert after["next_after"] == events["next_after"]


def test_etag_and_if_none_match(client, auth, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    r = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    etag = r.headers["etag"]
    assert client.get(f"/v1/jobs/{job['id']}", headers={**auth, "If-None-Match": etag}).status_code == 304
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    changed = client.get(f"/v1/jobs/{job['id']}", headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


def test_foreign_job_is_404_everywhere(client, auth, new_key, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    other = new_key("globex")
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/metrics"),
    ]:
        assert client.request(method, path, headers=other).status_code == 404


def test_events_validates_after_and_limit(client, auth, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    assert client.get(f"/v1/jobs/{job['id']}/events?after=-1", headers=auth).status_code == 422
    assert client.get(f"/v1/jobs/{job['id']}/events?after=abc", headers=auth).json()["errors"][0]["field"] == "after"
    assert client.get(f"/v1/jobs/{job['id']}/events?limit=999", headers=auth).status_code == 422


def test_metrics_export_streams_every_metrics_event_as_json_lines(client, auth, dataset, db_session):
    from api.core.jobs import add_event
    from api.services.jobs import metrics_jsonl

    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    reported = [{"epoch": e, "step": 4 * e, "loss": 1.0 / e, "lr": 0.1} for e in (1, 2, 3)]
    with db_session() as s:
        for i, data in enumerate(reported):
            add_event(s, job_id=job["id"], type="metrics", data=data)
            if i == 0:
                add_event(s, job_id=job["id"], type="message", data={"message": "not a metric"})
        add_event(s, job_id=job["id"], type="metrics", data={"embedding_std": 0.9, "epoch": 3})
        s.commit()
    r = client.get(f"/v1/jobs/{job['id']}/metrics?format=jsonl", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["content-disposition"] == f'attachment; filename="{job["id"]}-metrics.jsonl"'
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [{k: v for k, v in line.items() if k not in ("event_id", "created_at")} for line in lines] == [
        *reported,
        {"embedding_std": 0.9, "epoch": 3},
    ]
    assert [line["event_id"] for line in lines] == sorted(line["event_id"] for line in lines)
    assert all(line["created_at"].endswith("Z") for line in lines)
    assert r.text.endswith("\n")
    # pages of two events read the same lines
    assert b"".join(metrics_jsonl(db_session, job_id=job["id"], page=2)).decode() == r.text
    assert client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).text == r.text  # jsonl is the default


def test_metrics_export_of_a_job_without_metrics_is_empty_and_format_is_checked(client, auth, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id}).json()
    r = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth)
    assert r.status_code == 200
    assert r.text == ""
    bad = client.get(f"/v1/jobs/{job['id']}/metrics?format=csv", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "format"
    assert client.get("/v1/jobs/job_000000000000000000000000/metrics", headers=auth).status_code == 404


@pytest.mark.parametrize("kind", ["pretrain", "distill"])
def test_integrations_are_checked_at_submission(client, auth, dataset, db_session, kind, monkeypatch):
    model = trained_model(db_session, client.app.state.store, tenant_id(db_session), dataset.id)
    body = {"kind": kind, "dataset_id": dataset.id}
    if kind == "distill":
        body["teacher_model_id"] = model.id
    r = _submit(client, auth, {**body, "integrations": ["wandb"]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"].startswith("integrations")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the package were not installed
    r = _submit(client, auth, {**body, "integrations": ["mlflow"]})
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == "integrations"
    assert "jaga[mlflow]" in error["reason"]
    r = _submit(client, auth, body)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["integrations"] == []


def test_jobs_are_listed_by_the_dataset_or_the_model_they_read(client, auth, dataset, db_session):
    store, tenant = client.app.state.store, tenant_id(db_session)
    other = ready_dataset(db_session, store, tenant)
    model = trained_model(db_session, store, tenant, dataset.id)
    plain = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset.id})
    readers = [
        _submit(client, auth, body)
        for body in (
            {"kind": "pretrain", "dataset_id": other.id, "init_model_id": model.id},
            {"kind": "embed", "dataset_id": dataset.id, "model_id": model.id},
            {"kind": "distill", "dataset_id": dataset.id, "teacher_model_id": model.id},
            {"kind": "evaluate", "dataset_id": dataset.id, "model_id": model.id, "protocol": "knn"},
        )
    ]
    assert [r.status_code for r in [plain, *readers]] == [202] * 5, [r.text for r in readers]
    ids = [r.json()["id"] for r in readers]

    def listed(query: str) -> list[str]:
        r = client.get(f"/v1/jobs?{query}", headers=auth)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert listed(f"model_id={model.id}") == ids[::-1]  # newest first
    assert listed(f"model_id={model.id}&kind=embed") == [ids[1]]
    assert listed(f"dataset_id={other.id}") == [ids[0]]
    assert listed(f"dataset_id={dataset.id}&model_id={model.id}&limit=2") == [ids[3], ids[2]]
    assert listed(f"model_id=mdl_{'0' * 24}") == []
    r = client.get(f"/v1/jobs?model_id={'m' * 33}", headers=auth)
    assert r.json()["errors"][0]["field"] == "model_id"
