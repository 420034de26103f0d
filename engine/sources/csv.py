"""CSV metric source and the replay source built on it.

Format: a header with ``timestamp`` and ``value`` columns (others ignored),
one sample per row. Timestamps in any of the three forms of the shared traces:
``2013-07-01T00:05:00Z`` (UTC), ``2014-02-14T14:30:00`` (no zone: taken as
UTC), or integer seconds (Unix time, or relative to the trace start — both
are just epoch seconds here).

Handling, documented and tested:

- unsorted rows: sorted by time;
- duplicate timestamps: their values are averaged;
- empty value, ``NaN``: a missing sample (a gap), kept as NaN;
- gaps (missing rows): left missing; the engine resamples onto its interval
  grid and the empty bins become NaN;
- negative values, ``inf``, unparsable cells, a cell beyond the header's
  columns and an integer timestamp that cannot be seconds (negative, or
  past the year 9999: epoch milliseconds): a :class:`DataError` that
  names the file, the line and the value (nothing is silently dropped).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from engine.core.errors import DataError
from engine.core.plugins import Capabilities
from engine.core.types import Series
from engine.core.units import parse_time, to_epoch


class CsvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["csv"] = "csv"
    path: Path
    timestamp_column: str = "timestamp"
    value_column: str = "value"


#: 9999-12-31T23:59:59Z: the last second a timestamp can name
_MAX_EPOCH_S = 253_402_300_799


def _parse_timestamp(cell: str) -> int:
    c = cell.strip()
    if not c:
        raise ValueError("empty timestamp")
    if c.lstrip("-").isdigit():
        t = int(c)
        if t < 0:
            raise ValueError(f"timestamp {c} is negative (integer timestamps are seconds since 1970 or "
                             "since the trace's start)")
        if t > _MAX_EPOCH_S:
            raise ValueError(f"timestamp {c} is past the year 9999 read as seconds; integer timestamps are "
                             "seconds (epoch milliseconds? divide by 1000)")
        return t
    try:
        return to_epoch(parse_time(c))
    except ValueError as exc:
        raise ValueError(f"unparsable timestamp {c!r}") from exc


def _undecodable_line(source: str | Path | io.TextIOBase, label: str) -> str:
    """``file:line`` of the first byte that is not UTF-8 (the decoder reads
    ahead in chunks, so the reader's own line count may be short of it)."""
    if not isinstance(source, (str, Path)):
        return label
    try:
        Path(source).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        return f"{label}:{line}"
    except OSError:
        pass
    return label


def read_csv(source: str | Path | io.TextIOBase, *, timestamp_column: str = "timestamp",
             value_column: str = "value", name: str | None = None) -> Series:
    """Read a ``timestamp,value`` CSV into a :class:`Series` (see module doc)."""
    label = str(source) if isinstance(source, (str, Path)) else (name or "<csv>")
    try:
        fh = open(source, newline="", encoding="utf-8") if isinstance(source, (str, Path)) else source
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror}", label) from exc
    ts: list[int] = []
    vs: list[float] = []
    try:
        with fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError("empty file (expected a header 'timestamp,value')", label) from None
            header = [h.strip().lstrip("\ufeff") for h in header]
            try:
                ti, vi = header.index(timestamp_column), header.index(value_column)
            except ValueError:
                raise DataError(
                    f"header {header} lacks the columns {timestamp_column!r} and {value_column!r}",
                    f"{label}:1") from None
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(ti, vi) or (len(row) > len(header) and any(c.strip() for c in row[len(header):])):
                    # too few to read, or a cell beyond the header's columns
                    # (a value nothing would read: not dropped silently)
                    raise DataError(f"expected {len(header)} columns, got {len(row)}: {row}", f"{label}:{lineno}")
                try:
                    t = _parse_timestamp(row[ti])
                except ValueError as exc:
                    raise DataError(str(exc), f"{label}:{lineno}") from None
                cell = row[vi].strip()
                if cell == "" or cell.lower() in ("nan", "null", "none"):
                    v = float("nan")
                else:
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DataError(f"value {cell!r} is not a number", f"{label}:{lineno}") from None
                    if np.isinf(v):
                        raise DataError(f"value {cell!r} is infinite", f"{label}:{lineno}")
                    if v < 0:
                        raise DataError(f"value {cell} is negative (demand cannot be)", f"{label}:{lineno}")
                ts.append(t)
                vs.append(v)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", _undecodable_line(source, label)) from None
    if not ts:
        raise DataError("no data rows", label)
    t_arr = np.asarray(ts, dtype=np.int64)
    v_arr = np.asarray(vs, dtype=np.float64)
    if t_arr.size > 1 and np.any(np.diff(t_arr) <= 0):
        order = np.argsort(t_arr, kind="stable")
        t_arr, v_arr = t_arr[order], v_arr[order]
        uniq, inv = np.unique(t_arr, return_inverse=True)
        if uniq.size != t_arr.size:  # duplicates: average their valid values
            ok = ~np.isnan(v_arr)
            sums = np.bincount(inv[ok], weights=v_arr[ok], minlength=uniq.size)
            cnt = np.bincount(inv[ok], minlength=uniq.size)
            with np.errstate(invalid="ignore", divide="ignore"):
                v_arr = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
            t_arr = uniq
    return Series(t_arr, v_arr, name or Path(label).stem)


class CsvSource:
    """Serves a CSV file: everything in ``(start, end]``. The file is read
    once and re-read when its modification time changes."""

    Config = CsvConfig
    #: a relative ``path`` resolves next to the config file
    capabilities = Capabilities(needs_base_dir=True)

    def __init__(self, config: CsvConfig, *, base_dir: Path | None = None) -> None:
        self.config = config
        path = Path(config.path)
        self.path = path if path.is_absolute() or base_dir is None else base_dir / path
        self._mtime: float | None = None
        self._series: Series | None = None

    def series(self) -> Series:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise DataError(f"cannot read: {exc.strerror}", str(self.path)) from exc
        if self._series is None or mtime != self._mtime:
            self._series = read_csv(self.path, timestamp_column=self.config.timestamp_column,
                                    value_column=self.config.value_column)
            self._mtime = mtime
        return self._series

    def fetch(self, start: datetime | None, end: datetime) -> Series:
        s = self.series().until(end)
        return s if start is None else s.since(start)


class ReplayConfig(CsvConfig):
    type: Literal["replay"] = "replay"  # type: ignore[assignment]
    #: shift the trace so its first sample falls at this time (None: as recorded)
    start_at: datetime | None = None


class ReplaySource(CsvSource):
    """A trace served as if live: under a simulated clock, each fetch sees
    only the samples up to ``now``. With ``start_at`` the whole trace is
    shifted so it begins then (replaying last month's load as today's)."""

    Config = ReplayConfig

    def __init__(self, config: ReplayConfig, *, base_dir: Path | None = None) -> None:
        super().__init__(config, base_dir=base_dir)
        self._shifted: Series | None = None
        self._raw: Series | None = None

    def series(self) -> Series:
        raw = super().series()
        start_at = self.config.start_at  # type: ignore[attr-defined]
        if start_at is None:
            return raw
        if self._shifted is None or self._raw is not raw:
            offset = to_epoch(start_at) - int(raw.timestamps[0])
            self._shifted = Series(raw.timestamps + offset, raw.values, raw.name)
            self._raw = raw
        return self._shifted

    @property
    def span(self) -> timedelta:
        s = self.series()
        return timedelta(seconds=int(s.timestamps[-1] - s.timestamps[0]))
