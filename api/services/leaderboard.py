"""A dataset's leaderboard: its succeeded evaluations, grouped so that only runs of one protocol on the same
images are ranked together, each group beside the supervised baseline trained on those images."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.models import Job, Model
from api.core.specs import Protocol
from api.services.datasets import get_dataset

PROTOCOL_ORDER = get_args(Protocol)


def _scored(job: Job) -> bool:
    """Whether a job's result has what ranking needs: one that does not is left out, not a 500 for the board."""
    result = job.result or {}
    protocol = result.get("protocol")
    return (
        isinstance(result.get("top1"), int | float)
        and isinstance(result.get("subset_id"), str)
        and isinstance(protocol, dict)
        and isinstance(protocol.get("protocol"), str)
    )


def _key(job: Job) -> tuple[str, str]:
    """(protocol, subset id) of a ``_scored`` job."""
    assert job.result is not None
    return job.result["protocol"]["protocol"], job.result["subset_id"]


def _entry(job: Job, methods: dict[str, str]) -> dict[str, Any]:
    result = job.result or {}
    protocol = result["protocol"]
    source = result.get("source_model_id")
    return {
        "job_id": job.id,
        "model_id": result.get("model_id"),
        "source_model_id": source,
        "method": "supervised" if protocol["protocol"] == "supervised" else methods.get(source or ""),
        "strategy": protocol.get("strategy") if protocol["protocol"] == "finetune" else None,
        "top1": result["top1"],
        "top5": result.get("top5"),
        "created_at": job.created_at,
    }


def _best_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: (-e["top1"], e["created_at"], e["job_id"]))


def _group(protocol: str, subset_id: str, jobs: list[Job], methods: dict[str, str]) -> dict[str, Any]:
    # Runs on one subset saw the same images; the first run describes them.
    described = jobs[0].result or {}
    settings = described["protocol"]
    return {
        "protocol": protocol,
        "subset_id": subset_id,
        "label_fraction": settings.get("label_fraction"),
        "labels_per_class": settings.get("labels_per_class"),
        "test_source": settings.get("splits", {}).get("test_source"),
        "entries": _best_first([_entry(j, methods) for j in jobs]),
        "baseline": [],
    }


def _group_order(protocol: str, subset_id: str) -> tuple[int, str, str]:
    rank = PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return rank, protocol, subset_id


def leaderboard(session: Session, *, tenant_id: str, dataset_id: str) -> dict[str, object]:
    """Every succeeded evaluation of the dataset, grouped by (protocol, subset), best top-1 first; groups ordered
    by protocol (knn, linear, finetune, supervised) then subset id. Raises ``Problem`` (404) for a dataset that is
    not the tenant's."""
    dataset = get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    jobs = [
        job
        for job in session.scalars(
            select(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.dataset_id == dataset.id,
                Job.kind == "evaluate",
                Job.status == "succeeded",
            )
            .order_by(Job.created_at, Job.id)
        )
        if _scored(job)
    ]
    sources = {s for j in jobs if (s := (j.result or {}).get("source_model_id"))}
    rows = session.execute(select(Model.id, Model.method).where(Model.tenant_id == tenant_id, Model.id.in_(sources)))
    methods = {model_id: method for model_id, method in rows}
    by_group: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        by_group[_key(job)].append(job)
    groups = [
        _group(protocol, subset, group_jobs, methods)
        for (protocol, subset), group_jobs in sorted(by_group.items(), key=lambda kv: _group_order(*kv[0]))
    ]
    baselines = {g["subset_id"]: g["entries"] for g in groups if g["protocol"] == "supervised"}
    for g in groups:
        if g["protocol"] != "supervised":
            g["baseline"] = baselines.get(g["subset_id"], [])
    return {"dataset_id": dataset.id, "groups": groups}
