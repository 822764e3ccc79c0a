"""Hypothesis settings for the unit tests.

No per-example deadline: a test never fails on time alone (a slow machine is not a bug).
``CI=1`` derandomizes the runs, so a failure there reproduces anywhere.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("opencdp", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "opencdp")
