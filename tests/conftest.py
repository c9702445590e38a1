"""Shared fixtures: a real PostgreSQL database (migrated once per run), Redis, and small data factories.

Environment: ``JAGA_TEST_DATABASE_URL`` (default: database ``jaga_test`` on the local PostgreSQL, created if
missing) and ``JAGA_TEST_REDIS_URL`` (default: Redis database 15 on localhost).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

TEST_DATABASE_URL = os.environ.get("JAGA_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/jaga_test")
TEST_REDIS_URL = os.environ.get("JAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The precision probes' results (ssl_core.precision) go to a file of this run's, not the user's cache.
os.environ["JAGA_PRECISION_CACHE"] = str(Path(tempfile.mkdtemp(prefix="jaga-precision-")) / "probe.json")
TABLES = (
    "webhook_deliveries",
    "webhook_endpoints",
    "job_events",
    "jobs",
    "models",
    "indexes",
    "datasets",
    "api_keys",
    "tenants",
    "workers",
)


def _create_database(url: str) -> None:
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database})
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{u.database}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> str:
    """A migrated, empty PostgreSQL database for this test run (emptied at the start too: a run that was
    killed never ran its clean-ups, and its rows would show up in the next run's listings)."""
    from migrations import upgrade

    _create_database(TEST_DATABASE_URL)
    upgrade(TEST_DATABASE_URL)
    _truncate(TEST_DATABASE_URL)
    return TEST_DATABASE_URL


def _truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    """Settings on the test database and Redis, with a private queue and artifact root per test."""
    from api.core.settings import Settings

    def _make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            database_url=database_url,
            broker_url=TEST_REDIS_URL,
            data_dir=tmp_path / "data",
            queue_name=f"jaga-test-{uuid.uuid4().hex[:8]}",
        )
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return _make


@pytest.fixture
def clean_database(database_url: str) -> Iterator[str]:
    """For tests whose code commits from several connections (workers): empty every table afterwards."""
    yield database_url
    _truncate(database_url)


@pytest.fixture
def client(settings):  # type: ignore[no-untyped-def]
    """The API on ``settings`` (each test folder defines them), committing for real: for tests where
    workers in other threads or processes must see what the API wrote."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def auth(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A key of tenant ``acme`` on ``settings``' database."""
    from api.core.auth import create_key
    from api.core.db import session_scope

    with session_scope(settings.database_url) as s:
        _, secret = create_key(s, tenant_name="acme")
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def fashion_mnist_available() -> None:
    from ssl_core.fashion_mnist import DEFAULT_ROOT

    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only when asked for (``pytest -m slow``); tests marked ``gpu`` only where CUDA is."""
    import torch

    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(no_gpu)
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
