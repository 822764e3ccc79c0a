"""What the store contract tests share: a project's catalog (the ``Property`` objects a store
is handed), rows built from plain values, and a write turn.

Nothing here knows an engine: every test reaches the store through ``opencdp.store.base``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pyarrow as pa

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.types import PropertyType
from opencdp.store.base import SEGMENT_ROWS, EventRows, ProfileRows, Store, StoreWriter

P = 1  # the project
Q = 2  # another project, for isolation
EMAIL, MOBILE = 10, 11  # identity keys (property ids)
EMAIL_KEY = Property(EMAIL, "user", "email", PropertyType.STRING, True)
MOBILE_KEY = Property(MOBILE, "user", "mobile", PropertyType.STRING, True)
CITY = Property(12, "user", "city", PropertyType.STRING)
SCORE = Property(13, "user", "score", PropertyType.NUMBER)
TAGS = Property(14, "user", "tags", PropertyType.LIST)
VIP = Property(15, "user", "vip", PropertyType.BOOL)
SEEN = Property(16, "user", "seen", PropertyType.DATETIME)
AMOUNT = Property(20, "event", "amount", PropertyType.NUMBER)
OS = Property(21, "event", "os", PropertyType.STRING)
PAID = Property(22, "event", "paid", PropertyType.BOOL)
AT = Property(23, "event", "at", PropertyType.DATETIME)
ITEMS = Property(24, "event", "items", PropertyType.LIST)
USER_PROPS = [EMAIL_KEY, MOBILE_KEY, CITY, SCORE, TAGS, VIP, SEEN]
EVENT_PROPS = [AMOUNT, OS, PAID, AT, ITEMS]
SCHEMA = Schema(P, user={p.name: p for p in USER_PROPS}, event={p.name: p for p in EVENT_PROPS})

T0 = 1_700_000_000_000_000  # epoch µs (2023-11-14 22:13:20 UTC)
SECOND = 1_000_000
Write = Callable[[StoreWriter], Any]


def at(us: int) -> datetime:
    """Epoch µs as the naive UTC datetime a store reads back."""
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


def ms(us: int) -> int:
    return us // 1000


def write(store: Store, *steps: Write, project: int = P) -> list[Any]:
    """One write turn on ``project`` (its tables and the catalog's columns ensured first)."""
    with store.writer() as w:
        w.ensure_project(project)
        w.ensure_columns(project, [*USER_PROPS, *EVENT_PROPS])
        return [step(w) for step in steps]


def profiles(rows: list[tuple[int, int, dict[int, Any]]]) -> ProfileRows:
    """``(user id, touched at µs, {property id: value})`` rows."""
    return ProfileRows([u for u, _, _ in rows], [t for _, t, _ in rows], [v for _, _, v in rows])


class Event(NamedTuple):
    event_id: str
    user_id: int
    name: str = "pay"
    time: int = T0
    received: int = T0 + SECOND
    values: Mapping[int, Any] | None = None


def event_rows(rows: Sequence[Event]) -> EventRows:
    return EventRows(
        [e.event_id for e in rows],
        [e.name for e in rows],
        [e.time for e in rows],
        [e.received for e in rows],
        [e.user_id for e in rows],
        [dict(e.values or {}) for e in rows],
    )


def values(store: Store, user_id: int, project: int = P) -> dict[int, Any] | None:
    row = store.profile(project, user_id, USER_PROPS)
    return None if row is None else dict(row["values"])


def members(user_ids: Sequence[int], tags: Sequence[str | None] | None = None) -> pa.Table:
    """Segment rows (:data:`SEGMENT_ROWS`)."""
    tag_values = list(tags) if tags is not None else [None] * len(user_ids)
    return pa.table({"user_id": list(user_ids), "tag_value": tag_values}, SEGMENT_ROWS)


def import_rows(
    lookup: Sequence[str | int | None],
    columns: Mapping[str, pa.Array] | None = None,
    touched: int = T0,
) -> pa.Table:
    """A batch for ``import_profiles``: row numbers from 1, ``lookup`` values (text: an identity
    key's; int: user ids), ``_touched`` and the given columns (``_k<id>`` or a property's)."""
    n = len(lookup)
    is_id = any(isinstance(v, int) for v in lookup)
    data: dict[str, pa.Array] = {
        "_row": pa.array(range(1, n + 1), pa.int64()),
        "_lookup": pa.array(lookup, pa.int64() if is_id else pa.string()),
        "_touched": pa.array([touched] * n, pa.timestamp("us")),
        **(columns or {}),
    }
    return pa.table(data)


def on_list(
    w: StoreWriter, list_id: int, user_ids: Sequence[int], touched: int = T0, project: int = P
) -> None:
    """Put existing users on a static list: an import by user id that sets no property (it
    marks them updated at ``touched``)."""
    rows = import_rows(list(user_ids), touched=touched)
    out = w.import_profiles(project, rows, None, [], [], False, True, list_id)
    assert not out.failures, out.failures
