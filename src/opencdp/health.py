"""What the server cannot do right now: the problems that health and metrics report.

Components report a problem when a promise cannot be kept (the ingest log cannot write, the
store refuses writes, damaged log bytes were set aside) and clear it when it can again. The
health endpoints answer ``degraded`` with the reasons while any problem stands, and
``/metrics`` carries one ``opencdp_degraded`` gauge per component.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Components whose state is worked out when asked (e.g. a thread that must be alive).
Probe = Callable[[], str | None]


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, tuple[str, float]] = {}  # component -> (reason, since)
        self._probes: dict[str, Probe] = {}

    def fail(self, component: str, reason: str) -> None:
        with self._lock:
            since = self._problems.get(component, (reason, time.time()))[1]
            self._problems[component] = (reason, since)

    def ok(self, component: str) -> None:
        if component in self._problems:
            with self._lock:
                self._problems.pop(component, None)

    def probe(self, component: str, check: Probe) -> None:
        """``check`` returns a reason while the component is unwell, else None."""
        self._probes[component] = check

    def problems(self) -> dict[str, str]:
        with self._lock:
            out = {c: reason for c, (reason, _) in self._problems.items()}
        for component, check in self._probes.items():
            reason = check()
            if reason:
                out[component] = reason
        return dict(sorted(out.items()))

    @property
    def status(self) -> str:
        return "degraded" if self.problems() else "ok"

    def collector(self, components: tuple[str, ...]) -> Collector:
        return _Gauge(self, components)


class _Gauge(Collector):
    def __init__(self, health: Health, components: tuple[str, ...]) -> None:
        self.health = health
        self.components = components

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "opencdp_degraded",
            "1 while a component cannot keep its promises (see /admin/v1/health for why)",
            labels=["component"],
        )
        problems = self.health.problems()
        for component in sorted({*self.components, *problems}):
            gauge.add_metric([component], 1.0 if component in problems else 0.0)
        yield gauge
