"""The store's single writer is shared fairly: turns are served in the order they are asked
for, so a loop that writes batch after batch (an import) cannot starve the ingest flusher or a
segment refresh (store/duckdb.py, store/fairlock.py), over a real DuckDB file."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from opencdp.store.duckdb import DuckDBStore
from opencdp.store.fairlock import FairLock


@pytest.fixture
def store(tmp_path: Path) -> DuckDBStore:
    return DuckDBStore(str(tmp_path / "store.duckdb"))


def wait_for_waiters(lock: FairLock, count: int) -> None:
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while lock.waiting < count:
        assert time.monotonic() < deadline, "the other writer never asked"
        time.sleep(0.001)


def test_a_writer_that_asks_during_a_turn_goes_before_the_next_turn(store: DuckDBStore) -> None:
    lock = store._write_lock
    assert isinstance(lock, FairLock)
    for trial in range(10):
        order: list[str] = []

        def flusher(n: int = trial, order: list[str] = order) -> None:
            with store.writer() as w:
                w.set_checkpoint("flusher", n)
                order.append("flusher")

        other = threading.Thread(target=flusher)
        with store.writer() as w:  # the import's first turn
            w.set_checkpoint("import", 0)
            order.append("import")
            other.start()
            wait_for_waiters(lock, 1)
        for i in range(1, 20):  # the import asks again at once, turn after turn
            with store.writer() as w:
                w.set_checkpoint("import", i)
                order.append("import")
        other.join()
        assert order.index("flusher") == 1, order
    assert store.checkpoint("flusher") == 9


def test_turns_follow_arrival_order_with_many_waiters() -> None:
    lock = FairLock()
    order: list[int] = []
    threads = []
    with lock:
        for n in range(8):
            th = threading.Thread(
                target=lambda n=n: lock.acquire() or order.append(n) or lock.release()
            )
            th.start()
            wait_for_waiters(lock, n + 1)
            threads.append(th)
    for th in threads:
        th.join()
    assert order == list(range(8))
    assert lock.waiting == 0


def test_a_waiter_interrupted_while_it_waits_gives_its_turn_up() -> None:
    """A thread interrupted in acquire (a signal, KeyboardInterrupt) leaves the queue moving."""
    lock = FairLock()
    held, release = threading.Event(), threading.Event()
    got: list[str] = []

    class GiveUp(Exception):
        pass

    def give_up(signum: int, frame: object) -> None:
        raise GiveUp

    def holder() -> None:
        with lock:
            held.set()
            release.wait()

    def interrupt(main: int) -> None:
        wait_for_waiters(lock, 1)  # the main thread waits for its turn
        signal.pthread_kill(main, signal.SIGUSR1)

    def patient() -> None:
        with lock:
            got.append("patient")

    previous = signal.signal(signal.SIGUSR1, give_up)
    try:
        first = threading.Thread(target=holder)
        first.start()
        held.wait()
        threading.Thread(target=interrupt, args=(threading.get_ident(),)).start()
        with pytest.raises(GiveUp):
            lock.acquire()
        second = threading.Thread(target=patient)
        second.start()
        wait_for_waiters(lock, 1)
        release.set()
        first.join()
        second.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == ["patient"] and lock.waiting == 0
