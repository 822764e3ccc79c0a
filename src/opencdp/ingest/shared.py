"""The ingest queue of a deployment whose metadata DB is PostgreSQL: records acknowledged by any
server process are durable in PostgreSQL, not on that server's disk, and one process at a time
(the leader) moves them into the store.

**Appending.** Each process group-commits the records its requests hand it (:class:`GroupCommit`,
as the local log does): one transaction per batch takes the queue's head row, moves it by the
number of frames, inserts the frames under the LSNs it reserved, and commits; only then are the
callers told. The head row's lock is held until the commit, so transactions of all processes
commit in LSN order: whoever sees LSN *n* sees every LSN below it. A reader that follows the
LSNs therefore never skips a frame that commits late.

**Moving into the store.** The process that holds the queue's advisory lock (a session lock, on
a connection of its own) is the leader: its :class:`Tailer` reads the frames after the applied
LSN, in order, and hands them to its flusher, which applies them exactly as it applies the
local log's (the store's marker, progress in the metadata DB, dead letters), then deletes what
it applied. A leader that dies loses its connection and with it the lock; another process takes
over from the progress recorded, and the store's marker keeps it from applying a frame twice.

**Waiting for the store.** :meth:`SharedLog.pending` (the frames not yet applied) bounds the
backlog of every process, and :meth:`SharedLog.barrier` waits until the store holds every frame
committed before it was called, whichever process applies them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from opencdp.faults import describe
from opencdp.ingest.log import GroupCommit, OnWrite
from opencdp.meta import tables as t
from opencdp.meta.progress import INGEST, ProgressLog

log = logging.getLogger(__name__)

_DEAD_LETTERS = (0x4F43_4951, 2)  # the advisory lock of a process keeping dead letters
_LEADER = (0x4F43_4951, 1)  # the advisory lock of the process that moves frames into the store
_PENDING_EVERY = 0.25  # seconds a count of the frames not yet applied is reused
READ_FRAMES = 2000  # frames the leader reads at a time


class SharedLog(GroupCommit):
    """The queue: frames in ``ingest_queue`` under LSNs from the ``ingest_head`` row."""

    def __init__(self, engine: sa.Engine, on_write: OnWrite = lambda problem: None) -> None:
        super().__init__(on_write)
        self.engine = engine
        self._pending = (0.0, 0)  # (when counted, count)

    def open(self, at_least: int = 0) -> None:
        """Make sure the head is at ``at_least`` (what the store holds already): LSNs are
        never handed out twice, whatever the metadata DB went through."""
        with self.engine.begin() as conn:
            head = conn.execute(
                sa.select(t.ingest_head.c.lsn).where(t.ingest_head.c.stream == INGEST)
            ).scalar()
            if head is None:
                conn.execute(sa.insert(t.ingest_head).values(stream=INGEST, lsn=at_least))
            elif head < at_least:
                conn.execute(
                    sa.update(t.ingest_head)
                    .where(t.ingest_head.c.stream == INGEST)
                    .values(lsn=at_least)
                )

    # ---- appending (the group commit's writer thread) -------------------------------------
    def _persist(self, payloads: list[bytes]) -> list[int]:
        count = len(payloads)
        head = t.ingest_head.c
        now = t.utcnow()
        with self.engine.begin() as conn:
            end = conn.execute(
                sa.update(t.ingest_head)
                .where(head.stream == INGEST)
                .values(lsn=head.lsn + count)
                .returning(head.lsn)
            ).scalar_one()
            first = int(end) - count + 1
            # (one statement whatever the batch's size: the frames as two arrays)
            conn.execute(
                sa.text(
                    "INSERT INTO ingest_queue (lsn, payload, created_at) "
                    "SELECT generate_series(CAST(:first AS bigint), CAST(:last AS bigint)), "
                    "unnest(CAST(:payloads AS bytea[])), CAST(:now AS timestamp)"
                ),
                {"first": first, "last": int(end), "payloads": payloads, "now": now},
            )
        return [first + i for i in range(count)]

    # ---- reading (the leader) -------------------------------------------------------------
    def read(self, after: int, limit: int = READ_FRAMES) -> list[tuple[int, bytes]]:
        """The frames after LSN ``after``, in order."""
        q = t.ingest_queue.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(q.lsn, q.payload).where(q.lsn > after).order_by(q.lsn).limit(limit)
            ).all()
        return [(int(lsn), bytes(payload)) for lsn, payload in rows]

    def release(self, applied: int) -> None:
        """Delete the frames the store holds and progress records."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t.ingest_queue).where(t.ingest_queue.c.lsn <= applied))

    def set_aside(self, lsn: int, payload: bytes, reason: str) -> None:
        """Keep a frame that is no record, with the reason, in the dead letters."""
        record = payload.decode("utf-8", "replace")
        self.dead_letter([{"lsn": lsn, "error": reason, "record": record}])

    def dead_letter(self, lines: list[dict[str, Any]]) -> None:
        """Keep records the store refuses, in the metadata DB where every process sees them.

        A frame is dead-lettered whole, once: the lines of a frame (an LSN) already kept are
        not kept again (a frame set aside is not covered by progress, so the next leader meets
        it again)."""
        now = t.utcnow()
        dead = t.ingest_dead_letters.c
        with self.engine.begin() as conn:
            conn.execute(  # (two leaders overlapping for a moment: one at a time)
                sa.text("SELECT pg_advisory_xact_lock(:a, :b)"),
                {"a": _DEAD_LETTERS[0], "b": _DEAD_LETTERS[1]},
            )
            lsns = sorted({int(line["lsn"]) for line in lines})
            kept = set(conn.execute(sa.select(dead.lsn).where(dead.lsn.in_(lsns))).scalars())
            rows = [
                {
                    "lsn": int(line["lsn"]),
                    "error": str(line["error"])[:2000],
                    "record": str(line["record"]),
                    "created_at": now,
                }
                for line in lines
                if int(line["lsn"]) not in kept
            ]
            if rows:
                conn.execute(sa.insert(t.ingest_dead_letters), rows)

    def quarantined(self) -> str | None:
        return None  # (nothing is cut from the queue: frames are whole rows)

    # ---- waiting for the store -------------------------------------------------------------
    def head(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(t.ingest_head.c.lsn).where(t.ingest_head.c.stream == INGEST)
            ).scalar()
        return int(value or 0)

    def pending(self, progress: ProgressLog) -> int:
        """Frames committed and not yet applied (counted at most every quarter second)."""
        when, count = self._pending
        now = time.monotonic()
        if now - when >= _PENDING_EVERY:
            try:
                count = max(0, self.head() - progress.ingest_lsn())
            except Exception:  # the metadata DB is away (health says so): the last count
                return count
            self._pending = (now, count)
        return count

    def barrier(self, progress: ProgressLog, timeout: float, nudge: Callable[[], None]) -> bool:
        """Wait until the store holds every frame committed now; False on timeout."""
        target = self.head()
        deadline = time.monotonic() + timeout
        pause = 0.005
        while progress.ingest_lsn() < target:
            if time.monotonic() >= deadline:
                return False
            nudge()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        self._pending = (0.0, 0)  # (counted afresh next time)
        return True


class Tailer:
    """The leader's reader: holds the queue's advisory lock, then feeds the frames after the
    applied LSN to ``feed`` (the flusher), in order, as they are committed."""

    def __init__(
        self,
        queue: SharedLog,
        feed: Callable[[list[tuple[int, bytes]]], None],
        become_leader: Callable[[], int],
        room: Callable[[], bool],
        interval: float,
        report: Callable[[str | None], None] = lambda problem: None,
    ) -> None:
        self.queue = queue
        self.feed = feed
        self.become_leader = become_leader  # resynchronise; returns the LSN to read after
        self.room = room  # whether the flusher takes more now
        self.interval = interval
        self.report = report  # None: the queue can be read; else why not
        self.problem: str | None = None
        self.leader = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sa.Connection | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-tailer", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._let_go()

    def _run(self) -> None:
        after = 0
        while not self._stop.is_set():
            try:
                if not self.leader:
                    if self._lead():
                        after = self.become_leader()
                else:
                    self._alive()
                frames = self.queue.read(after) if self.leader and self.room() else []
                if frames:
                    self.feed(frames)
                    after = frames[-1][0]
                self._reached(None)
                if len(frames) == READ_FRAMES:
                    continue  # more wait: no pause
            except Exception as exc:  # the metadata DB went away: lead again once it is back
                log.warning("the ingest queue's reader lost the metadata DB: %s", exc)
                self._let_go()
                self._reached(f"cannot reach the ingest queue in the metadata DB ({describe(exc)})")
            self._wake.wait(self.interval)
            self._wake.clear()

    def _reached(self, problem: str | None) -> None:
        """Report whether the queue can be read, when that changes."""
        if problem != self.problem:
            self.problem = problem
            self.report(problem)

    def _lead(self) -> bool:
        """Try to take the leader's lock (on a connection kept while leading)."""
        conn = self.queue.engine.connect()
        try:
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(CAST(:a AS integer), CAST(:b AS integer))"),
                {"a": _LEADER[0], "b": _LEADER[1]},
            ).scalar()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn, self.leader = conn, True
        log.info("this process moves the ingest queue into the store")
        return True

    def _alive(self) -> None:
        """Check the leader's connection (its lock goes with it)."""
        assert self._conn is not None
        self._conn.execute(sa.text("SELECT 1"))
        self._conn.commit()

    def _let_go(self) -> None:
        self.leader = False
        conn, self._conn = self._conn, None
        if conn is not None:
            # Invalidated, not returned to the pool: the session ends, and its advisory lock
            # with it (a pooled connection would keep holding the lock).
            conn.invalidate()
            conn.close()
