"""The Actuator protocol and what every actuator shares.

An actuator is a thin adapter: read the capacity in service, set it to N
(idempotent), read back and verify. No policy lives here. The SDK client (or
the binary, or the API endpoint) is handed in, so tests point it at loopback
servers.

Capacity is an integer: replicas / desired capacity for horizontal actuators,
the rung index into the configured instance-type ladder for vertical ones.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from engine.core.errors import PermanentActuatorError, TransientActuatorError
from engine.core.types import ActionPlan, ActuationResult
from engine.core.units import Duration

Sleep = Callable[[float], None]
Monotonic = Callable[[], float]


class ActuatorConfig(BaseModel):
    """Base of every actuator's own config section (validated at load)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    #: how long ``apply`` waits for the new capacity to be observed in service
    verify_timeout: Duration = timedelta(minutes=10)
    #: how often it polls while waiting
    poll_interval: Duration = timedelta(seconds=5)
    #: retry bounds for transient errors
    retry_attempts: int = 5
    retry_max_wait: Duration = timedelta(seconds=60)

    def retry(self, fn: Callable[[], Any], *, sleep: Sleep = time.sleep) -> Any:
        """:func:`retrying` within this config's bounds."""
        return retrying(fn, attempts=self.retry_attempts, max_wait=self.retry_max_wait.total_seconds(),
                        sleep=sleep)

    def poll(self, check: Callable[[], tuple[bool, Any]], *, sleep: Sleep = time.sleep,
             monotonic: Monotonic = time.monotonic) -> tuple[bool, Any, float]:
        """:func:`wait_until` for ``verify_timeout``, every ``poll_interval``."""
        return wait_until(check, timeout=self.verify_timeout.total_seconds(),
                          interval=self.poll_interval.total_seconds(), sleep=sleep, monotonic=monotonic)


@runtime_checkable
class Actuator(Protocol):
    """What the engine needs from a platform."""

    name: ClassVar[str]

    def validate(self) -> None:
        """Check at startup that credentials resolve and the target exists;
        raise a clear PermanentActuatorError / LimitExceeded otherwise."""

    def read(self) -> int:
        """The capacity currently observed (in service)."""

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        """What setting capacity to ``desired`` would change, in the
        platform's own terms (for dry-run output and approval messages)."""

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Set capacity to ``desired`` (idempotent) and wait until it is
        observed in service or ``verify_timeout`` passes."""


def retrying(
    fn: Callable[[], Any],
    *,
    attempts: int = 5,
    max_wait: float = 60.0,
    sleep: Sleep = time.sleep,
    retry_on: tuple[type[BaseException], ...] = (TransientActuatorError,),
) -> Any:
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


def wait_until(
    check: Callable[[], tuple[bool, Any]],
    *,
    timeout: float,
    interval: float,
    sleep: Sleep = time.sleep,
    monotonic: Monotonic = time.monotonic,
) -> tuple[bool, Any, float]:
    """Poll ``check`` (returning ``(done, value)``) until done or ``timeout``
    seconds pass. Returns ``(done, last_value, elapsed_seconds)``."""
    t0 = monotonic()
    while True:
        done, value = check()
        elapsed = monotonic() - t0
        if done or elapsed >= timeout:
            return done, value, elapsed
        sleep(min(interval, max(0.0, timeout - elapsed)))


def require_non_negative(desired: int) -> None:
    if desired < 0:
        raise PermanentActuatorError(f"desired capacity must be >= 0, got {desired}")
