"""The one error hierarchy of forescale.

Every error the engine raises on purpose is a :class:`ForescaleError`. The
branches say what the caller should do about it::

    ForescaleError
    ├── ConfigError              bad configuration; never retried, fix the file
    ├── DataError                bad input data (CSV line, metric payload)
    ├── MetricSourceError        the metric source failed (down, slow, garbage);
    │                            the cycle falls back to "hold", never scales down
    ├── ForecastError            a forecast could not be made; triggers the
    │   └── InsufficientHistory  reactive fallback (recorded as a policy step)
    ├── ActuatorError            carrying out a decision failed
    │   ├── TransientActuatorError   throttling, 5xx, timeouts, conflicts: retried
    │   └── PermanentActuatorError   auth, validation, not found: not retried
    │       └── LimitExceeded        request outside the platform's own limits
    ├── PlanError                the plan/approve/apply workflow refused
    │   ├── PlanNotFound
    │   ├── PlanStateError       e.g. approving a plan that is already applied
    │   ├── StalePlan            observed capacity changed since planning
    │   ├── PlanRefused          re-checked at apply: outside the bounds in force,
    │   │                        a mode that never writes, approval not verifiable
    │   └── ApprovalRequired     apply was asked for an unapproved plan
    ├── StateError               the embedded store cannot be used (schema,
    │   └── StateLocked          full disk); another daemon holds the lock
    └── PluginError              unknown plugin name or missing optional extra

Errors carry plain data (field paths, values) so the CLI can print one clear
line instead of a traceback.
"""

from __future__ import annotations


class ForescaleError(Exception):
    """Base class of every error forescale raises on purpose."""


class ConfigError(ForescaleError):
    """The configuration is invalid. ``path`` names the field, e.g.
    ``targets[0].policy.max_replicas``."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class DataError(ForescaleError):
    """Input data is malformed. ``where`` names the file and line or field."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class MetricSourceError(ForescaleError):
    """Reading metrics failed. ``transient`` says whether a retry may help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        self.transient = transient
        super().__init__(message)


class ForecastError(ForescaleError):
    """A forecast could not be produced; the policy falls back to reactive."""


class InsufficientHistory(ForecastError):
    """Too little history to fit or predict."""

    def __init__(self, have: int, need: int, what: str = "forecaster") -> None:
        self.have = have
        self.need = need
        super().__init__(f"{what} needs at least {need} observations, has {have}")


class ActuatorError(ForescaleError):
    """Carrying out a capacity change failed.

    ``request_ids`` holds the provider's request ids for the audit log.
    """

    def __init__(self, message: str, *, request_ids: tuple[str, ...] = ()) -> None:
        self.request_ids = tuple(request_ids)
        super().__init__(message)


class TransientActuatorError(ActuatorError):
    """Throttling, 5xx, timeouts, connection resets, optimistic-concurrency
    conflicts, lock timeouts: safe to retry."""


class PermanentActuatorError(ActuatorError):
    """Authentication, validation, not-found: retrying will not help."""


class LimitExceeded(PermanentActuatorError):
    """The request lies outside the platform's own limits (e.g. an ASG's
    MaxSize, an instance type unavailable in the zone)."""


class PlanError(ForescaleError):
    """The plan/approve/apply workflow refused an operation."""


class PlanNotFound(PlanError):
    pass


class PlanStateError(PlanError):
    pass


class StalePlan(PlanError):
    """The observed capacity changed since the plan was made (Terraform's
    stale-plan rule): the plan must be made again."""


class PlanRefused(PlanError):
    """Re-checked at apply against the configuration in force, the plan may
    not be written: its capacity is outside the bounds, the target's mode
    never writes, or its approval is not in the audit chain."""


class ApprovalRequired(PlanError):
    pass


class StateError(ForescaleError):
    """The embedded state store cannot be used."""


class StateLocked(StateError):
    """Another forescale process holds the state file's lock."""


class LeaseLost(StateError):
    """This replica no longer holds the lease of a target's shard (another
    replica leads it now): nothing is acted on."""


class PluginError(ForescaleError):
    """Unknown plugin name, or an optional dependency is not installed."""
