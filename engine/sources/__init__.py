"""Metric sources: where history comes from.

A source returns the samples in ``(start, end]``; the engine asks for what is
new since its last fetch and keeps the history itself. Built-in: ``csv``,
``replay`` and ``prometheus``; others register under the
``forescale.sources`` entry-point group.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from engine.core.registry import Registry
from engine.core.types import Series


@runtime_checkable
class MetricSource(Protocol):
    def fetch(self, start: datetime | None, end: datetime) -> Series:
        """Samples with ``start < t <= end`` (``start`` None: from the beginning)."""


registry = Registry("metric source", "forescale.sources")
registry.add("csv", "engine.sources.csv:CsvSource")
registry.add("replay", "engine.sources.csv:ReplaySource")
registry.add("prometheus", "engine.sources.prometheus:PrometheusSource")

__all__ = ["MetricSource", "registry"]
