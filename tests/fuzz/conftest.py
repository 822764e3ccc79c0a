"""Hypothesis settings for the fuzz tests: a bounded number of examples, never a deadline.

Every example is a request to a live server, so the counts are kept small (the whole module
runs in well under a minute); ``CI=1`` derandomizes the runs, so a failure there reproduces
anywhere.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz-ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("fuzz-ci" if os.environ.get("CI") else "fuzz")
