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


def claim_and_count(
    url: str, returning: bool | None, per_project: int, start: Any, out: Any
) -> None:
    """Claim jobs under a per-project limit of ``per_project`` running jobs; after each claim
    count the project's running jobs, then finish the job. Put the largest count on ``out``."""
    import sqlalchemy as sa

    from opencdp.meta import tables as t

    engine = connect(url)
    jobs = Jobs(engine, JobLimits(concurrent_per_project=per_project), returning=returning)
    owner = f"process-{os.getpid()}"
    most = 0
    start.wait()
    while (job := jobs.claim(MAIN, owner)) is not None:
        with engine.connect() as conn:
            running = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.jobs)
                .where(t.jobs.c.project_id == job.project_id, t.jobs.c.state == "running")
            ).scalar_one()
        most = max(most, running)
        assert jobs.finish(job.id, owner, Outcome(True, "done"))
    engine.dispose()
    out.put(most)


def submit_many(url: str, project_id: int, count: int, limit: int, start: Any, out: Any) -> None:
    """Submit ``count`` jobs under a queue limit of ``limit`` per project; put the number the
    queue took on ``out``."""
    from opencdp.errors import CdpError

    engine = connect(url)
    jobs = Jobs(engine, JobLimits(queued_per_project=limit))
    taken = 0
    start.wait()
    for _ in range(count):
        with contextlib.suppress(CdpError):  # busy: the queue is full
            jobs.submit(project_id, "work", "test", {})
            taken += 1
    engine.dispose()
    out.put(taken)
