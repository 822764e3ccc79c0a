"""Each append learns the end LSN of its own frame, whether it waits from a thread or a loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from opencdp.ingest.log import DurableLog


def test_mixed_thread_and_async_appends_each_get_their_own_lsn(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log")
    list(log.replay(0))
    log.start(lambda entries: None)
    payloads = {f"p{i}".encode() * (i + 1) for i in range(40)}
    got: dict[bytes, int] = {}
    lock = threading.Lock()

    def from_thread(payload: bytes) -> None:
        lsn = log.append_wait(payload, None)
        with lock:
            got[payload] = lsn

    async def from_loop(batch: list[bytes]) -> None:
        lsns = await asyncio.gather(*(log.append_async(p, None) for p in batch))
        with lock:
            got.update(zip(batch, lsns, strict=True))

    ordered = sorted(payloads)
    threads = [threading.Thread(target=from_thread, args=(p,)) for p in ordered[::2]]
    for t in threads:
        t.start()
    asyncio.run(from_loop(ordered[1::2]))
    for t in threads:
        t.join()
    log.close()

    # Replaying the file gives every frame with its end LSN: each append was told exactly that.
    replayed = {payload: lsn for lsn, payload in DurableLog(tmp_path / "log").replay(0)}
    diff = {
        k: (replayed.get(k), got.get(k))
        for k in replayed.keys() | got.keys()
        if replayed.get(k) != got.get(k)
    }
    assert not diff
