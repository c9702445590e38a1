"""API keys of any scope for tests, made with the project's own ``create_key``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.core.auth import create_key
from api.core.models import ApiKey


def scoped_key(
    factory: sessionmaker[Session], scope: str = "write", tenant: str = "acme", **fields: Any
) -> tuple[ApiKey, dict[str, str]]:
    """A committed key of ``tenant`` and the headers that send it."""
    with factory() as s:
        key, secret = create_key(s, tenant_name=tenant, name=f"{scope} key", scope=scope, **fields)
        s.commit()
    return key, {"Authorization": f"Bearer {secret}"}
