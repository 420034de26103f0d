"""Structured logs: one JSON object per line, with the target and decision
id on every line logged during a cycle.

A cycle runs inside :func:`log_context` (``target``), and the decision id is
added with :func:`set_log_fields` once it is known, so a line logged deep in
a forecaster or an SDK adapter carries them too. ``extra={...}`` on a call
still wins.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Iterator

_fields: ContextVar[dict[str, Any]] = ContextVar("forescale_log_fields", default={})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields for every log line emitted inside the block (this thread)."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def set_log_fields(**fields: Any) -> None:
    """Add fields to the current :func:`log_context` (until it exits)."""
    _fields.set({**_fields.get(), **fields})


class JsonFormatter(logging.Formatter):
    FIELDS = ("target", "decision_id", "mode", "status")

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = _fields.get()
        for f in self.FIELDS:
            v = getattr(record, f, None)
            if v is None:
                v = ctx.get(f)
            if v is not None:
                out[f] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
