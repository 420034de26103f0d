"""Durations and timestamps: parsing and conversion helpers.

Inside arrays, time is int64 epoch seconds (UTC). At API boundaries, a point in
time is an aware ``datetime`` in UTC and a span is a ``timedelta``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BeforeValidator

UTC = timezone.utc

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: ISO 8601, as pydantic writes a timedelta in JSON (``P1D``, ``PT12H30M``, ``PT0.5S``)
_ISO_DURATION = re.compile(r"^\s*P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
                           r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?\s*$")


#: the longest span a config may name: a year and a day covers every window
#: forescale keeps (history, retention, conformal and quality-gate windows),
#: and anything longer is a typo (``99999999999d`` used to overflow timedelta)
MAX_DURATION = timedelta(days=366)


def parse_duration(value: object) -> timedelta:
    """``"5m"``, ``"300s"``, ``"1h"``, ``"2d"``, ``300`` (seconds), a timedelta,
    or ISO 8601 (``"PT12H"``: what a dumped config holds).

    Raises ``ValueError`` with the bad value for anything else: negative,
    not finite, or longer than :data:`MAX_DURATION`.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        if value != value:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(value) if abs(value) < 1e300 else float("inf") * (1 if value > 0 else -1)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        # a long digit string is a float of inf at worst, never an OverflowError
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    elif isinstance(value, str) and (m := _ISO_DURATION.match(value)) and any(m.groups()):
        seconds = sum(float(g) * size for g, size in zip(m.groups(), (604800, 86400, 3600, 60, 1)) if g)
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h, 2d)")
    shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:20]}...({len(str(value))} characters)"
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {shown}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {shown} is longer than {MAX_DURATION.days}d, the longest allowed")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    s = td.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def to_epoch(dt: datetime) -> int:
    """Aware datetime -> int epoch seconds. Naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def from_epoch(seconds: float | int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def isoformat(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """Parse an ISO timestamp (``Z``, offset, or naive = UTC) or epoch seconds."""
    v = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", v):
        return from_epoch(float(v))
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


#: A span in a config file: ``30s``, ``5m``, ``1h``, ``2d`` or seconds,
#: validated by :func:`parse_duration` (every package's configs use this one type).
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def timezone_name(v: str) -> str:
    """``v`` if it names an IANA timezone, else a ValueError saying so."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {v!r} (use an IANA name such as Europe/Berlin)") from None
    return v


#: an IANA timezone name in a config model (checked at load)
Timezone = Annotated[str, AfterValidator(timezone_name)]
