"""API tests: the real app on the real PostgreSQL test database, every test rolled back.

Each test's session joins an outer transaction (handlers' commits become savepoints), so nothing a test
writes survives it. Messages go to a private Redis queue no worker reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from api.core.auth import create_key
from api.main import create_app
from tests.api.factories import built_index, ready_dataset, tenant_id, trained_model


@pytest.fixture
def db_session(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(database_url)
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield factory
    finally:
        outer.rollback()
        connection.close()
        engine.dispose()


@pytest.fixture
def settings(make_settings):  # type: ignore[no-untyped-def]
    return make_settings()


@pytest.fixture
def app(settings, db_session):  # type: ignore[no-untyped-def]
    return create_app(settings, make_session=db_session)


@pytest.fixture
def new_key(db_session):  # type: ignore[no-untyped-def]
    def _new(tenant: str = "acme") -> dict[str, str]:
        with db_session() as s:
            _, secret = create_key(s, tenant_name=tenant, name="test")
            s.commit()
        return {"Authorization": f"Bearer {secret}"}

    return _new


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def auth(new_key) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return new_key("acme")


@pytest.fixture
def served(client, db_session):  # type: ignore[no-untyped-def]
    """A ready dataset, a model trained on it and an index of it: (dataset, model, index) rows."""
    store = client.app.state.store
    tenant = tenant_id(db_session)
    ds = ready_dataset(db_session, store, tenant)
    model = trained_model(db_session, store, tenant, ds.id)
    index = built_index(db_session, store, tenant, model, ds.id)
    return ds, model, index
