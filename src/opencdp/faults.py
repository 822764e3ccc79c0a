"""Which failures are passing conditions, to be waited out, rather than faults of the data.

A full disk, an I/O error, a locked or invalidated database, a lack of memory: retrying
later can succeed, so nothing may be skipped or given up for them (no dead letter, no
checkpoint moved, no job failed for good). Anything else is about what was being written.
"""

from __future__ import annotations

import sqlalchemy.exc

from opencdp.store.base import Store


def is_transient(exc: BaseException, store: Store | None = None) -> bool:
    """Whether ``exc`` (or what it was raised from) is a passing condition.

    >>> is_transient(OSError(28, "No space left on device"))
    True
    >>> is_transient(ValueError("not a number"))
    False
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | MemoryError | TimeoutError):
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError):
            return True  # SQLite: locked, disk full, I/O error; PostgreSQL: connection lost
        if store is not None and store.transient(current):
            return True
        current = current.__cause__
    return False


def describe(exc: BaseException) -> str:
    """One line naming the condition, for health and the client's message: the driver's own
    words, never a statement or a trace.

    >>> describe(OSError(28, "No space left on device"))
    'No space left on device'
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text[:300]
