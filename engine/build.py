"""Wiring: turn a validated config into live targets (source, actuator,
store). Kept apart from the cycle so tests can build targets by hand."""

from __future__ import annotations

from typing import Any

from actuators import registry as actuators

from .core.plugins import capabilities_of

from .config import Config, TargetConfig
from .cycle import LiveTarget
from .sources import registry as sources
from .store import Store


def build_source(target: TargetConfig, config: Config, covariate: str | None = None) -> Any:
    """The target's metric source, or (``covariate``) one of its extra metrics."""
    section = target.source if covariate is None else target.covariates[covariate]
    typed = target.source_config if covariate is None else target.covariate_configs[covariate]
    cls = sources.get(section.type)
    caps = capabilities_of(cls)  # declared by the class, checked when it was looked up
    kwargs: dict[str, Any] = {}
    if caps.needs_base_dir:
        kwargs["base_dir"] = config.base_dir
    if caps.needs_interval:  # sources that sample on a step default it to the cycle interval
        kwargs["interval"] = target.interval
    return cls(typed, **kwargs)


def build_covariates(target: TargetConfig, config: Config) -> dict[str, Any]:
    return {name: build_source(target, config, name) for name in target.covariates}


def build_resources(target: TargetConfig, config: Config,
                    build: Any = build_source) -> dict[str, Any]:
    """The metric source of each of the target's further resources."""
    return {name: build(target.resource_target(name), config) for name in target.resources}


def build_actuator(target: TargetConfig, config: Config | None = None, **injected: Any) -> Any:
    cls = actuators.get(target.actuator.type)
    caps = capabilities_of(cls)
    kwargs: dict[str, Any] = {"target": target.name}
    if caps.needs_base_dir and config is not None and config.base_dir is not None:
        kwargs["base_dir"] = config.base_dir  # relative paths resolve next to the config file
    if caps.takes_ladder and target.policy.ladder is not None:
        kwargs["ladder"] = [r.name for r in target.policy.ladder]
    kwargs.update(injected)
    return cls(target.actuator_config, **kwargs)


def build_targets(config: Config, store: Store, names: list[str] | None = None) -> list[LiveTarget]:
    out = []
    for t in config.targets:
        if names and t.name not in names:
            continue
        out.append(LiveTarget(t, source=build_source(t, config), store=store, actuator=build_actuator(t, config),
                              covariates=build_covariates(t, config), resources=build_resources(t, config)))
    return out


def check_actuator(target: TargetConfig, actuator: Any) -> str | None:
    """Validate an actuator at startup (its apply fits in the target's cycle
    timeout, credentials resolve, the target exists, the request fits the
    platform's limits). A permanent problem is
    a :class:`ConfigError` naming the target; a transient one (the platform
    unreachable right now) is returned as a warning — the cycles retry."""
    from actuators.base import check_apply_bound

    from .core.errors import ConfigError, PermanentActuatorError, TransientActuatorError

    # an apply that blocks (terraform) must end before the daemon abandons the cycle
    bound = check_apply_bound(target.actuator_config, target.timeout)
    if bound is not None:
        raise ConfigError(f"target {target.name!r}: {bound}")
    validate = getattr(actuator, "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except PermanentActuatorError as exc:
        raise ConfigError(f"target {target.name!r}: actuator {target.actuator.type!r}: {exc}") from None
    except TransientActuatorError as exc:
        return f"target {target.name!r}: actuator {target.actuator.type!r} not reachable at startup: {exc}"
    return None
