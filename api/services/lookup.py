"""Reading a tenant's resources: one place that turns unknown, malformed and foreign ids into 404s."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.ids import looks_like
from api.core.problems import not_found
from api.schemas import paginate

Row = TypeVar("Row")


def get_owned(session: Session, model: type[Row], kind: str, *, tenant_id: str, resource_id: str) -> Row:
    """The row of ``model`` with ``resource_id`` if it belongs to ``tenant_id``; otherwise a 404 that does not
    say whether the id exists for another tenant."""
    row = session.get(model, resource_id) if looks_like(kind, resource_id) else None
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        raise not_found(kind, resource_id)
    return row


def list_owned(session: Session, model: type[Any], *, tenant_id: str, after: str | None, limit: int,
               **filters: Any) -> dict[str, object]:
    """A page of the tenant's rows, newest first, as ``{"data", "has_more", "next_after"}``."""
    stmt = select(model).where(model.tenant_id == tenant_id)
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, column) == value)
    rows, has_more = paginate(session, stmt, model.id, after, limit)
    return {"data": rows, "has_more": has_more, "next_after": rows[-1].id if has_more else None}
