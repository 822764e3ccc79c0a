"""A lock that serves its waiters in the order they came (a ticket lock).

``threading.Lock`` is not fair: a thread that releases it and asks again at once (an import
writing batch after batch) usually gets it back before a waiting thread has even woken up, so
the ingest flusher or a segment refresh can wait for many turns. With this lock a thread that
asks while another holds it is served before anyone who asks later: between two turns of a
long import, every writer that was already waiting gets one.
"""

from __future__ import annotations

import threading
from types import TracebackType


class FairLock:
    """A FIFO mutual-exclusion lock; not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # the ticket the next caller takes
        self._serving = 0  # the ticket that holds the lock, or may take it now
        self._abandoned: set[int] = set()  # tickets whose waiter gave up (an exception)

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while ticket != self._serving:
                    self._cond.wait()
            except BaseException:
                # Interrupted while waiting: give the turn up, so the queue does not stall.
                if ticket == self._serving:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise

    def release(self) -> None:
        with self._cond:
            self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """How many threads wait for the lock (not counting the holder)."""
        with self._cond:
            return max(0, self._next - self._serving - 1 - len(self._abandoned))

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
