"""Keyset (cursor) pagination, one helper for every list: the page after a cursor, ordered by
the primary key, and whether there is more (one row beyond the page is read to know)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session


def keyset_page(
    s: Session, q: Select[Any], key: Any, after: Any, limit: int, *, newest_first: bool
) -> tuple[list[Any], bool]:
    """(rows of the page, has_more) of ``q`` ordered by ``key``, after the cursor ``after``
    (a key value; None: the first page)."""
    if after is not None:
        q = q.where(key < after if newest_first else key > after)
    rows = list(s.scalars(q.order_by(key.desc() if newest_first else key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
