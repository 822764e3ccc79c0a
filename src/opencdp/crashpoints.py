"""Named points between the steps of a flush and of an import batch, where a test makes the
process crash.

The steps are named in :data:`FLUSH` and :data:`IMPORT_BATCH`; code calls :func:`reached`
with a step's name right after the step. Nothing is armed in a server, and then
:func:`reached` is one test of an empty dict. A test arms a point in this process
(:func:`arm`: raise :class:`Crash`, which no handler catches, or exit at once), or in a
server it starts, through the environment: ``OPENCDP_CRASH_AT=<point>`` makes the process
``os._exit`` the first time it gets there, as a ``kill -9`` would stop it.

>>> arm("flush.store_written")
>>> reached("flush.read")
>>> reached("flush.store_written")
Traceback (most recent call last):
...
opencdp.crashpoints.Crash: crash at flush.store_written
>>> disarm()
"""

from __future__ import annotations

import os
import sys
from typing import Literal

# The steps of a flush, each named by what has just been done: the batch was taken from the
# log; its identities were resolved (inside the store's write); the store holds its rows (and,
# with transactions, its marker); the store holds its marker; the metadata DB holds the LSN
# applied; the log segments below it are released.
FLUSH = (
    "flush.read",
    "flush.resolved",
    "flush.rows_written",
    "flush.store_written",
    "flush.progress_recorded",
    "flush.log_released",
)
# The steps of an import batch: read from the file; prepared (typed, validated); written to
# the store with its marker; its failed and warned rows appended to the job's files; its
# progress recorded in the metadata DB; reported on the job.
IMPORT_BATCH = (
    "import.read",
    "import.prepared",
    "import.store_written",
    "import.rows_appended",
    "import.progress_recorded",
    "import.reported",
)
POINTS = frozenset(FLUSH + IMPORT_BATCH)
ENV = "OPENCDP_CRASH_AT"
EXIT_CODE = 86  # what a process crashed at a point exits with

Action = Literal["raise", "exit"]
_armed: dict[str, Action] = {}


class Crash(BaseException):
    """A crash injected at a named point: a BaseException, so that no ``except Exception``
    handles it and nothing after the point runs."""


def arm(point: str, action: Action = "raise") -> None:
    if point not in POINTS:
        raise ValueError(f"no crash point {point!r}")
    _armed[point] = action


def disarm() -> None:
    _armed.clear()


def reached(point: str) -> None:
    """Called right after the step ``point`` names; crashes there when it is armed."""
    if not _armed:
        return
    action = _armed.get(point)
    if action is None:
        return
    if action == "exit":
        sys.stderr.write(f"crash point {point}: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    raise Crash(f"crash at {point}")


def _from_environment() -> None:
    point = os.environ.get(ENV)
    if point:
        arm(point, "exit")


_from_environment()
