"""Submitting evaluate jobs: what is accepted, and every dataset, test dataset and model the API refuses before
a job is written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from api.core.models import Job
from tests.api.factories import model_row, ready_dataset, tenant_id

LABELLED_3 = [{"name": "a", "count": 4}, {"name": "b", "count": 4}, {"name": "c", "count": 4}]


@pytest.fixture
def make_dataset(client, db_session):
    """A ready dataset of tenant ``acme`` (12 grayscale images, classes a and b with 6 each) unless told."""

    def _make(tenant: str = "acme", **fields):
        return ready_dataset(db_session, client.app.state.store, tenant_id(db_session, tenant), **fields)

    return _make


@pytest.fixture
def dataset(make_dataset):
    return make_dataset()


@pytest.fixture
def model(db_session, dataset):
    return model_row(db_session, dataset.tenant_id, dataset.id)


def _job_count(db_session) -> int:
    with db_session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def _refused(client, auth, db_session, body, field, status=422, reason=""):
    """Submit ``body``; assert a problem naming ``field`` (its reason containing ``reason``) and no job row."""
    before = _job_count(db_session)
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == [field], errors
    assert reason.lower() in errors[0]["reason"].lower(), errors
    assert _job_count(db_session) == before
    return errors[0]["reason"]


def test_a_knn_evaluation_of_a_model_is_queued_with_only_its_protocols_settings(client, auth, dataset, model):
    r = client.post(
        "/v1/jobs",
        headers=auth,
        json={"kind": "evaluate", "protocol": "knn", "dataset_id": dataset.id, "model_id": model.id},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "evaluate"
    assert job["status"] == "queued"
    assert job["spec"]["model_id"] == model.id
    assert job["spec"]["k"] == 20
    assert "strategy" not in job["spec"]


def test_a_supervised_baseline_needs_no_model(client, auth, dataset):
    body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset.id, "epochs": 1}
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["backbone"] == "resnet18"


def test_a_dataset_without_labels_of_two_classes_is_refused(client, auth, db_session, make_dataset):
    unlabelled = make_dataset(classes=[], num_labelled=0)
    one_class = make_dataset(classes=[{"name": "a", "count": 12}])
    for ds in (unlabelled, one_class):
        body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": ds.id}
        _refused(client, auth, db_session, body, "dataset_id", reason="labelled images of at least 2 classes")


def test_unknown_or_foreign_datasets_are_refused_naming_dataset_id(client, auth, db_session, make_dataset):
    foreign = make_dataset("globex")
    for dataset_id in ("ds_" + "0" * 24, foreign.id):
        body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset_id}
        _refused(client, auth, db_session, body, "dataset_id", reason="no dataset")


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"labels_per_class": 6}, "labels_per_class", "at most 5"),
        ({"label_fraction": 0.05}, "label_fraction", "rounds to no training image"),
    ],
)
def test_a_label_subset_that_leaves_a_class_without_training_images_is_refused(
    client, auth, db_session, dataset, patch, field, reason
):
    body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset.id, **patch}
    _refused(client, auth, db_session, body, field, reason=reason)


def test_a_dataset_with_no_class_of_two_images_has_no_test_split(client, auth, db_session, make_dataset):
    tiny = make_dataset(n=2, classes=[{"name": "a", "count": 1}, {"name": "b", "count": 1}], num_labelled=2)
    body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": tiny.id}
    _refused(client, auth, db_session, body, "test_fraction", reason="test_dataset_id")


def test_with_a_test_dataset_every_labelled_image_can_train(client, auth, dataset, make_dataset):
    test = make_dataset()
    body = {
        "kind": "evaluate",
        "protocol": "supervised",
        "dataset_id": dataset.id,
        "test_dataset_id": test.id,
        "labels_per_class": 6,  # more than the 5 left beside a test split of the dataset itself
    }
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["test_dataset_id"] == test.id


def test_test_datasets_that_cannot_test_the_dataset_are_refused(client, auth, db_session, dataset, make_dataset):
    cases = [
        ("ds_" + "0" * 24, 422, "no dataset"),
        (make_dataset("globex").id, 422, "no dataset"),
        (dataset.id, 422, "must differ from dataset_id"),
        (make_dataset(classes=[], num_labelled=0).id, 422, "no labelled images"),
        (make_dataset(image_shape=[3, 12, 12]).id, 422, "3 channels, dataset_id's have 1"),
        (make_dataset(status="ingesting").id, 409, "not ready"),
    ]
    for test_id, status, reason in cases:
        body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset.id, "test_dataset_id": test_id}
        _refused(client, auth, db_session, body, "test_dataset_id", status=status, reason=reason)


def test_a_test_dataset_with_other_classes_is_refused_listing_the_usable_ones(
    client, auth, db_session, dataset, make_dataset
):
    test = make_dataset(classes=LABELLED_3)
    body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset.id, "test_dataset_id": test.id}
    reason = _refused(client, auth, db_session, body, "test_dataset_id", reason="its classes c are not among")
    assert reason.endswith("may only use a, b")


def test_a_test_dataset_may_use_some_of_the_classes(client, auth, make_dataset):
    dataset = make_dataset(classes=LABELLED_3)
    test = make_dataset()  # a and b only
    body = {"kind": "evaluate", "protocol": "supervised", "dataset_id": dataset.id, "test_dataset_id": test.id}
    assert client.post("/v1/jobs", headers=auth, json=body).status_code == 202


def test_unknown_or_foreign_models_are_refused_naming_model_id(client, auth, db_session, dataset, make_dataset):
    foreign = make_dataset("globex")
    foreign_model = model_row(db_session, foreign.tenant_id, foreign.id)
    for model_id in ("mdl_" + "0" * 24, foreign_model.id):
        for protocol in ("knn", "linear", "finetune"):
            body = {"kind": "evaluate", "protocol": protocol, "dataset_id": dataset.id, "model_id": model_id}
            _refused(client, auth, db_session, body, "model_id", reason="no model")


def test_partial_fine_tuning_may_train_at_most_the_backbones_stages(client, auth, db_session, dataset, model):
    body = {
        "kind": "evaluate",
        "protocol": "finetune",
        "dataset_id": dataset.id,
        "model_id": model.id,
        "strategy": "partial",
        "trainable_blocks": 5,
    }
    _refused(client, auth, db_session, body, "trainable_blocks", reason="at most 4: resnet18 has 4 stages")
    r = client.post("/v1/jobs", headers=auth, json={**body, "trainable_blocks": 4})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["trainable_blocks"] == 4


def test_a_vit_has_twelve_stages_to_fine_tune(client, auth, db_session, dataset):
    vit = model_row(db_session, dataset.tenant_id, dataset.id, backbone="vit_tiny", embedding_dim=192)
    body = {
        "kind": "evaluate",
        "protocol": "finetune",
        "dataset_id": dataset.id,
        "model_id": vit.id,
        "strategy": "partial",
        "trainable_blocks": 12,
    }
    assert client.post("/v1/jobs", headers=auth, json=body).status_code == 202
    _refused(client, auth, db_session, {**body, "trainable_blocks": 13}, "trainable_blocks", reason="at most 12")


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"protocol": "knn", "strategy": "full"}, "strategy", "applies to protocol finetune"),
        ({"protocol": "linear", "k": 5}, "k", "applies to protocol knn"),
        ({"protocol": "finetune", "trainable_blocks": 2}, "trainable_blocks", "strategy partial"),
        ({"protocol": "knn", "label_fraction": 0.1, "labels_per_class": 2}, "labels_per_class", "not both"),
        ({"protocol": "finetune", "epochs": 2, "max_minutes": 1}, "max_minutes", "not both"),
        ({"protocol": "supervised", "backbone": "vit_tiny", "image_size": 33}, "image_size", "patch size"),
        ({"protocol": "supervised", "backbone": "resnet7"}, "backbone", "unknown backbone"),
        ({"protocol": "finetune", "strategy": "some"}, "strategy", ""),
    ],
)
def test_settings_that_do_not_fit_the_protocol_are_refused_naming_them(
    client, auth, db_session, dataset, model, extra, field, reason
):
    body = {"kind": "evaluate", "dataset_id": dataset.id, **extra}
    if extra["protocol"] != "supervised":
        body["model_id"] = model.id
    _refused(client, auth, db_session, body, field, reason=reason)


def test_a_model_is_required_except_for_the_supervised_baseline(client, auth, db_session, dataset):
    _refused(client, auth, db_session, {"kind": "evaluate", "protocol": "linear", "dataset_id": dataset.id}, "model_id")
