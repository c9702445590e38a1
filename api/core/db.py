"""Engine and session factory, built from the settings; SQLite gets WAL and a busy timeout because the
API and the worker write to it from separate processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

#: What a database that is down, restarting or (SQLite) locked raises: worth retrying later, never a job's fault.
UNAVAILABLE = (OperationalError, InterfaceError)


#: Connections an engine keeps open; as many again may open briefly past them (a session nested in another).
#: The API runs at most this many blocking calls at once (``api.main``), so a poll never opens a connection.
POOL_SIZE = 10


def make_engine(url: str, pool_size: int = POOL_SIZE) -> Engine:
    # Connections past the pool are closed on return: a new one per request under load, costly on both backends.
    pool: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size}
    if url.startswith("sqlite"):
        if make_url(url).database in (None, "", ":memory:"):
            pool = {}  # one in-memory database per connection: SQLAlchemy's own pool for it
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@lru_cache
def engine_for(url: str, pool_size: int = POOL_SIZE) -> Engine:
    return make_engine(url, pool_size)


def session_factory(url: str, pool_size: int = POOL_SIZE) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url, pool_size), expire_on_commit=False)


@contextmanager
def session_scope(url: str, pool_size: int = POOL_SIZE) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url, pool_size)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
