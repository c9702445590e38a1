"""Reading a tenant's resources: unknown, malformed and foreign ids become 404s; lists share cursor paging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from api.core.ids import looks_like
from api.core.problems import not_found

Row = TypeVar("Row")
MAX_LIMIT = 200


def find_owned(session: Session, model: type[Row], kind: str, *, tenant_id: str, resource_id: str) -> Row | None:
    """The row of ``model`` with ``resource_id`` if it belongs to ``tenant_id``, else None (also for an id
    that is not a ``kind`` id)."""
    row = session.get(model, resource_id) if looks_like(kind, resource_id) else None
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        return None
    return row


def get_owned(session: Session, model: type[Row], kind: str, *, tenant_id: str, resource_id: str) -> Row:
    """Like ``find_owned``, but a 404 that does not say whether the id exists for another tenant."""
    row = find_owned(session, model, kind, tenant_id=tenant_id, resource_id=resource_id)
    if row is None:
        raise not_found(kind, resource_id)
    return row


def paginate(
    session: Session, stmt: Select[Any], id_column: Any, *, after: str | None, limit: int
) -> tuple[list[Any], bool]:
    """Newest first; ``after`` is the last id of the previous page (ids sort by creation time). Returns the
    page's rows and whether more follow."""
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_owned(
    session: Session,
    model: type[Any],
    *,
    tenant_id: str,
    after: str | None,
    limit: int,
    where: Sequence[ColumnElement[bool]] = (),
    **filters: Any,
) -> dict[str, object]:
    """A page of the tenant's rows, newest first, as ``{"data", "has_more", "next_after"}``; ``filters`` are
    column values to match (None: any), ``where`` more conditions."""
    stmt = select(model).where(model.tenant_id == tenant_id, *where)
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, column) == value)
    rows, has_more = paginate(session, stmt, model.id, after=after, limit=limit)
    return {"data": rows, "has_more": has_more, "next_after": rows[-1].id if has_more else None}
