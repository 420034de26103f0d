"""The configuration file: one YAML document, validated at load.

Errors name the field path and the bad value, e.g.
``targets[0].policy: max_replicas (3) is less than min_replicas (5)``, and
come as one :class:`ConfigError` listing every problem found.

Plugin sections (``source``, ``forecaster.params``, ``actuator``) are
validated against the plugin's own ``Config``/``Params`` model at load time,
so a bad field fails at startup, not mid-cycle.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.config import PolicyConfig, quantile_levels

from .core.units import Duration

from .core.errors import ConfigError, PluginError

Mode = Literal["observe", "dry-run", "approve", "auto"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityGate(_Model):
    """Stop trusting a forecaster whose live error is too high.

    The engine runs the ``fallbacks`` beside the configured model (in shadow:
    forecasts logged in memory, never acted on), measures each one's live
    MASE at the policy's lead time over ``window`` (mean absolute error of
    the point forecast / the in-sample MAE of the one-day seasonal naive),
    and while the configured model's error exceeds ``bound`` uses the first
    fallback within it — or none (reactive) if none is. Each decision records
    the gate's choice, the errors and the reason.
    """

    bound: float = Field(gt=0.0)
    fallbacks: tuple[str, ...] = ("persistence",)
    window: Duration = timedelta(days=1)
    min_samples: int = Field(24, ge=1)


class ForecasterConfig(_Model):
    name: str = "seasonal_persistence"
    params: dict[str, Any] = Field(default_factory=dict)
    #: how often the model's parameters are refit (between refits, update()
    #: takes in new observations every cycle)
    refit_every: Duration = timedelta(days=1)
    #: how much history to fetch and fit on
    history: Duration = timedelta(days=14)
    quantiles: tuple[float, ...] = (0.5, 0.9)
    #: forecast steps beyond lead_time + hold (extra points for dashboards)
    extra_horizon: Duration = timedelta(0)
    #: switch model (or to reactive) when the live error exceeds a bound
    quality_gate: QualityGate | None = None
    #: start from this saved model (e.g. a global LSTM trained on other
    #: targets with ``forescale train-global``): the cold-start path for a
    #: target with little history; relative to the config file
    init_from: Path | None = None

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return quantile_levels(v)


class PluginSection(BaseModel):
    """``{type: name, ...plugin fields}``; the fields are checked by the plugin."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def fields(self) -> dict[str, Any]:
        return self.model_dump()


class BacktestSection(_Model):
    """Scenario facts for ``forescale backtest --config`` (unset: from the
    target and its policy; see ``engine.backtest.scenario_for``)."""

    #: the time a change really takes to serve, if not the policy's lead_time
    lead_time: Duration | None = None
    warmup: Duration | None = None
    #: the reactive HPA baseline's (and the oracle's) utilization
    baseline_utilization: float | None = Field(None, gt=0.0, le=1.0, serialization_alias="target_utilization")
    #: after a change lands, this long the capacity serves nothing ("unavailable")
    #: or still the old size ("old"): a VPS resize is a stop/modify/start
    resize_downtime: Duration | None = None
    downtime_capacity: Literal["unavailable", "old"] | None = None
    #: money per capacity change
    change_cost: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    #: the threshold resizer baseline (vertical): sustained this long
    threshold_window: Duration | None = None


class TargetConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: cycle interval, also the step the history is resampled to
    interval: Duration = timedelta(minutes=5)
    mode: Mode = "dry-run"
    source: PluginSection
    #: extra metrics for forecasters that take them (the LSTM's
    #: ``params.covariates``), each a metric source like ``source``
    covariates: dict[str, PluginSection] = Field(default_factory=dict)
    forecaster: ForecasterConfig = ForecasterConfig()
    policy: PolicyConfig
    actuator: PluginSection = PluginSection(type="dry-run")
    #: approve mode: a plan waits this long for approval (None: until the
    #: next cycle's decision would supersede it, i.e. one interval)
    plan_ttl: Duration | None = None
    #: per-cycle timeout (the daemon abandons a cycle that runs longer)
    timeout: Duration = timedelta(minutes=2)
    #: random delay added to each cycle's start, spreading load
    jitter: Duration = timedelta(seconds=0)
    #: scenario facts for ``forescale backtest --config``
    backtest: BacktestSection | None = None

    @model_validator(mode="after")
    def _check(self) -> "TargetConfig":
        if self.interval <= timedelta(0):
            raise ValueError(f"interval ({self.interval}) must be positive")
        return self

    # the typed plugin configs, filled in by load_config
    _source: Any = None
    _actuator: Any = None
    _covariates: Any = None

    @property
    def source_config(self) -> Any:
        return self._source

    @property
    def actuator_config(self) -> Any:
        return self._actuator

    @property
    def covariate_configs(self) -> dict[str, Any]:
        return dict(self._covariates or {})

    @property
    def forecast_quantiles(self) -> tuple[float, ...]:
        """The levels the engine asks the forecaster for: the configured ones
        and those the policy needs (the planner's distribution)."""
        return tuple(sorted(set(self.forecaster.quantiles) | set(self.policy.forecast_quantiles)))

    @property
    def horizon_steps(self) -> int:
        span = self.policy.lead_time + self.policy.hold + self.forecaster.extra_horizon
        if self.policy.kind == "plan":  # the planner plans over its whole horizon
            span = max(span, self.policy.plan.horizon)
        return max(1, -(-int(span.total_seconds()) // int(self.interval.total_seconds())))


class ServerConfig(_Model):
    """The daemon's HTTP endpoint (/metrics, /healthz, /readyz)."""

    listen: str = "127.0.0.1:9464"
    enabled: bool = True
    #: also push each new forecast to this Prometheus Pushgateway (for
    #: dashboards where Prometheus cannot scrape forescale); None: off
    pushgateway: str | None = Field(None, pattern=r"^https?://")


class Config(_Model):
    #: the SQLite state file (relative paths are relative to the config file)
    state: Path = Path("forescale.db")
    log_format: Literal["text", "json"] = "text"
    server: ServerConfig = ServerConfig()
    targets: tuple[TargetConfig, ...] = Field(min_length=1)
    #: where the file was loaded from (relative paths resolve against it)
    base_dir: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dup)}")
        return self

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise ConfigError(f"no target named {name!r}; known: {', '.join(t.name for t in self.targets)}")

    @property
    def state_path(self) -> Path:
        return self.state if self.state.is_absolute() or self.base_dir is None else self.base_dir / self.state


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic adds the model/validator names of unions; skip those
            if isinstance(part, str) and (part.startswith("function-") or part in ("tagged-union",)):
                continue
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        path = _loc(tuple(err["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            inp = err["input"]
            if not isinstance(inp, (dict, list)):
                msg = f"{msg} (got {inp!r})"
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def _plugin_config(registry: Any, section: PluginSection, path: str, errors: list[str]) -> Any:
    try:
        cls = registry.get(section.type)
    except PluginError as exc:
        errors.append(f"{path}.type: {exc}")
        return None
    try:
        return cls.Config(**section.fields())
    except ValidationError as exc:
        errors.extend(format_validation_error(exc, path))
        return None


def parse_config(data: Any, *, base_dir: Path | None = None, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    from actuators import registry as actuators
    from forecasters import registry as forecasters

    from .sources import registry as sources

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping with a 'targets' list")
    try:
        # model_validate, not Config(**data): a non-string key or a stray
        # base_dir in the file must be a validation error, not a TypeError
        if "base_dir" in data:  # set from the file's location, never by the file
            raise ConfigError("invalid configuration:\n  base_dir: unknown field (check the spelling)")
        cfg = Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        lines = format_validation_error(exc)
        # pydantic also reports "too short" for a list whose items all failed
        if any(ln.startswith("targets[") for ln in lines):
            lines = [ln for ln in lines if not ln.startswith("targets: Tuple should have at least")]
        raise ConfigError(_join(lines)) from None
    errors: list[str] = []
    for i, t in enumerate(cfg.targets):
        p = f"targets[{i}]"
        object.__setattr__(t, "_source", _plugin_config(sources, t.source, f"{p}.source", errors))
        object.__setattr__(t, "_actuator", _plugin_config(actuators, t.actuator, f"{p}.actuator", errors))
        object.__setattr__(t, "_covariates", {
            name: _plugin_config(sources, sec, f"{p}.covariates.{name}", errors)
            for name, sec in t.covariates.items()})
        try:
            fcls = forecasters.get(t.forecaster.name)
            fcls.Params(**t.forecaster.params)
        except PluginError as exc:
            errors.append(f"{p}.forecaster.name: {exc}")
        except ValidationError as exc:
            errors.extend(format_validation_error(exc, f"{p}.forecaster.params"))
        if t.forecaster.init_from is not None:
            try:
                takes = "init_from" in inspect.signature(forecasters.get(t.forecaster.name)).parameters
            except (PluginError, TypeError, ValueError):
                takes = True  # an unknown name is reported above
            path = t.forecaster.init_from
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
                object.__setattr__(t.forecaster, "init_from", path)
            if not takes:
                errors.append(f"{p}.forecaster.init_from: forecaster {t.forecaster.name!r} cannot start "
                              "from a saved model")
            elif not path.exists():
                errors.append(f"{p}.forecaster.init_from: no such file {path}")
        if t.forecaster.quality_gate is not None:
            for j, name in enumerate(t.forecaster.quality_gate.fallbacks):
                try:
                    forecasters.get(name)
                except PluginError as exc:
                    errors.append(f"{p}.forecaster.quality_gate.fallbacks[{j}]: {exc}")
    if errors:
        raise ConfigError(_join(errors))
    return cfg


def _join(lines: list[str]) -> str:
    """One line for one problem; a list for several."""
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=str(p))
