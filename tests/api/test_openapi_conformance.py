"""The OpenAPI document matches the service: schemathesis drives every operation of the real app on the real
test database, with an admin key and seeded resources, and checks each answer against the document (no 5xx; status
code, content type and body as documented). No operation is left out: job submissions are only queued, on a queue
no worker reads, and every example is rolled back (the files of a deleted model or index are put back; a deleted
dataset's stay deleted, as nothing reads them).

Bounded for CI: ``max_examples`` per operation for the fuzzing phase, plus schemathesis' examples and coverage
phases (boundary values, missing and malformed parts), all derandomized; about 70 s on two cores. The schema is
loaded at import (``schemathesis.pytest.from_fixture`` does not run under pytest 9), which connects to nothing.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Connection, create_engine
from sqlalchemy.orm import sessionmaker

from api.core.ids import new_id
from api.core.models import WebhookEndpoint
from api.core.settings import Settings
from api.core.specs import SUBMITTABLE_KINDS
from api.core.webhooks import new_secret
from api.deps import current_key, required_scope
from api.main import create_app
from api.services import models as models_service
from tests.api.factories import (
    built_index,
    evaluate_job,
    random_png,
    ready_dataset,
    tenant_id,
    trained_classifier,
    trained_model,
)
from tests.api.key_factory import scoped_key
from tests.helpers import class_folder_zip

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
PNG = random_png(0)
ZIP = class_folder_zip(n_per_class=2)


#: The app whose document is tested; building it connects to nothing.
DOCUMENTED = create_app(Settings(database_url="sqlite://", broker_url="memory://", bootstrap_key=None))
DOCUMENT = DOCUMENTED.openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@dataclass
class Service:
    app: FastAPI
    connection: Connection
    auth: dict[str, str]
    ids: dict[str, list[str]]
    pristine: Path  # a copy of the seeded models' and indexes' files


#: The artifacts a DELETE may remove that other operations read.
RESTORED = ("models", "indexes")


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The app on the test database, in one transaction rolled back at the end (as in ``db_session``), with a
    ready dataset, another one with a queued job, an encoder, a classifier, an index, an ended job, two keys and a
    webhook endpoint:
    the ids of each for the path parameters that name them, and the admin key's headers."""
    engine = create_engine(database_url)
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    settings = Settings(
        database_url=database_url,
        broker_url=os.environ.get("JAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),  # as tests/conftest.py
        data_dir=tmp_path_factory.mktemp("conformance"),
        queue_name=f"jaga-test-{uuid.uuid4().hex[:8]}",  # no worker reads it
        rate_limit_per_minute=0,  # every example gets through to the route
    )
    app = create_app(settings, make_session=factory)
    try:
        with TestClient(app):  # the lifespan runs as in the service
            store, tenant = app.state.store, tenant_id(factory)
            ds, busy = ready_dataset(factory, store, tenant), ready_dataset(factory, store, tenant)
            model = trained_model(factory, store, tenant, ds.id)
            classifier = trained_classifier(factory, store, tenant, ds.id, source_model_id=model.id)
            # Every export built before the first request, as an earlier download would: a first ONNX export
            # takes longer than schemathesis lets a request take.
            for m, targets in ((model, ["embedding"]), (classifier, ["embedding", "classifier"])):
                for fmt, target in [("safetensors", None)] + [(f, t) for f in ("torchscript", "onnx") for t in targets]:
                    models_service.export_file(m, models_service.export_request(m, format=fmt, target=target), store)
            index = built_index(factory, store, tenant, model, ds.id)
            ended = evaluate_job(
                factory, tenant, ds.id, protocol="knn", subset_id="s1", top1=0.5, source_model_id=model.id
            )
            queued = evaluate_job(factory, tenant, busy.id, protocol="knn", subset_id="s2", top1=0, status="queued")
            admin, auth = scoped_key(factory, "admin")  # the tenant's only admin key: revoking it is a 409
            reader, _ = scoped_key(factory, "read")
            with factory() as s:
                hook = WebhookEndpoint(
                    id=new_id("webhook"), tenant_id=tenant, url="https://93.184.215.14/", events=["job.failed"]
                )
                hook.secret = new_secret()
                s.add(hook)
                s.commit()
            ids = {
                "dataset_id": [ds.id, busy.id],  # deleting busy is a 409: its job is active
                "model_id": [model.id, classifier.id],
                "index_id": [index.id],
                "job_id": [ended.id, queued.id],
                "key_id": [reader.id, admin.id],
                "name": ["simclr", "dino"],
                "webhook_id": [hook.id],
            }
            pristine = tmp_path_factory.mktemp("pristine")
            for part in RESTORED:
                shutil.copytree(store.root / part, pristine / part)
            yield Service(app, connection, auth, ids, pristine)
    finally:
        outer.rollback()
        connection.close()
        engine.dispose()


def _real(generated: object, choices: list[Any]) -> Any | None:
    """For about half the generated values, one of ``choices`` to send instead, picked by a stable hash of the
    value (the coverage phase, which makes many of the cases, runs only without ``@given``)."""
    digest = zlib.crc32(repr(generated).encode())
    return choices[(digest >> 1) % len(choices)] if digest % 2 else None


def _use_real_values(case: schemathesis.Case, ids: dict[str, list[str]]) -> None:
    """Put seeded ids in place of about half the generated ones, and real images and archives in place of about
    half the generated bytes, so that operations get past their 404s and 422s too."""
    for name, value in (case.path_parameters or {}).items():
        if name in ids and (real := _real(value, ids[name])) is not None:
            case.path_parameters[name] = real
    if not isinstance(case.body, dict):
        return
    multipart = (case.media_type or "").startswith("multipart/")
    replacements: dict[str, list[Any]] = {
        "dataset_id": ids["dataset_id"],
        "model_id": ids["model_id"],
        "file": [ZIP],
        "files": [[PNG], [PNG, PNG]],
        "image": [PNG if multipart else base64.b64encode(PNG).decode()],
        "images": [[base64.b64encode(PNG).decode()]],
    }
    for name, value in case.body.items():
        if name in replacements and (real := _real(value, replacements[name])) is not None:
            case.body[name] = real


@schema.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_operation_conforms_to_the_document(case: schemathesis.Case, service: Service) -> None:
    _use_real_values(case, service.ids)
    savepoint = service.connection.begin_nested()  # every example starts from the seeded rows
    try:
        case.call_and_validate(session=ASGIClient(service.app), headers=service.auth, checks=CHECKS)
    finally:
        savepoint.rollback()
        if case.method.upper() == "DELETE":
            for part in RESTORED:
                shutil.copytree(service.pristine / part, service.app.state.store.root / part, dirs_exist_ok=True)


def _component(ref: str) -> dict[str, Any]:
    return DOCUMENT["components"]["schemas"][ref.removeprefix("#/components/schemas/")]


def _needs_a_key(dependant: Dependant) -> bool:
    return any(d.call is current_key or _needs_a_key(d) for d in dependant.dependencies)


def test_every_error_response_is_a_problem():
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            if path not in ("/healthz", "/readyz"):  # 200 or no answer; 200 or 503
                assert any(code.startswith("4") for code in errors), f"{method} {path} documents no 4xx"
            for code, response in errors.items():
                assert list(response["content"]) == ["application/problem+json"], f"{method} {path} {code}"
                assert _component(response["content"]["application/problem+json"]["schema"]["$ref"])["title"] == (
                    "Problem"
                )
    assert "503" in DOCUMENT["paths"]["/readyz"]["get"]["responses"]


def test_key_errors_are_documented_where_they_can_happen():
    """401 and 429 on every route that needs a key; 403 only where some key's scope is not enough."""
    for route in DOCUMENTED.routes:
        if not isinstance(route, APIRoute) or not _needs_a_key(route.dependant):
            continue
        for method in route.methods:
            documented = DOCUMENT["paths"][route.path][method.lower()]["responses"]
            assert {"401", "429"} <= set(documented), f"{method} {route.path}"
            assert ("403" in documented) == (required_scope(method, route) != "read"), f"{method} {route.path}"


def test_job_submission_body_is_one_of_the_submittable_specs_by_kind():
    body = DOCUMENT["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"]
    spec = _component(body["content"]["application/json"]["schema"]["$ref"])
    assert spec["discriminator"]["propertyName"] == "kind"
    assert set(spec["discriminator"]["mapping"]) == set(SUBMITTABLE_KINDS)
    assert sorted(one["$ref"] for one in spec["oneOf"]) == sorted(spec["discriminator"]["mapping"].values())
    for kind, ref in spec["discriminator"]["mapping"].items():
        assert _component(ref)["properties"]["kind"]["const"] == kind
        assert "dataset_id" in _component(ref)["required"]
    pretrain = _component(spec["discriminator"]["mapping"]["pretrain"])
    assert "params" not in pretrain["properties"]  # method parameters go at the top level, so others are let in
    assert pretrain["additionalProperties"] is True
    image_size = pretrain["properties"]["image_size"]
    assert (image_size["minimum"], image_size["maximum"]) == (8, 512)  # bounds come from the models


@pytest.mark.parametrize(
    ("path", "media_types"),
    [
        ("/v1/models/{model_id}/embeddings", ["multipart/form-data", "application/json"]),
        ("/v1/models/{model_id}/predictions", ["multipart/form-data", "application/json"]),
        ("/v1/indexes/{index_id}/search", ["multipart/form-data", "application/json"]),
        ("/v1/indexes/{index_id}/search/batch", ["multipart/form-data", "application/json"]),
        ("/v1/datasets", ["multipart/form-data"]),
    ],
)
def test_bodies_read_by_hand_are_documented(path, media_types):
    body = DOCUMENT["paths"][path]["post"]["requestBody"]
    assert body["required"]
    assert list(body["content"]) == media_types
    for content in body["content"].values():
        assert _component(content["schema"]["$ref"])["properties"]
