"""Calendar events: declared spans and public holidays that raise capacity.

``policy.calendar`` declares what the forecast cannot know from history
alone: a sale, a batch window, a public holiday. Each event gives an
``uplift`` (the forecast is multiplied by it while the event lasts) or a
``min_capacity`` (capacity is at least this while it lasts), or both. Times
are local wall-clock times in ``calendar.timezone`` (an IANA name; an
explicit offset in the text wins), so a weekly ``09:00`` stays 09:00 across
daylight saving.

- A declared event is ``start`` .. ``end`` (or ``start`` + ``duration``),
  repeated every ``every`` (``1d``, ``1w``, ...) until ``until`` when given,
  on the local ``weekdays`` listed (if any).
- ``holidays``: every public holiday of ``country`` (and ``subdivision``)
  is an event from local midnight to the next, from the ``holidays``
  package (it comes with the ``prophet`` extra, or alone with
  ``pip install 'forescale[holidays]'``).

Combined with max semantics: where several events overlap, the largest
uplift and the largest minimum apply. Events only ever raise capacity
(``uplift >= 1``); a quiet day is left to the forecast.

Pure: the policy asks :meth:`Calendar.occurrences` for the events over a
span of epoch seconds; nothing here reads a clock or does I/O (the holiday
tables are data inside the ``holidays`` package, imported lazily and
memoized per country and year).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.core.checks import repeated
from engine.core.types import Forecast, Step
from engine.core.units import Duration, Timezone

#: the largest uplift an event may declare (a typo such as 150 for 1.5 is an error)
MAX_UPLIFT = 100.0
#: at most this many occurrences of one recurring event are expanded per query
MAX_OCCURRENCES = 10_000
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOLIDAYS_HINT = "pip install 'forescale[holidays]' (or the prophet extra, which includes it)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Effect(_Model):
    #: multiply the forecast (point and quantiles) by this while the event lasts
    uplift: float | None = Field(None, ge=1.0, le=MAX_UPLIFT)
    #: at least this much capacity (replicas, or a ladder rung index) while it lasts
    min_capacity: int | None = Field(None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _some_effect(self) -> "_Effect":
        if self.uplift is None and self.min_capacity is None:
            raise ValueError("give uplift or min_capacity (or both)")
        return self


class Event(_Effect):
    """One declared event, optionally recurring."""

    name: str = Field(min_length=1, max_length=200)
    #: local wall time in the calendar's timezone (``2026-11-27T08:00``, or a date)
    start: datetime
    end: datetime | None = None
    duration: Duration | None = None
    #: repeat every this long (``1d``, ``1w``), from ``start``
    every: Duration | None = None
    #: no occurrence starts after this (local time)
    until: datetime | None = None
    #: only occurrences starting on these local weekdays (``[mon, tue, wed,
    #: thu, fri]`` with ``every: 1d``: business days); empty: every one
    weekdays: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = ()

    @field_validator("start", "end", "until", mode="before")
    @classmethod
    def _date_is_midnight(cls, v: Any) -> Any:
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime(v.year, v.month, v.day)
        return v

    @model_validator(mode="after")
    def _span(self) -> "Event":
        if (self.end is None) == (self.duration is None):
            raise ValueError(f"event {self.name!r}: give end or duration (one of them)")
        for other in (self.end, self.until):
            if other is not None and (self.start.tzinfo is None) != (other.tzinfo is None):
                raise ValueError(f"event {self.name!r}: give start, end and until all with or all without "
                                 "an offset")
        length = self.length
        if length <= timedelta(0):
            if self.end is None:
                raise ValueError(f"event {self.name!r}: duration must be longer than zero")
            raise ValueError(f"event {self.name!r}: end ({self.end}) is not after start ({self.start})")
        if self.weekdays and self.every is None:
            raise ValueError(f"event {self.name!r}: weekdays need a recurrence (every: 1d)")
        if self.every is not None:
            if self.every <= timedelta(0):
                raise ValueError(f"event {self.name!r}: every ({self.every}) must be positive")
            if length > self.every:
                raise ValueError(f"event {self.name!r}: lasts {length}, longer than it repeats (every {self.every})")
        return self

    @property
    def length(self) -> timedelta:
        return self.duration if self.duration is not None else self.end - self.start  # type: ignore[operator]


class Holidays(_Effect):
    """The public holidays of a country (whole local days)."""

    #: ISO 3166 code, e.g. ``US``, ``DE``, ``CN``
    country: str = Field(min_length=2, max_length=3)
    #: a state or province code where holidays differ (``BY``, ``CA``)
    subdivision: str | None = None

    @model_validator(mode="after")
    def _known(self) -> "Holidays":
        holiday_dates(self.country, self.subdivision, 2026)  # raises naming the country
        return self


@dataclass(frozen=True)
class Occurrence:
    """One event in force from ``start`` to ``end`` (epoch seconds, end excluded)."""

    name: str
    start: int
    end: int
    uplift: float | None
    min_capacity: int | None


class Calendar(_Model):
    """``policy.calendar``: declared events and public holidays."""

    #: IANA timezone of the events' local times and of the holidays' days
    timezone: Timezone = "UTC"
    events: tuple[Event, ...] = ()
    holidays: Holidays | None = None

    @model_validator(mode="after")
    def _unique(self) -> "Calendar":
        names = [e.name for e in self.events]
        dup = repeated(names)
        if dup:
            raise ValueError(f"event names must be unique, repeated: {dup}")
        return self

    @property
    def empty(self) -> bool:
        return not self.events and self.holidays is None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def occurrences(self, t0: float, t1: float) -> tuple[Occurrence, ...]:
        """Every event in force at some time of ``[t0, t1)`` (epoch seconds),
        sorted by start."""
        if self.empty or t1 <= t0:
            return ()
        tz = self.tz
        out: list[Occurrence] = []
        for ev in self.events:
            out.extend(_expand(ev, tz, t0, t1))
        if self.holidays is not None:
            h = self.holidays
            first, last = _local(t0, tz).date(), _local(t1, tz).date()
            for year in range(first.year, last.year + 1):
                for day, name in holiday_dates(h.country, h.subdivision, year):
                    if first <= day <= last:
                        a = _epoch(datetime(day.year, day.month, day.day), tz)
                        b = _epoch(datetime(day.year, day.month, day.day) + timedelta(days=1), tz)
                        if a < t1 and b > t0:
                            out.append(Occurrence(f"{name} ({h.country})", a, b, h.uplift, h.min_capacity))
        return tuple(sorted(out, key=lambda o: (o.start, o.name)))

    def clock(self, t: float) -> str:
        """``2026-11-27 14:00 CET``: an epoch second in the calendar's timezone."""
        return _local(t, self.tz).strftime("%Y-%m-%d %H:%M %Z")


def _local(t: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc).astimezone(tz)


def _epoch(local: datetime, tz: ZoneInfo) -> int:
    """A wall time (naive: in ``tz``; aware: as given) -> epoch seconds."""
    aware = local if local.tzinfo is not None else local.replace(tzinfo=tz)
    return int(aware.timestamp())


def _expand(ev: Event, tz: ZoneInfo, t0: float, t1: float) -> list[Occurrence]:
    """The occurrences of ``ev`` overlapping ``[t0, t1)``. A recurrence steps
    in local wall time (a weekly 09:00 stays 09:00 across daylight saving)."""
    length = ev.length

    def occ(start: datetime) -> Occurrence:
        return Occurrence(ev.name, _epoch(start, tz), _epoch(start + length, tz), ev.uplift, ev.min_capacity)

    if ev.every is None:
        o = occ(ev.start)
        return [o] if o.start < t1 and o.end > t0 else []
    step = ev.every.total_seconds()
    s0 = _epoch(ev.start, tz)
    # a few steps of slack either side for the hours daylight saving shifts
    k0 = max(0, int((t0 - s0 - length.total_seconds()) // step) - 1)
    k1 = int((t1 - s0) // step) + 2
    days = {WEEKDAYS.index(d) for d in ev.weekdays}
    out = []
    for k in range(k0, min(k1, k0 + MAX_OCCURRENCES)):
        start = ev.start + k * ev.every
        if ev.until is not None and start > ev.until:
            break
        if days and start.weekday() not in days:
            continue
        o = occ(start)
        if o.start < t1 and o.end > t0:
            out.append(o)
    return out


@functools.lru_cache(maxsize=256)
def holiday_dates(country: str, subdivision: str | None, year: int) -> tuple[tuple[date, str], ...]:
    """The public holidays of ``country`` in ``year``, as (date, name),
    from the ``holidays`` package (a clear error naming the extra when it is
    not installed, and the country when it is unknown)."""
    try:
        import holidays
    except ImportError:
        raise ValueError(f"calendar.holidays needs the holidays package: {HOLIDAYS_HINT}") from None
    try:
        table = holidays.country_holidays(country, subdiv=subdivision, years=year)
    except NotImplementedError:
        if subdivision is not None and country in holidays.list_supported_countries():
            subs = holidays.list_supported_countries()[country]
            shown = ", ".join(subs[:12]) + (", ..." if len(subs) > 12 else "")
            raise ValueError(f"holidays: {country} has no subdivision {subdivision!r}"
                             + (f" (its subdivisions: {shown})" if subs else " (it has none)")) from None
        raise ValueError(f"holidays: unknown country {country!r} (an ISO 3166 code such as US, DE, CN)") from None
    except Exception as exc:  # the package raises its own errors for a bad subdivision
        raise ValueError(f"holidays: {country}/{subdivision}: {exc}") from None
    return tuple(sorted((d, str(n)) for d, n in table.items()))


# --------------------------------------------------------------- applied to the policy
def uplift_factors(timestamps: np.ndarray, occ: tuple[Occurrence, ...]) -> np.ndarray:
    """The uplift in force at each epoch second (1.0 outside every event; the
    largest where several overlap)."""
    f = np.ones(timestamps.size, dtype=float)
    for o in occ:
        if o.uplift is not None:
            inside = (timestamps >= o.start) & (timestamps < o.end)
            f[inside] = np.maximum(f[inside], o.uplift)
    return f


def floors(timestamps: np.ndarray, occ: tuple[Occurrence, ...]) -> np.ndarray:
    """The minimum capacity in force at each epoch second (0 outside events)."""
    out = np.zeros(timestamps.size, dtype=np.int64)
    for o in occ:
        if o.min_capacity is not None:
            inside = (timestamps >= o.start) & (timestamps < o.end)
            out[inside] = np.maximum(out[inside], o.min_capacity)
    return out


def strongest(occ: tuple[Occurrence, ...], key: str) -> Occurrence | None:
    """The occurrence with the largest ``uplift`` or ``min_capacity``."""
    have = [o for o in occ if getattr(o, key) is not None]
    return max(have, key=lambda o: getattr(o, key)) if have else None




def uplifted(forecast: Forecast, occ: tuple[Occurrence, ...]) -> Forecast:
    """``forecast`` with its point and every quantile multiplied by the uplift
    in force at each of its timestamps (the same object when none applies)."""
    f = uplift_factors(forecast.timestamps, occ)
    if np.all(f == 1.0):
        return forecast
    return replace(forecast, point=forecast.point * f,
                   quantiles={lv: v * f for lv, v in forecast.quantiles.items()})


def _span_text(o: Occurrence, cal: Calendar) -> str:
    return f"{o.name!r} ({cal.clock(o.start)} .. {cal.clock(o.end)})"


def uplift_step(raw: tuple[float, float], upper: float, occ: tuple[Occurrence, ...], cal: Calendar,
                t0: float, t1: float) -> Step | None:
    """The ``event`` step recording an uplift over the lead window
    ``[t0, t1]`` (``raw``: the window's upper and point before it); None
    when no uplifting event overlaps the window."""
    inside = tuple(o for o in occ if o.start <= t1 and o.end > t0)
    top = strongest(inside, "uplift")
    if top is None:
        return None
    return Step("event", upper, "EventUplift",
                f"event {_span_text(top, cal)} uplift x{top.uplift:g}: window upper {raw[0]:.4g} -> {upper:.4g}",
                changed=upper != raw[0])


def floor_step(value: int, occ: tuple[Occurrence, ...], cal: Calendar, t0: float, t1: float) -> Step | None:
    """The ``event`` step for minimum capacities: an event in force at some
    time of ``[t0, t1]`` (now until the end of the lead window: what is
    decided now serves then, and capacity removed now is gone at once) holds
    capacity at or above its ``min_capacity``. None when no such event."""
    inside = tuple(o for o in occ if o.start <= t1 and o.end > t0)
    top = strongest(inside, "min_capacity")
    if top is None:
        return None
    floor = int(top.min_capacity)  # type: ignore[arg-type]
    if value < floor:
        return Step("event", floor, "EventMinCapacity",
                    f"event {_span_text(top, cal)} needs at least {floor}: raised from {value}", changed=True)
    return Step("event", value, "EventMinCapacityMet",
                f"event {_span_text(top, cal)} needs at least {floor}: {value} already is")


__all__ = ["Calendar", "Event", "Holidays", "Occurrence", "floor_step", "floors", "holiday_dates", "strongest",
           "uplift_factors", "uplift_step", "uplifted"]
