"""Worker tests: the API (committing for real) submits jobs, the test calls ``run_job`` directly."""

from __future__ import annotations

import pytest

from tests.helpers import class_folder_zip
from tests.worker.helpers import ingest


@pytest.fixture
def settings(make_settings, clean_database):  # type: ignore[no-untyped-def]
    return make_settings(heartbeat_seconds=0.2, lease_seconds=5)


@pytest.fixture
def sent() -> list[str]:
    """Job ids the code under test sent."""
    return []


@pytest.fixture
def run(settings, sent):  # type: ignore[no-untyped-def]
    from worker.runner import run_job

    def _run(job_id: str, **kwargs: object) -> str | None:
        return run_job(job_id, settings=settings, send=lambda j: sent.append(j) or True, **kwargs)

    return _run


@pytest.fixture
def dataset(client, auth, run) -> dict:  # type: ignore[no-untyped-def]
    """A ready dataset of 32 grayscale 16 px images in two classes."""
    ds = ingest(client, auth, run, class_folder_zip(n_per_class=16, size=16))
    assert ds["status"] == "ready"
    return ds
