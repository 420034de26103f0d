"""The Actuator protocol and what every actuator shares.

An actuator is a thin adapter (the Nomad autoscaler's target plugins):
``apply`` sets capacity and returns as soon as the platform *accepted* the
change; ``read`` reports what the platform is set to and how much of it is in
service. Nothing waits inside ``apply``: the engine verifies on its later
cycles by reading again (as the HPA writes ``/scale`` and looks again on the
next sync), for at most ``verify_timeout``. No policy lives here. The SDK
client (or the binary, or the API endpoint) is handed in, so tests point it
at loopback servers.

Capacity is an integer: replicas / desired capacity for horizontal actuators,
the rung index into the configured instance-type ladder for vertical ones.

:class:`PlatformCalls` is the one copy of the plumbing the cloud actuators
share: the lazily built client, the call with its error mapping retried
within the config's bounds (sleep injected), and the status read after an
accepted write that tolerates a transient failure.
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import timedelta
from typing import Any, Callable, ClassVar, Protocol, Sequence, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator

from engine.core.errors import ActuatorError, ConfigError, PermanentActuatorError, TransientActuatorError
from engine.core.plugins import Capabilities
from engine.core.checks import repeated
from engine.core.types import ActionPlan, ActuationResult, CapacityReading
from engine.core.units import Duration

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]
Monotonic = Callable[[], float]
T = TypeVar("T")


class ActuatorConfig(BaseModel):
    """Base of every actuator's own config section (validated at load)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    #: how long the engine keeps reading, across cycles, for an applied
    #: change to be observed in service before it reports it unverified
    #: (nothing blocks on it: ``apply`` returns once the platform accepted)
    verify_timeout: Duration = timedelta(minutes=10)
    #: no longer used (``apply`` does not poll; the engine reads once per
    #: cycle); accepted with a warning so older configs still load
    poll_interval: Duration | None = None
    #: retry bounds for transient errors of one platform call
    retry_attempts: int = 5
    retry_max_wait: Duration = timedelta(seconds=60)

    @property
    def resize_downtime(self) -> timedelta | None:
        """How long one capacity change takes capacity away (a VM resize's
        stop/modify/start), as this platform's config states it; None where
        the platform adds capacity beside what runs. The planner prices it
        when its own ``plan.resize_downtime`` is not set."""
        return None

    @model_validator(mode="after")
    def _poll_interval_is_gone(self) -> "ActuatorConfig":
        if self.poll_interval is not None:
            warnings.warn("actuator.poll_interval no longer applies: apply returns once the platform "
                          "accepted the change and the engine reads it again on later cycles",
                          FutureWarning, stacklevel=2)  # shown to users by default
        return self

    def retry(self, fn: Callable[[], T], *, sleep: Sleep = time.sleep) -> T:
        """:func:`retrying` within this config's bounds."""
        return retrying(fn, attempts=self.retry_attempts, max_wait=self.retry_max_wait.total_seconds(),
                        sleep=sleep)

    def apply_bound(self) -> tuple[str, timedelta] | None:
        """The longest one ``apply`` may block, and the field that sets it;
        ``None`` for an actuator whose ``apply`` returns once the platform
        accepted (every one but those that must run a blocking tool).
        :func:`check_apply_bound` compares it with the cycle's timeout."""
        return None


def check_apply_bound(config: Any, cycle_timeout: timedelta, *,
                      path: str = "actuator", timeout_path: str = "timeout") -> str | None:
    """A config error message when ``config``'s bounded apply could outlive
    the cycle that calls it (the daemon abandons a cycle after its
    ``timeout``), else ``None``. The message names both fields."""
    # a third-party actuator's config need not derive from ActuatorConfig
    bound = config.apply_bound() if isinstance(config, ActuatorConfig) else None
    if bound is None:
        return None
    field, limit = bound
    if limit < cycle_timeout:
        return None
    return (f"{path}.{field} ({_show(limit)}) must be shorter than {timeout_path} "
            f"({_show(cycle_timeout)}): the daemon abandons a cycle after its timeout, "
            f"so an apply that may run longer would be reported as a timed-out cycle")


def _show(td: timedelta) -> str:
    s = int(td.total_seconds())
    return f"{s // 60}m{s % 60}s".replace("m0s", "m") if s >= 60 else f"{s}s"


@runtime_checkable
class Actuator(Protocol):
    """What the engine needs from a platform."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def validate(self) -> None:
        """Check at startup that credentials resolve and the target exists;
        raise a clear PermanentActuatorError / LimitExceeded otherwise."""

    def read(self) -> CapacityReading:
        """What the platform is set to (``count``) and how much of it is in
        service now (``ready``; ``None`` where the platform cannot tell)."""

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        """What setting capacity to ``desired`` would change, in the
        platform's own terms (for dry-run output and approval messages)."""

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Set capacity to ``desired`` (idempotent) and return once the
        platform accepted it, with the provider's request ids: ``observed``
        is what the platform reported then, ``verified`` whether the desired
        capacity already was in service. Never waits for it to be."""


def retrying(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    max_wait: float = 60.0,
    sleep: Sleep = time.sleep,
    retry_on: tuple[type[BaseException], ...] = (TransientActuatorError,),
) -> T:
    """Call ``fn``, retrying transient errors with exponential backoff and
    full jitter (tenacity), bounded in attempts and total wait. ``sleep`` is
    injected so tests do not wait."""
    import tenacity

    r = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)) | tenacity.stop_after_delay(max_wait),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max(0.5, max_wait / 4)),
        retry=tenacity.retry_if_exception_type(retry_on),
        sleep=sleep,
        reraise=True,
    )
    return r(fn)


class PlatformCalls:
    """A platform's client and the one way to call it.

    ``connect()`` builds the client on first use (so a missing SDK or
    credential surfaces at ``validate()``, and importing the actuator imports
    no SDK); an injected ``client`` is used as is. ``map_error(exc, what)``
    turns an SDK exception into a forescale :class:`ActuatorError` (``None``:
    not the SDK's, let it propagate); ``request_id(response)`` finds the
    provider's request id in a successful answer."""

    def __init__(self, config: ActuatorConfig, *, connect: Callable[[], Any],
                 map_error: Callable[[BaseException, str], ActuatorError | None] = lambda exc, what: None,
                 request_id: Callable[[Any], str | None] = lambda response: None,
                 sleep: Sleep = time.sleep, client: Any = None) -> None:
        self.config = config
        self._connect = connect
        self._map_error = map_error
        self._request_id = request_id
        self.sleep = sleep
        self._client = client

    @property
    def injected(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def once(self, what: str, fn: Callable[[Any], T], request_ids: list[str] | None = None) -> T:
        """``fn(client)`` once, its errors mapped, its request id recorded."""
        try:
            response = fn(self.client)
        except ActuatorError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped or re-raised as is
            mapped = self._map_error(exc, what)
            if mapped is None:
                raise
            raise mapped from exc
        rid = self._request_id(response)
        if rid and request_ids is not None:
            request_ids.append(rid)
        return response

    def call(self, what: str, fn: Callable[[Any], T], request_ids: list[str] | None = None, *,
             retry: bool = True) -> T:
        """:meth:`once`, transient errors retried within ``retry_attempts``
        and ``retry_max_wait`` (``retry=False``: where a retry would not
        help and the caller must react, e.g. undo a stop)."""
        if not retry:
            return self.once(what, fn, request_ids)
        return self.config.retry(lambda: self.once(what, fn, request_ids), sleep=self.sleep)

    def retried(self, fn: Callable[[], T]) -> T:
        """A sequence of calls retried as a whole (a read-modify-write that a
        409 Conflict must start again)."""
        return self.config.retry(fn, sleep=self.sleep)


def status_after_write(read: Callable[[], CapacityReading], *, target: str) -> CapacityReading | None:
    """The platform's status right after it accepted a write, or ``None``
    when reading it failed transiently: the write stands, and the engine
    reads again on the next cycle, so a blip here must not fail the apply.
    A permanent error (the object vanished, access revoked) is raised."""
    try:
        return read()
    except TransientActuatorError as exc:
        log.info("%s: the change was accepted, reading its status failed (read again next cycle): %s",
                 target, exc)
        return None


def accepted(desired: int, written: int, status: CapacityReading | None, *, elapsed: float,
             request_ids: list[str] | tuple[str, ...], details: dict[str, Any]) -> ActuationResult:
    """The result of an accepted write of ``written`` (``desired`` after
    clamping or flooring): ``observed`` is what the status read after the
    write shows in service (the written value when it could not be read),
    ``verified`` whether that already is all of it. ``details["target"]`` is
    ``written``: the ``count`` a later ``read()`` must show, settled, for the
    engine to call the change verified."""
    details = {**details, "target": written}
    if status is None:
        observed, verified = written, False
        details = {**details, "status": "unread"}
    else:
        observed = status.serving
        verified = status.count == written and status.settled
        details = {**details, "count": status.count, "ready": status.ready, **dict(status.details)}
    return ActuationResult(
        requested=desired, observed=observed, verified=verified,
        elapsed=timedelta(seconds=max(0.0, elapsed)), request_ids=tuple(dict.fromkeys(request_ids)),
        details=details,
    )


def ladder_of(actuator: str, ladder: Sequence[str] | None) -> tuple[str, ...]:
    """A vertical actuator's ladder of instance types, checked: present, and
    no type twice (a :class:`ConfigError` naming ``ladder``)."""
    if not ladder:
        raise ConfigError(f"the {actuator} actuator needs a ladder of instance types "
                          "(capacity is an index into it)", path="ladder")
    types = tuple(str(t) for t in ladder)
    dupes = repeated(types)
    if dupes:
        raise ConfigError(f"instance types appear more than once: {', '.join(dupes)}", path="ladder")
    return types


def require_non_negative(desired: int) -> None:
    if desired < 0:
        raise PermanentActuatorError(f"desired capacity must be >= 0, got {desired}")

