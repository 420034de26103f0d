"""Metric sources: where history comes from.

A source returns the samples in ``(start, end]``; the engine asks for what is
new since its last fetch and keeps the history itself. Built-in: ``csv``,
``replay`` and ``prometheus``; others register under the
``forescale.sources`` entry-point group.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from engine.core.plugins import check_capabilities
from engine.core.registry import Registry
from engine.core.types import Series


@runtime_checkable
class MetricSource(Protocol):
    def fetch(self, start: datetime | None, end: datetime) -> Series:
        """Samples with ``start < t <= end`` (``start`` None: from the beginning)."""


def _check(name: str, obj: object) -> None:
    from engine.core.errors import PluginError

    if not hasattr(obj, "fetch"):
        raise PluginError(f"metric source {name!r} ({obj!r}) lacks 'fetch'")
    check_capabilities("metric source", name, obj)


registry = Registry("metric source", "forescale.sources")
registry.add("csv", "engine.sources.csv:CsvSource")
registry.add("replay", "engine.sources.csv:ReplaySource")
registry.add("prometheus", "engine.sources.prometheus:PrometheusSource")
registry.add_validator(_check)

__all__ = ["MetricSource", "registry"]
