"""Prometheus remote write (protocol 1.0) of the forecast and accuracy series.

After each cycle the daemon hands the result to :meth:`RemoteWriter.on_result`
(its ``on_result`` callback), which turns the target's exported series into
remote-write samples and queues them; a background thread encodes and posts
them, so a slow or dead receiver never blocks a cycle. When the bounded
queue is full, or a batch fails for good, its samples are dropped and
counted in ``forescale_remote_write_dropped_samples_total``.

Timestamps: every sample is stamped with the cycle's ``now``, the value
*at* each ``horizon`` label (what an HPA/KEDA query reads as "the forecast
600 s ahead, now"), never with the future time it forecasts. Future samples
would land ahead of the TSDB head (Prometheus refuses samples too far from
it, and they would be overwritten or out of order at the next cycle); to
plot a forecast against its actuals, shift it in PromQL:
``forescale_forecast_demand{horizon="600"} offset 10m``.

Wire format (remote-write 1.0): a ``WriteRequest`` protobuf, snappy
block-compressed, POSTed with ``Content-Encoding: snappy``,
``Content-Type: application/x-protobuf`` and
``X-Prometheus-Remote-Write-Version: 0.1.0``. The schema is tiny and is
encoded here by hand (:func:`encode_write_request`)::

    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }  // ms

Reload: :class:`FollowingWriter` follows ``server.remote_write`` across
config reloads (a new URL, credentials or queue settings take over at the
next cycle; removing the section stops writing).

Retries: on a transport error, 5xx or 429, with exponential backoff
(``0.5 s * 2^attempt``, at most 30 s; a 429's ``Retry-After`` when given) up
to ``max_retries``; a 4xx other than 429 is the receiver refusing the data,
which a retry will not change: dropped at once.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import httpx

log = logging.getLogger("forescale.remote_write")

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "forescale"}


@dataclass(frozen=True)
class TimeSeries:
    """One series with its samples: ``labels`` include ``__name__``;
    ``samples`` are ``(value, timestamp in ms)``."""

    labels: tuple[tuple[str, str], ...]
    samples: tuple[tuple[float, int], ...]


# ------------------------------------------------------------------ protobuf
def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 as two's complement, ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_write_request(series: Iterable[TimeSeries]) -> bytes:
    """The protobuf bytes of a ``WriteRequest`` (labels sorted by name, as
    the protocol requires)."""
    out = bytearray()
    for ts in series:
        body = bytearray()
        for name, value in sorted(ts.labels):
            body += _field(1, _field(1, name.encode()) + _field(2, value.encode()))
        for value, t_ms in ts.samples:
            sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(int(t_ms))
            body += _field(2, sample)
        out += _field(1, bytes(body))
    return bytes(out)


def snappy_block(data: bytes) -> bytes:
    import cramjam  # the remote-write extra: pip install 'forescale[remote-write]'

    return bytes(cramjam.snappy.compress_raw(data))


# ------------------------------------------------------------------- series
def cycle_series(metrics: Any, result: Any, extra: Mapping[str, str] | None = None) -> list[TimeSeries]:
    """A cycle's remote-write series: the forecast at each export horizon and
    level, and the target's accuracy gauges, every sample at the cycle's
    ``now`` (see the module doc); ``extra``: labels added to each
    (``server.remote_write.labels``)."""
    t_ms = int(result.now.timestamp() * 1000)
    target = result.target
    add = tuple(sorted((extra or {}).items()))
    out = []
    if result.forecast is not None:
        for horizon, level, v in metrics.forecast_series(target, result.forecast):
            out.append(TimeSeries((("__name__", "forescale_forecast_demand"), ("horizon", horizon),
                                   ("level", level), ("target", target), *add), ((v, t_ms),)))
    for name, labels, v in metrics.accuracy_series(target):
        if not math.isnan(v):
            out.append(TimeSeries((("__name__", name), *sorted(labels.items()), *add), ((v, t_ms),)))
    return out


# ------------------------------------------------------------------- writer
def backoff(attempt: int, retry_after: str | None = None) -> float:
    """Seconds before retry ``attempt`` (0-based)."""
    if retry_after is not None:
        try:
            return min(30.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2 ** attempt)


class RemoteWriter:
    """Queue and post remote-write batches (see the module doc).

    ``config`` is ``server.remote_write`` (:class:`engine.config.RemoteWriteConfig`);
    ``metrics`` an :class:`engine.metrics.EngineMetrics` (the series' source
    and the dropped-samples counter). ``sleep`` and ``transport`` are seams
    for tests."""

    def __init__(self, config: Any, metrics: Any, *, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        from .core.errors import ConfigError

        env = os.environ if environ is None else environ
        self.config = config
        self.metrics = metrics
        self.url = config.url
        headers = dict(HEADERS)
        auth = None
        if config.bearer_token_env:
            token = env.get(config.bearer_token_env)
            if not token:
                raise ConfigError(f"server.remote_write.bearer_token_env: the environment variable "
                                  f"{config.bearer_token_env} is not set or empty")
            headers["Authorization"] = f"Bearer {token}"
        if config.basic_auth is not None:
            password = env.get(config.basic_auth.password_env)
            if password is None:
                raise ConfigError(f"server.remote_write.basic_auth.password_env: the environment variable "
                                  f"{config.basic_auth.password_env} is not set")
            auth = httpx.BasicAuth(config.basic_auth.username, password)
        verify: Any = True
        if config.tls is not None:
            if config.tls.insecure_skip_verify:
                verify = False
            elif config.tls.ca_file is not None:
                import ssl

                verify = ssl.create_default_context(cafile=str(config.tls.ca_file))
        self.client = httpx.Client(headers=headers, auth=auth, verify=verify, transport=transport,
                                   timeout=config.timeout.total_seconds())
        self.sleep = sleep or self._stop_aware_sleep
        self.queue: queue.Queue[list[TimeSeries] | None] = queue.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="forescale-remote-write", daemon=True)
        self.sent_batches = 0

    def _stop_aware_sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # --------------------------------------------------------------- producer
    def on_result(self, result: Any) -> None:
        """The daemon's per-result callback: queue the cycle's series; never
        blocks (a full queue drops them, counted)."""
        if result.details.get("timeout"):
            return
        series = cycle_series(self.metrics, result, self.config.labels)
        if series:
            self.submit(series)

    def submit(self, series: list[TimeSeries]) -> None:
        try:
            self.queue.put_nowait(series)
        except queue.Full:
            self._dropped(series, "the queue is full (the receiver is slow or down)")

    def _dropped(self, series: list[TimeSeries], why: str) -> None:
        n = sum(len(s.samples) for s in series)
        self.metrics.remote_write_dropped(n)
        log.warning("remote write to %s: dropped %d sample(s): %s", self.url, n, why)

    # --------------------------------------------------------------- consumer
    def start(self) -> "RemoteWriter":
        self._thread.start()
        return self

    def _drain(self) -> None:
        while True:
            first = self.queue.get()
            items, stop = [first], first is None
            # take what else is waiting: one request for several cycles
            while not stop:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                items.append(more)
                stop = more is None
            batch = [ts for item in items if item is not None for ts in item]
            try:
                if batch:
                    self._send(batch)
            finally:
                for _ in items:
                    self.queue.task_done()
            if stop:
                return

    def _send(self, batch: list[TimeSeries]) -> None:
        body = snappy_block(encode_write_request(batch))
        why = "unknown"
        for attempt in range(self.config.max_retries + 1):
            if attempt and self._stop.is_set():
                why = "shutting down"
                break
            retry_after = None
            try:
                r = self.client.post(self.url, content=body)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 300:
                    self.sent_batches += 1
                    self.metrics.remote_write_sent(sum(len(s.samples) for s in batch))
                    return
                why = f"HTTP {r.status_code}: {r.text[:200].strip()}"
                if 400 <= r.status_code < 500 and r.status_code != 429:
                    break  # the receiver refuses this data; a retry will not change that
                retry_after = r.headers.get("retry-after") if r.status_code == 429 else None
            if attempt < self.config.max_retries:
                self.sleep(backoff(attempt, retry_after))
        self._dropped(batch, why)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        if self._thread.is_alive():
            try:
                self.queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._stop.set()
            self._thread.join(1.0)
        self.client.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued batch was sent or dropped."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


class FollowingWriter:
    """The daemon's remote writer, following config reloads.

    ``current`` returns the ``server.remote_write`` in force (the daemon's
    running config, swapped by a SIGHUP or a changed file). At each result
    the settings are compared with those the running writer was built from:
    when they changed, a new :class:`RemoteWriter` takes over (the old one
    sends what it has queued and stops in the background, never blocking a
    cycle); ``None`` stops remote write; settings that cannot be used (a
    credential variable unset, the ``remote-write`` extra missing) are logged
    once and the running writer, if any, goes on. ``factory`` is a seam for
    tests."""

    def __init__(self, current: Callable[[], Any], metrics: Any, *,
                 factory: Callable[[Any, Any], RemoteWriter] | None = None) -> None:
        self._current = current
        self.metrics = metrics
        self._factory = factory or (lambda cfg, m: RemoteWriter(cfg, m))
        self._lock = threading.Lock()
        self.writer: RemoteWriter | None = None
        self._config: Any = None  # what self.writer was built from
        self._refused: Any = None  # settings that failed, not retried until they change
        cfg = current()
        if cfg is not None:  # at start a problem is the caller's error (one line, exit 2)
            self.writer, self._config = self._factory(cfg, metrics).start(), cfg

    def sync(self) -> RemoteWriter | None:
        """Follow the settings in force; the writer now running (None: off)."""
        cfg = self._current()
        with self._lock:
            if cfg == self._config or (cfg is not None and cfg == self._refused):
                return self.writer
            new: RemoteWriter | None = None
            if cfg is not None:
                try:
                    import cramjam  # noqa: F401 - the remote-write extra

                    new = self._factory(cfg, self.metrics).start()
                except Exception as exc:  # noqa: BLE001 - a reload must not stop the loop
                    self._refused = cfg
                    why = ("cramjam is not installed: pip install 'forescale[remote-write]'"
                           if isinstance(exc, ImportError) else str(exc))
                    log.error("remote write: the reloaded server.remote_write cannot be used (%s); %s", why,
                              f"still writing to {self.writer.url}" if self.writer else "remote write stays off")
                    return self.writer
            old, self.writer, self._config, self._refused = self.writer, new, cfg, None
        if old is not None:
            threading.Thread(target=old.close, name="forescale-remote-write-close", daemon=True).start()
        log.info("remote write: %s", f"now writing to {new.url}" if new is not None else "off (reloaded)")
        return new

    def on_result(self, result: Any) -> None:
        w = self.sync()
        if w is not None:
            w.on_result(result)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            w, self.writer = self.writer, None
        if w is not None:
            w.close(timeout)


__all__ = ["FollowingWriter", "HEADERS", "RemoteWriter", "TimeSeries", "backoff", "cycle_series", "encode_write_request",
           "snappy_block"]
