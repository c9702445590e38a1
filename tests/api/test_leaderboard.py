"""A dataset's leaderboard: succeeded evaluations grouped by protocol and subset, best first, beside the
supervised baseline on the same images; nothing of other datasets or tenants."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.core.ids import new_id
from api.core.models import Job, utcnow
from tests.api.factories import evaluate_job, model_row, ready_dataset, tenant_id

SUB_A, SUB_B = "sub_aaaaaaaaaaaaaaaa", "sub_bbbbbbbbbbbbbbbb"


@pytest.fixture
def dataset(client, db_session):
    return ready_dataset(db_session, client.app.state.store, tenant_id(db_session))


@pytest.fixture
def encoders(db_session, dataset):
    return {m: model_row(db_session, dataset.tenant_id, dataset.id, method=m) for m in ("simclr", "byol")}


def _board(client, auth, dataset_id):
    r = client.get(f"/v1/datasets/{dataset_id}/leaderboard", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def _top1s(entries):
    return [e["top1"] for e in entries]


def test_evaluations_are_ranked_only_against_the_same_protocol_and_images(client, auth, db_session, dataset, encoders):
    tenant, ds = dataset.tenant_id, dataset.id
    simclr, byol = encoders["simclr"].id, encoders["byol"].id
    evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_A, top1=0.7, source_model_id=simclr)
    evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_A, top1=0.8, top5=0.99, source_model_id=byol)
    evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_B, top1=0.9, source_model_id=byol)
    classifier = new_id("model")
    evaluate_job(
        db_session,
        tenant,
        ds,
        protocol="linear",
        subset_id=SUB_A,
        top1=0.75,
        source_model_id=simclr,
        model_id=classifier,
    )
    evaluate_job(
        db_session,
        tenant,
        ds,
        protocol="finetune",
        subset_id=SUB_B,
        top1=0.6,
        source_model_id=byol,
        strategy="partial",
        label_fraction=0.1,
    )
    board = _board(client, auth, ds)
    assert board["dataset_id"] == ds
    assert [(g["protocol"], g["subset_id"]) for g in board["groups"]] == [
        ("knn", SUB_A),
        ("knn", SUB_B),
        ("linear", SUB_A),
        ("finetune", SUB_B),
    ]
    knn_a, _, linear_a, finetune_b = board["groups"]
    assert _top1s(knn_a["entries"]) == [0.8, 0.7]
    assert [e["method"] for e in knn_a["entries"]] == ["byol", "simclr"]
    assert [e["top5"] for e in knn_a["entries"]] == [0.99, None]
    assert knn_a["entries"][0]["model_id"] is None
    assert knn_a["entries"][0]["strategy"] is None
    assert linear_a["entries"][0]["model_id"] == classifier
    assert linear_a["entries"][0]["source_model_id"] == simclr
    assert finetune_b["entries"][0]["strategy"] == "partial"
    assert finetune_b["label_fraction"] == 0.1
    assert finetune_b["labels_per_class"] is None
    assert finetune_b["test_source"] == "stratified 0.2"


def test_each_group_shows_the_supervised_runs_on_its_images_as_baseline(client, auth, db_session, dataset, encoders):
    tenant, ds = dataset.tenant_id, dataset.id
    simclr = encoders["simclr"].id
    evaluate_job(db_session, tenant, ds, protocol="linear", subset_id=SUB_A, top1=0.75, source_model_id=simclr)
    evaluate_job(db_session, tenant, ds, protocol="linear", subset_id=SUB_B, top1=0.65, source_model_id=simclr)
    evaluate_job(db_session, tenant, ds, protocol="supervised", subset_id=SUB_A, top1=0.68)
    evaluate_job(db_session, tenant, ds, protocol="supervised", subset_id=SUB_A, top1=0.72)
    groups = {(g["protocol"], g["subset_id"]): g for g in _board(client, auth, ds)["groups"]}
    assert list(groups) == [("linear", SUB_A), ("linear", SUB_B), ("supervised", SUB_A)]
    assert _top1s(groups["linear", SUB_A]["baseline"]) == [0.72, 0.68]
    assert groups["linear", SUB_B]["baseline"] == []
    supervised = groups["supervised", SUB_A]
    assert _top1s(supervised["entries"]) == [0.72, 0.68]
    assert {e["method"] for e in supervised["entries"]} == {"supervised"}
    assert {e["source_model_id"] for e in supervised["entries"]} == {None}
    assert supervised["baseline"] == []


def test_equal_scores_rank_the_earlier_run_first(client, auth, db_session, dataset, encoders):
    tenant, ds, simclr = dataset.tenant_id, dataset.id, encoders["simclr"].id
    now = utcnow()
    later = evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_A, top1=0.7, source_model_id=simclr)
    earlier = evaluate_job(
        db_session,
        tenant,
        ds,
        protocol="knn",
        subset_id=SUB_A,
        top1=0.7,
        source_model_id=simclr,
        created_at=now - timedelta(hours=1),
    )
    entries = _board(client, auth, ds)["groups"][0]["entries"]
    assert [e["job_id"] for e in entries] == [earlier.id, later.id]


def test_only_succeeded_evaluations_of_this_dataset_are_listed(client, auth, db_session, dataset, encoders):
    tenant, ds, simclr = dataset.tenant_id, dataset.id, encoders["simclr"].id
    other = ready_dataset(db_session, client.app.state.store, tenant)
    kept = evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_A, top1=0.5, source_model_id=simclr)
    for status in ("failed", "running", "cancelled"):
        evaluate_job(db_session, tenant, ds, protocol="knn", subset_id=SUB_A, top1=0, status=status)
    evaluate_job(db_session, tenant, other.id, protocol="knn", subset_id=SUB_A, top1=0.9, source_model_id=simclr)
    with db_session() as s:
        s.add(Job(id=new_id("job"), tenant_id=tenant, kind="pretrain", dataset_id=ds, status="succeeded", result={}))
        s.commit()
    groups = _board(client, auth, ds)["groups"]
    assert [[e["job_id"] for e in g["entries"]] for g in groups] == [[kept.id]]


def test_an_evaluated_model_that_is_gone_has_no_method(client, auth, db_session, dataset):
    gone = new_id("model")
    evaluate_job(
        db_session, dataset.tenant_id, dataset.id, protocol="knn", subset_id=SUB_A, top1=0.5, source_model_id=gone
    )
    entry = _board(client, auth, dataset.id)["groups"][0]["entries"][0]
    assert entry["source_model_id"] == gone
    assert entry["method"] is None


def test_a_dataset_without_evaluations_has_an_empty_board(client, auth, dataset):
    assert _board(client, auth, dataset.id) == {"dataset_id": dataset.id, "groups": []}


def test_another_tenants_or_an_unknown_dataset_is_404(client, auth, new_key, db_session, dataset, encoders):
    evaluate_job(
        db_session,
        dataset.tenant_id,
        dataset.id,
        protocol="knn",
        subset_id=SUB_A,
        top1=0.5,
        source_model_id=encoders["simclr"].id,
    )
    r = client.get(f"/v1/datasets/{dataset.id}/leaderboard", headers=new_key("globex"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/datasets/ds_{'0' * 24}/leaderboard", headers=auth).status_code == 404
