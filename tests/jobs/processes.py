"""What the contract tests run in other OS processes (started with ``spawn``: a fresh
interpreter each, with connections of its own, as a second server has)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from opencdp.jobs.service import MAIN, JobLimits, Jobs, Outcome
from opencdp.meta.db import connect


def claim_all(url: str, returning: bool | None, start: Any, out: Any) -> None:
    """Claim and complete jobs until none is left; put the ids claimed on ``out``."""
    engine = connect(url)
    jobs = Jobs(engine, JobLimits(concurrent_per_project=10_000), returning=returning)
    owner = f"process-{os.getpid()}"
    claimed: list[int] = []
    start.wait()
    while (job := jobs.claim(MAIN, owner)) is not None:
        claimed.append(job.id)
        assert jobs.finish(job.id, owner, Outcome(True, "done"))
    engine.dispose()
    out.put(claimed)


def submit_keys(url: str, project_id: int, keys: list[str], start: Any, out: Any) -> None:
    """Submit one job per key (refused ones: the key was taken); put the ids queued on ``out``."""
    from opencdp.errors import CdpError

    engine = connect(url)
    jobs = Jobs(engine, JobLimits(queued_per_project=10_000))
    queued: list[int] = []
    start.wait()
    for key in keys:
        with contextlib.suppress(CdpError):  # the key was taken
            queued.append(jobs.submit(project_id, "scheduled", "test", {}, dedupe=key).id)
    engine.dispose()
    out.put(queued)
