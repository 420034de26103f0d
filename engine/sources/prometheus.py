"""Prometheus metric source: PromQL ``query_range`` over HTTP.

Works against the Prometheus HTTP API v1 (``POST {url}/api/v1/query_range``,
form-encoded so long queries do not hit URL limits). Only Prometheus itself is
tested; other servers that speak the same API may work but are not claimed.

What it does with what Prometheus returns, documented and tested:

- The range ``(start, end]`` is aligned to the ``step`` grid (multiples of
  ``step`` since the epoch), so the same point in time always gets the same
  timestamp, cycle after cycle, and incremental fetches join without overlap.
  ``start=None`` means ``end - lookback``.
- Long ranges are split into chunks of at most ``max_points_per_request``
  points: Prometheus refuses a query_range that would return more than
  11,000 points per series (``exceeded maximum resolution``).
- ``resultType`` ``matrix`` is the normal answer; ``vector`` (one instant
  sample per series, which some proxies answer) and ``scalar`` are taken as
  one sample each.
- Several series for one query are a :class:`ConfigError` naming the query
  and the label sets, unless ``aggregate`` (``sum``, ``max``, ``mean``) says
  how to combine them; aggregation is per timestamp over the series that
  have a valid sample there.
- ``NaN``, ``+Inf`` and ``-Inf`` samples are kept as missing (NaN): an
  infinite demand usually means a division by zero in the query (a rate over
  a zero denominator) and must never size capacity.
- Gaps (no sample within Prometheus' lookback delta, 5 minutes by default,
  or a stale series) are simply absent timestamps; the engine resamples onto
  its interval grid and the empty bins become missing.
- An empty result is an empty :class:`Series`, not an error: the engine
  treats it as missing data (hold, never scale down).
- ``warnings`` in a successful response (a partial response from a
  federated or remote-read setup) are logged; the data is kept.

Failures:

- ``timeout`` bounds the whole fetch: every attempt, every retry and every
  backoff wait together (httpx's own timeout applies to each read, so a
  server dripping one byte a second would never trip it; the body is
  streamed and a monotonic deadline checked between reads). When the
  deadline passes, or the next backoff would pass it, a
  :class:`MetricSourceError` with ``transient=True`` is raised.
- A response larger than ``max_response_bytes`` (64 MiB by default) is
  abandoned as soon as the announced length or the bytes read pass the
  limit: a :class:`MetricSourceError` naming the limit, not retried (the
  same query would be as large again). A 200 MB answer held in memory
  cost 2.2 GB once parsed.
- Connection errors, timeouts, HTTP 5xx and 429 are retried with
  exponential backoff and full jitter (tenacity; ``Retry-After`` on a 429 or
  503 is honoured up to ``max_backoff``). When the attempts are exhausted a
  :class:`MetricSourceError` with ``transient=True`` is raised.
- A body that is not the Prometheus JSON shape (an HTML error page from a
  proxy, a truncated response) is treated the same way, as a transient source
  failure: retried, then ``MetricSourceError(transient=True)``, so the engine
  holds rather than acting on it. A misconfigured URL that always returns
  garbage shows up as a steady stream of fetch errors in the metrics.
- HTTP 400 and 422 (``bad_data``, ``execution``: a PromQL error) are a
  :class:`ConfigError` naming the query and carrying Prometheus' error text;
  401/403 and other 4xx are a :class:`ConfigError` too. None is retried.

Credentials (bearer token, basic-auth password, custom headers) are never
logged nor put in an error message; token and password files are re-read on
every fetch so rotated credentials (Kubernetes projected service-account
tokens) are picked up without a restart.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from engine.core.errors import ConfigError, MetricSourceError
from engine.core.plugins import Capabilities
from engine.core.types import Series
from engine.core.units import parse_duration, to_epoch

log = logging.getLogger("forescale.sources.prometheus")

#: Prometheus refuses a query_range answer above this many points per series
#: (``exceeded maximum resolution of 11,000 points per timeseries``,
#: web/api/v1/api.go).
PROMETHEUS_MAX_POINTS = 11_000

DEFAULT_STEP = timedelta(seconds=60)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20
#: the most ``max_response_bytes`` may be set to (4 GiB)
MAX_RESPONSE_BYTES_LIMIT = 4 * 2**30


def _duration(v: Any) -> Any:
    return v if v is None else parse_duration(v)


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> "BasicAuth":
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password and password_file")
        return self


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["prometheus"] = "prometheus"
    #: base URL of the server, e.g. ``http://prometheus:9090`` (a path prefix
    #: such as ``https://host/prometheus`` is kept)
    url: str
    #: the PromQL expression; it should return one series (or set aggregate)
    query: str = Field(min_length=1)
    #: query resolution; None: the target's interval when the engine passes
    #: it, else 60 s
    step: timedelta | None = None
    #: how far back a fetch with no start reaches
    lookback: timedelta = timedelta(days=14)
    #: the whole fetch's deadline: connect, every read, every retry and
    #: backoff together; also sent as Prometheus' own evaluation ``timeout``
    timeout: timedelta = timedelta(seconds=30)
    #: the largest response body read; a larger one is an error, not retried
    #: (64 MiB holds ~1.5 million samples of Prometheus' JSON)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024, le=MAX_RESPONSE_BYTES_LIMIT)
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    basic_auth: BasicAuth | None = None
    #: PEM bundle of the CA that signed the server's certificate
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    #: extra request headers (e.g. ``X-Scope-OrgID`` for a multi-tenant
    #: backend); never logged
    headers: dict[str, str] = Field(default_factory=dict)
    #: how to combine several series: none (several series is an error),
    #: sum, max or mean
    aggregate: Literal["none", "sum", "max", "mean"] = "none"
    #: keep only the series with these label values (a target from a
    #: template: its label set in the template's query, whose answer holds
    #: every target's series)
    series: dict[str, str] = Field(default_factory=dict)
    #: attempts per request, the first included
    retry_attempts: int = Field(default=4, ge=1, le=20)
    #: cap on one backoff wait
    max_backoff: timedelta = timedelta(seconds=30)
    max_points_per_request: int = Field(default=PROMETHEUS_MAX_POINTS, ge=2, le=PROMETHEUS_MAX_POINTS)

    @field_validator("step", "lookback", "timeout", "max_backoff", mode="before")
    @classmethod
    def _parse_durations(cls, v: Any) -> Any:
        return _duration(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be http(s)://host[:port][/prefix], got {_redact_url(v)!r}")
        if "@" in parts.netloc:
            # credentials in the URL would end up in reprs and logs
            raise ValueError("url must not carry credentials (user:password@); use basic_auth")
        return v.strip().rstrip("/")

    @field_validator("step", "lookback")
    @classmethod
    def _whole_seconds(cls, v: timedelta | None) -> timedelta | None:
        # the step grid is integer epoch seconds, like Series timestamps
        if v is not None and v.total_seconds() < 1:
            raise ValueError(f"must be at least 1s, got {v.total_seconds():g}s")
        if v is not None and v.total_seconds() != int(v.total_seconds()):
            raise ValueError(f"must be whole seconds, got {v.total_seconds():g}s")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError(f"must be positive, got {v.total_seconds():g}s")
        return v

    @model_validator(mode="after")
    def _auth(self) -> "PrometheusConfig":
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("set at most one of bearer_token and bearer_token_file")
        if self.basic_auth is not None and (self.bearer_token is not None or self.bearer_token_file is not None):
            raise ValueError("set either basic_auth or a bearer token, not both")
        if self.ca_file is not None and self.insecure_skip_verify:
            raise ValueError("ca_file and insecure_skip_verify contradict each other; set one")
        if any(k.lower() == "authorization" for k in self.headers) and (
                self.basic_auth is not None or self.bearer_token is not None or self.bearer_token_file is not None):
            raise ValueError("headers.Authorization conflicts with basic_auth / bearer_token")
        return self


def _redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = p.netloc.rsplit("@", 1)[-1]
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


class _Retryable(Exception):
    """A failure worth another attempt; ``retry_after`` in seconds if the
    server said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def _retry_after(resp: httpx.Response) -> float | None:
    v = resp.headers.get("Retry-After")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None  # an HTTP date: rare from Prometheus proxies; use backoff


def _sample_value(raw: Any) -> float:
    """A sample's value string -> float; NaN and +/-Inf become NaN (missing)."""
    v = float(raw)  # Prometheus encodes values as strings: "1.5", "NaN", "+Inf"
    return v if math.isfinite(v) else math.nan


class PrometheusSource:
    """Reads one PromQL expression from a Prometheus server (see the module
    docstring for the handling of every kind of answer and failure).

    ``interval`` is the target's cycle interval, the step when the config
    sets none. ``sleep`` is what the retry backoff waits with (tests inject
    a recorder); ``monotonic`` is the clock of the fetch deadline. ``transport`` replaces httpx's HTTP transport (tests only:
    a transport brings its own TLS settings, so ``ca_file`` and
    ``insecure_skip_verify`` no longer apply)."""

    Config = PrometheusConfig
    #: ``ca_file`` resolves next to the config file; ``step`` defaults to the cycle interval
    capabilities = Capabilities(needs_base_dir=True, needs_interval=True)

    def __init__(
        self,
        config: PrometheusConfig,
        *,
        base_dir: Path | None = None,
        interval: timedelta | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self._base_dir = base_dir
        step = config.step or interval or DEFAULT_STEP
        self.step_s = int(step.total_seconds())
        if self.step_s < 1:
            raise ConfigError(f"step must be at least 1s, got {step}", "source.step")
        self._sleep = sleep
        self._monotonic = monotonic
        self._endpoint = f"{config.url}/api/v1/query_range"
        self._safe_url = _redact_url(self._endpoint)
        t = config.timeout.total_seconds()
        self._client = httpx.Client(
            timeout=httpx.Timeout(t),
            verify=self._verify(),
            transport=transport,
            follow_redirects=False,
        )

    # ------------------------------------------------------------------ setup
    def _path(self, p: Path) -> Path:
        return p if p.is_absolute() or self._base_dir is None else self._base_dir / p

    def _verify(self) -> ssl.SSLContext | bool:
        if self.config.insecure_skip_verify:
            return False
        if self.config.ca_file is not None:
            path = self._path(self.config.ca_file)
            try:
                return ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA bundle {path}: {exc}", "source.ca_file") from None
        return True

    def _read_secret(self, p: Path, field: str) -> str:
        path = self._path(p)
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", field) from None

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "forescale"}
        h.update(self.config.headers)
        c = self.config
        token = None
        if c.bearer_token is not None:
            token = c.bearer_token.get_secret_value()
        elif c.bearer_token_file is not None:
            token = self._read_secret(c.bearer_token_file, "source.bearer_token_file")
        if token:
            h["Authorization"] = f"Bearer {token}"
        return h

    def _auth(self) -> httpx.BasicAuth | None:
        b = self.config.basic_auth
        if b is None:
            return None
        if b.password is not None:
            pw = b.password.get_secret_value()
        else:
            assert b.password_file is not None
            pw = self._read_secret(b.password_file, "source.basic_auth.password_file")
        return httpx.BasicAuth(b.username, pw)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "PrometheusSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ fetch
    def grid(self, start: datetime | None, end: datetime) -> tuple[int, int]:
        """The first and last step-grid points inside ``(start, end]``."""
        s = self.step_s
        e = to_epoch(end) // s * s
        lo = to_epoch(start) if start is not None else to_epoch(end) - int(self.config.lookback.total_seconds())
        first = lo // s * s + s  # strictly after start
        return first, e

    def chunks(self, first: int, last: int) -> list[tuple[int, int]]:
        """``[first, last]`` split into ranges of at most
        ``max_points_per_request`` grid points each."""
        span = (self.config.max_points_per_request - 1) * self.step_s
        out = []
        a = first
        while a <= last:
            b = min(a + span, last)
            out.append((a, b))
            a = b + self.step_s
        return out

    def fetch(self, start: datetime | None, end: datetime) -> Series:
        """Samples with ``start < t <= end`` on the step grid (see module doc)."""
        first, last = self.grid(start, end)
        deadline = self._monotonic() + self.config.timeout.total_seconds()
        parts: list[Series] = []
        for a, b in self.chunks(first, last):
            parts.append(self._fetch_range(a, b, deadline))
        out = Series(np.empty(0, np.int64), np.empty(0), self.config.query)
        for p in parts:
            out = Series.concat(out, p)
        return out

    def fetch_all(self, start: datetime | None, end: datetime) -> dict[frozenset[tuple[str, str]], Series]:
        """Every series the query returns, by label set, with ``start < t <=
        end`` on the step grid: one range query (per chunk) for all of them,
        however many; nothing is aggregated or filtered by ``series``."""
        first, last = self.grid(start, end)
        deadline = self._monotonic() + self.config.timeout.total_seconds()
        out: dict[frozenset[tuple[str, str]], Series] = {}
        for a, b in self.chunks(first, last):
            for labels, ts, vs in self._request(deadline, self._params(a, b)):
                key = frozenset(labels.items())
                if ts.size > 1 and np.any(np.diff(ts) <= 0):
                    raise MetricSourceError(f"prometheus returned unordered samples for {labels}", transient=True)
                part = Series(ts, vs, _labelset(labels)).since(a - 1).until(b)
                out[key] = part if key not in out else Series.concat(out[key], part)
        return out

    def _params(self, a: int, b: int) -> dict[str, str]:
        return {"query": self.config.query, "start": str(a), "end": str(b), "step": str(self.step_s),
                "timeout": f"{self.config.timeout.total_seconds():g}s"}

    def _fetch_range(self, a: int, b: int, deadline: float) -> Series:
        series = self._request(deadline, self._params(a, b))
        if self.config.series:
            want = self.config.series.items()
            series = [s for s in series if want <= s[0].items()]
        s = self._combine(series)
        # a vector/scalar answer may carry a time outside the asked range
        return s.since(a - 1).until(b)

    def _retrying(self, deadline: float) -> tenacity.Retrying:
        c = self.config
        cap = c.max_backoff.total_seconds()
        backoff = tenacity.wait_random_exponential(multiplier=0.5, max=cap)

        def wait(rs: tenacity.RetryCallState) -> float:
            w = backoff(rs)
            exc = rs.outcome.exception() if rs.outcome else None
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                w = max(w, min(exc.retry_after, cap))
            return w

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("prometheus %s: attempt %d/%d failed (%s); retrying in %.1fs",
                        self._safe_url, rs.attempt_number, c.retry_attempts, exc,
                        rs.next_action.sleep if rs.next_action else 0.0)

        def past_deadline(rs: tenacity.RetryCallState) -> bool:
            # tenacity computes the wait before asking stop: a backoff that
            # would end after the deadline is not started
            return self._monotonic() + (rs.upcoming_sleep or 0.0) >= deadline

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(c.retry_attempts) | past_deadline,
            wait=wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def _request(self, deadline: float,
                 params: dict[str, str]) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """One query_range, retried until ``deadline``; the parsed series. A
        malformed answer is retried like a failed request (see the module
        docstring)."""
        attempts = 0

        def attempt() -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
            nonlocal attempts
            attempts += 1
            return self._parse(self._attempt(params, deadline))

        try:
            return self._retrying(deadline)(attempt)
        except _Retryable as exc:
            raise MetricSourceError(
                f"prometheus {self._safe_url} failed after {attempts} attempt{'s' if attempts != 1 else ''} "
                f"within {self.config.timeout.total_seconds():g}s for query {self.config.query!r}: {exc}",
                transient=True) from None

    def _timed_out(self, exc: BaseException | None = None) -> _Retryable:
        how = f" ({type(exc).__name__})" if exc is not None else ""
        return _Retryable(f"timed out: the fetch's deadline (source.timeout, "
                          f"{self.config.timeout.total_seconds():g}s) passed{how}")

    def _attempt(self, params: dict[str, str], deadline: float) -> dict[str, Any]:
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            raise self._timed_out()
        try:
            with self._client.stream("POST", self._endpoint, data=params, headers=self._headers(),
                                     auth=self._auth(), timeout=httpx.Timeout(remaining)) as resp:
                raw = self._read_body(resp, deadline)
        except httpx.TimeoutException as exc:
            raise self._timed_out(exc) from None
        except httpx.TransportError as exc:
            # str(exc) of a connect error names the host, never the headers
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        code = resp.status_code
        body = self._json(raw)
        if code == 429 or code >= 500:
            detail = body.get("error") if isinstance(body, dict) else None
            raise _Retryable(f"HTTP {code}" + (f": {detail}" if detail else ""), _retry_after(resp))
        if 400 <= code < 500:
            raise self._client_error(code, body)
        if code != 200:  # 1xx/3xx: a redirect we do not follow (would leak auth to another host)
            raise _Retryable(f"unexpected HTTP {code} (redirects are not followed; check url)")
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            raise _Retryable(f"response is not a Prometheus API answer (HTTP 200, "
                             f"content-type {resp.headers.get('content-type', '?')!r}): "
                             f"{raw[:120].decode('utf-8', 'replace')!r}")
        if body["status"] == "error":
            if body.get("errorType") in ("bad_data", "execution"):
                raise self._client_error(400, body)
            raise _Retryable(f"{body.get('errorType')}: {body.get('error')}")
        for w in body.get("warnings") or ():
            log.warning("prometheus %s: query %r: warning: %s", self._safe_url, self.config.query, w)
        data = body.get("data")
        if not isinstance(data, dict):
            raise _Retryable("response has no 'data' object")
        return data

    def _too_large(self, what: str) -> MetricSourceError:
        limit = self.config.max_response_bytes
        return MetricSourceError(
            f"prometheus {self._safe_url}: the response for query {self.config.query!r} {what} "
            f"source.max_response_bytes ({limit} bytes, {limit / 2**20:g} MiB); narrow the query, "
            f"raise the step or raise the limit", transient=False)

    def _read_body(self, resp: httpx.Response, deadline: float) -> bytes:
        """The body, read in chunks against the deadline and the size cap."""
        limit = self.config.max_response_bytes
        announced = resp.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            raise self._too_large(f"announces {int(announced)} bytes, more than")
        buf = bytearray()
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > limit:
                raise self._too_large("passed")
            if self._monotonic() >= deadline:
                raise self._timed_out()
        return bytes(buf)

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return None

    def _client_error(self, code: int, body: Any) -> ConfigError:
        q = self.config.query
        if code in (401, 403):
            # before the body: a proxy's {"error": "unauthorized"} is about
            # the credentials, not the query
            return ConfigError(f"prometheus {self._safe_url} refused the credentials (HTTP {code}) "
                               f"for query {q!r}", "source")
        if isinstance(body, dict) and body.get("error"):
            return ConfigError(f"prometheus rejected query {q!r} (HTTP {code}, "
                               f"{body.get('errorType', 'error')}): {body['error']}", "source.query")
        return ConfigError(f"prometheus {self._safe_url} answered HTTP {code} for query {q!r}; "
                           f"check the url", "source.url")

    # ---------------------------------------------------------------- parsing
    def _parse(self, data: dict[str, Any]) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """``data`` -> [(labels, timestamps, values)]; raises _Retryable on a
        wrong shape."""
        rtype, result = data.get("resultType"), data.get("result")
        try:
            if rtype == "matrix":
                out = []
                for item in result:
                    vals = item.get("values") or []
                    ts = np.fromiter((round(float(p[0])) for p in vals), np.int64, len(vals))
                    vs = np.fromiter((_sample_value(p[1]) for p in vals), np.float64, len(vals))
                    out.append((dict(item.get("metric") or {}), ts, vs))
                return out
            if rtype == "vector":
                return [(dict(item.get("metric") or {}),
                         np.array([round(float(item["value"][0]))], np.int64),
                         np.array([_sample_value(item["value"][1])]))
                        for item in result]
            if rtype == "scalar":
                return [({}, np.array([round(float(result[0]))], np.int64),
                         np.array([_sample_value(result[1])]))]
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise _Retryable(f"malformed {rtype} result: {type(exc).__name__}: {exc}") from None
        raise _Retryable(f"unsupported resultType {rtype!r}")

    def _combine(self, series: list[tuple[dict[str, str], np.ndarray, np.ndarray]]) -> Series:
        name = self.config.query
        if not series:
            return Series(np.empty(0, np.int64), np.empty(0), name)
        for labels, ts, _ in series:
            if ts.size > 1 and np.any(np.diff(ts) <= 0):
                raise MetricSourceError(f"prometheus returned unordered samples for {labels}", transient=True)
        if len(series) == 1:
            _, ts, vs = series[0]
            return Series(ts, vs, name)
        agg = self.config.aggregate
        if agg == "none":
            sets = ", ".join(_labelset(lb) for lb, _, _ in series[:5])
            more = f" and {len(series) - 5} more" if len(series) > 5 else ""
            raise ConfigError(
                f"query {self.config.query!r} returned {len(series)} series ({sets}{more}); "
                f"aggregate them in PromQL (e.g. sum(...)) or set source.aggregate to sum, max or mean",
                "source.aggregate")
        times = np.unique(np.concatenate([ts for _, ts, _ in series]))
        grid = np.full((len(series), times.size), np.nan)
        for i, (_, ts, vs) in enumerate(series):
            grid[i, np.searchsorted(times, ts)] = vs
        valid = ~np.isnan(grid)
        any_valid = valid.any(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if agg == "sum":
                vals = np.where(any_valid, np.nansum(grid, axis=0), np.nan)
            elif agg == "max":
                vals = np.where(any_valid, np.nanmax(np.where(valid, grid, -np.inf), axis=0), np.nan)
            else:
                vals = np.where(any_valid, np.nansum(grid, axis=0) / np.maximum(valid.sum(axis=0), 1), np.nan)
        return Series(times, vals, name)


def _labelset(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


__all__ = ["PrometheusSource", "PrometheusConfig", "BasicAuth", "PROMETHEUS_MAX_POINTS"]
