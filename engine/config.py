"""The configuration file: one YAML document, validated at load.

Errors name the field path and the bad value, e.g.
``targets[0].policy: max_replicas (3) is less than min_replicas (5)``, and
come as one :class:`ConfigError` listing every problem found.

Plugin sections (``source``, ``covariates``, ``forecaster.params``,
``actuator``) are validated against the plugin's own ``Config``/``Params``
model while the file is parsed, so a bad field fails at startup, not
mid-cycle, and the typed objects are what the config holds:
``target.source`` is the source's ``Config`` (a :class:`CsvConfig`, a
:class:`PrometheusConfig`...), ``target.actuator`` the actuator's,
``target.forecaster.params`` the forecaster's ``Params``. Nothing is written
into a frozen object after validation.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, get_args

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, SecretBytes, SecretStr, SerializeAsAny,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from policies.config import MAX_SAMPLES, PolicyConfig, quantile_levels
from policies.window import LeadWindow, lead_window

from .anomaly import AnomalyConfig
from .core.units import Duration, format_duration

from .core.checks import repeated
from .core.errors import ConfigError, PluginError
from .core.plugins import capabilities_of

Mode = Literal["observe", "dry-run", "approve", "auto"]


class _Model(BaseModel):
    # allow_inf_nan=False: floats are finite (see policies.config)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class QualityGate(_Model):
    """Stop trusting a forecaster whose live error is too high.

    The engine runs the ``fallbacks`` beside the configured model (in shadow:
    forecasts logged in memory, never acted on), measures each one's live
    error at the policy's lead time over ``window``, and while the configured
    model's error exceeds ``bound`` uses the first fallback within it — or
    none (reactive) if none is. Each decision records the gate's choice, the
    errors and the reason.

    ``score``: ``pinball`` (default) judges the whole forecast: twice the
    mean pinball loss over the quantile levels the engine asks for, over the
    in-sample MAE of the one-day seasonal naive (the seasonal-naive
    reference; the factor 2 is GluonTS' weighted quantile loss convention, so
    a forecast whose quantiles all sit on its point scores exactly its MASE
    and one ``bound`` reads the same for both scores); ``mase`` judges the
    point forecast alone (mean absolute error over the same reference).
    """

    bound: float = Field(gt=0.0)
    score: Literal["pinball", "mase"] = "pinball"
    fallbacks: tuple[str, ...] = ("persistence",)
    window: Duration = timedelta(days=1)
    min_samples: int = Field(24, ge=1, le=MAX_SAMPLES)


class Calibration(_Model):
    """Conformal calibration of every quantile level at every lead, from the
    forecaster's own recorded errors (``engine.calibration``): each level
    shifted by the empirical quantile of ``actual - forecast`` at that level
    over ``window``, once a lead has ``min_samples`` pairs. Applies to the
    configured model and to the quality gate's fallbacks; the point forecast
    is not changed."""

    window: Duration = timedelta(days=3)
    min_samples: int = Field(48, ge=1, le=MAX_SAMPLES)


def _registry(kind: str) -> Any:
    if kind == "source":
        from .sources import registry
    elif kind == "actuator":
        from actuators import registry
    else:
        from forecasters import registry
    return registry


def _plugin_error(loc: str, message: str, value: Any) -> ValidationError:
    # braces would be read as the template's placeholders
    text = message.replace("{", "(").replace("}", ")")
    return ValidationError.from_exception_data("plugin", [InitErrorDetails(
        type=PydanticCustomError("plugin", text), loc=(loc,), input=value)])


def _plugin_config(kind: str, value: Any) -> BaseModel:
    """A ``{type: name, ...}`` section -> the plugin's own validated Config
    (an instance of it passes through)."""
    if isinstance(value, PluginSection):
        value = value.fields()
    if isinstance(value, BaseModel):
        cls = _registry(kind).get(getattr(value, "type", ""))
        if isinstance(value, cls.Config):
            return value
        value = value.model_dump()
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping with a 'type' field (the {kind}'s name)")
    if "type" not in value:
        raise ValidationError.from_exception_data("plugin", [InitErrorDetails(type="missing", loc=("type",),
                                                                             input=dict(value))])
    try:
        cls = _registry(kind).get(value["type"])
    except PluginError as exc:
        raise _plugin_error("type", str(exc), value["type"]) from None
    return cls.Config.model_validate(dict(value))


#: a plugin's own config, validated by the plugin while the file is parsed
#: (``SerializeAsAny``: dumped with its own fields, not the base's)
SourceConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(lambda v: _plugin_config("source", v))]
ActuatorSection = Annotated[SerializeAsAny[BaseModel], BeforeValidator(lambda v: _plugin_config("actuator", v))]


class ForecasterConfig(_Model):
    name: str = "seasonal_persistence"
    #: the forecaster's own ``Params`` (validated by it; a mapping in the file)
    params: SerializeAsAny[BaseModel] = Field(default_factory=dict, validate_default=True)
    #: how often the model's parameters are refit (between refits, update()
    #: takes in new observations every cycle)
    refit_every: Duration = timedelta(days=1)
    #: a refit that fails is tried again after one interval, then after
    #: twice as long each time, at most this long apart (and never more
    #: than ``refit_every``); meanwhile the last good model keeps forecasting
    fit_retry_max: Duration = timedelta(hours=1)
    #: how much history to fetch and fit on
    history: Duration = timedelta(days=14)
    quantiles: tuple[float, ...] = (0.5, 0.9)
    #: forecast steps beyond lead_time + hold (extra points for dashboards)
    extra_horizon: Duration = timedelta(0)
    #: switch model (or to reactive) when the live error exceeds a bound
    quality_gate: QualityGate | None = None
    #: shift each quantile level by its own recent errors (conformal)
    calibration: Calibration | None = None
    #: start from this saved model (e.g. a global LSTM trained on other
    #: targets with ``forescale train-global``): the cold-start path for a
    #: target with little history; relative to the config file
    init_from: Path | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            _registry("forecaster").get(v)
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any, info: ValidationInfo) -> Any:
        if "name" not in info.data:
            from forecasters.base import ForecasterParams

            return ForecasterParams()  # the name is wrong: reported on its own
        params_cls = _registry("forecaster").get(info.data["name"]).Params
        if isinstance(v, params_cls):
            return v
        if isinstance(v, BaseModel):
            v = v.model_dump()
        # the file's context: a path in the params is relative to the file
        return params_cls.model_validate(v if v is not None else {}, context=info.context)

    @field_validator("refit_every", "fit_retry_max")
    @classmethod
    def _positive_duration(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError(f"{format_duration(v)} must be positive")
        return v

    @field_validator("init_from")
    @classmethod
    def _relative_to_the_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        return base / v if v is not None and not v.is_absolute() and base is not None else v

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return quantile_levels(v)


#: the planner's forecaster where the target states neither
#: ``forecaster.name`` nor ``forecaster.params``: seasonal persistence and
#: Holt-Winters averaged half and half at every lead (the ``blend``
#: forecaster). Chosen on the planner's equal-cost frontier, tuning traces
#: (docs/planner.md, "Which forecaster"); every other policy keeps
#: ``seasonal_persistence``
PLAN_FORECASTER: dict[str, Any] = {
    "name": "blend",
    "params": {"members": [{"name": "seasonal_persistence"}, {"name": "holt_winters"}], "weights": {"0s": 0.5}},
}


def _plan_forecaster_installed() -> None:
    """The planner's default needs each member's packages (Holt-Winters:
    statsmodels, an extra); without them, one line saying what to install
    or state, at load rather than a reactive fallback every cycle."""
    for member in PLAN_FORECASTER["params"]["members"]:
        try:
            _registry("forecaster").get(member["name"])
        except PluginError as exc:
            raise ValueError(f"forecaster: the planner's default forecaster (blend of "
                             f"{' and '.join(m['name'] for m in PLAN_FORECASTER['params']['members'])}) "
                             f"cannot be built: {exc}; or state forecaster: {{name: seasonal_persistence}}") from None


def default_forecaster(policy_kind: str | None) -> ForecasterConfig:
    """The forecaster a policy of ``policy_kind`` runs with when none is
    stated: :data:`PLAN_FORECASTER` for the planner, ``seasonal_persistence``
    otherwise."""
    if policy_kind == "plan":
        _plan_forecaster_installed()
    return ForecasterConfig.model_validate(PLAN_FORECASTER if policy_kind == "plan" else {})


class PluginSection(BaseModel):
    """``{type: name, ...plugin fields}``; the fields are checked by the plugin."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def fields(self) -> dict[str, Any]:
        return self.model_dump()


class DirectionApproval(_Model):
    """What happens to a plan of one direction when nobody answers.

    ``auto_approve_after``: approve it (as ``policy:auto-approve``) once the
    target has waited this long for the change; ``expire_after``: drop it
    unapproved after this long (default: one interval past the
    auto-approval, else the target's ``plan_ttl``, else one interval)."""

    auto_approve_after: Duration | None = None
    expire_after: Duration | None = None

    @model_validator(mode="after")
    def _order(self) -> "DirectionApproval":
        for name in ("auto_approve_after", "expire_after"):
            v = getattr(self, name)
            if v is not None and v <= timedelta(0):
                raise ValueError(f"{name} ({v}) must be positive")
        a, e = self.auto_approve_after, self.expire_after
        if a is not None and e is not None and a >= e:
            raise ValueError(f"auto_approve_after ({a}) must be shorter than expire_after ({e}): "
                             "the plan would expire before it auto-approves")
        return self


class EmergencyApproval(_Model):
    #: a scale-up raised by the reactive override (a live spike) acts
    #: without waiting for approval, recorded as ``policy:emergency``
    reactive_override: bool = False


class ApprovalConfig(_Model):
    """Approve mode: defaults per direction, because people sleep, e.g.
    ``{scale_up: {auto_approve_after: 10m}, scale_down: {expire_after: 30m},
    emergency: {reactive_override: true}}``. Default: nothing is approved
    without a person."""

    scale_up: DirectionApproval = DirectionApproval()
    scale_down: DirectionApproval = DirectionApproval()
    emergency: EmergencyApproval = EmergencyApproval()


class AuditConfig(_Model):
    #: the environment variable holding the audit chain's HMAC key (the key
    #: itself never goes in the file)
    hmac_key_env: str = Field("FORESCALE_AUDIT_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ThresholdAlert(_Model):
    """A predictive alert (``targets[].alerts[]``): export how long until the
    forecast's ``level`` quantile crosses a threshold
    (``forescale_forecast_time_to_threshold_seconds``). The threshold is
    ``threshold`` (in the metric's units) or ``fraction`` of ``capacity``
    (e.g. 0.95 of a volume's size). Forecasts reach only ``lead_time + hold
    + forecaster.extra_horizon`` ahead: set ``extra_horizon`` to the warning
    time wanted (6h to be warned six hours ahead)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    threshold: float | None = None
    capacity: float | None = Field(None, gt=0.0)
    fraction: float | None = Field(None, gt=0.0, le=1.0)
    #: the forecast quantile compared with the threshold (None: the point forecast)
    level: float | None = 0.9

    @model_validator(mode="after")
    def _one_threshold(self) -> "ThresholdAlert":
        if self.threshold is not None and (self.capacity is not None or self.fraction is not None):
            raise ValueError("set threshold, or capacity and fraction, not both")
        if self.threshold is None and (self.capacity is None or self.fraction is None):
            raise ValueError("set threshold, or capacity and fraction (threshold = fraction * capacity)")
        return self

    @property
    def value(self) -> float:
        """The threshold in the metric's units."""
        if self.threshold is not None:
            return self.threshold
        assert self.capacity is not None and self.fraction is not None
        return self.capacity * self.fraction


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


class ResourceConfig(_Model):
    """One more demand signal of a target (``targets[].resources.<name>``):
    its own metric source, forecaster (default: the target's) and capacity
    model. The decision sizes for the resource that needs the most
    (:mod:`policies.resources`). Horizontal: ``capacity_per_replica`` (this
    resource's capacity per replica, e.g. GiB of memory); a ladder:
    ``rung_capacity`` (its capacity on each rung, in the ladder's order).
    ``target_utilization``: this resource's (default: the policy's)."""

    source: SourceConfig
    forecaster: ForecasterConfig | None = None
    capacity_per_replica: float | None = Field(None, gt=0.0)
    rung_capacity: tuple[Annotated[float, Field(gt=0.0)], ...] | None = None
    target_utilization: float | None = Field(None, gt=0.0, le=1.0)


#: the longest target (and resource) name: it names the model checkpoint's
#: file, and a file system takes 255 bytes per name (a 3,000-character name
#: validated, then no model could ever be saved)
MAX_NAME = 200


class TargetConfig(_Model):
    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: cycle interval, also the step the history is resampled to
    interval: Duration = timedelta(minutes=5)
    mode: Mode = "dry-run"
    #: the metric source's own Config (``{type: csv, path: ...}`` in the file)
    source: SourceConfig
    #: extra metrics for forecasters that take them (the LSTM's
    #: ``params.covariates``), each a metric source like ``source``
    covariates: dict[str, SourceConfig] = Field(default_factory=dict)
    forecaster: ForecasterConfig = Field(default_factory=ForecasterConfig)
    policy: PolicyConfig
    #: the name of the demand signal ``source`` measures, when the target
    #: has further ``resources`` (it names the steps it sized)
    resource: str = Field("demand", min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: further demand signals (memory, request rate...), each with its own
    #: source, forecaster and capacity model; the decision sizes for the one
    #: that needs the most
    resources: dict[Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_.:-]+$")],
                    ResourceConfig] = \
        Field(default_factory=dict)
    _resource_targets: dict[str, "TargetConfig"] = PrivateAttr(default_factory=dict)
    #: the actuator's own Config (default: the dry-run actuator)
    actuator: ActuatorSection = Field(default_factory=lambda: {"type": "dry-run"}, validate_default=True)
    #: approve mode: a plan waits this long for approval (None: until the
    #: next cycle's decision would supersede it, i.e. one interval)
    plan_ttl: Duration | None = None
    #: approve mode: auto-approval, expiry and the emergency rule
    approval: ApprovalConfig = ApprovalConfig()
    #: per-cycle timeout (the daemon abandons a cycle that runs longer)
    timeout: Duration = timedelta(minutes=2)
    #: random delay added to each cycle's start, spreading load
    jitter: Duration = timedelta(seconds=0)
    #: predictive alerts: time until the forecast crosses a threshold
    alerts: tuple[ThresholdAlert, ...] = ()
    #: scenario facts for ``forescale backtest --config``
    backtest: BacktestSection | None = None
    #: flag observations far outside the forecast band, keep them out of training
    anomalies: AnomalyConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _planner_forecaster(cls, data: Any) -> Any:
        """A planner whose target states no forecaster model (neither
        ``forecaster.name`` nor ``forecaster.params``) forecasts with
        :data:`PLAN_FORECASTER`; the section's other fields stay the
        target's."""
        if not isinstance(data, Mapping):
            return data
        pol, fc = data.get("policy"), data.get("forecaster")
        kind = pol.get("kind") if isinstance(pol, Mapping) else getattr(pol, "kind", None)
        if kind == "plan" and (fc is None or (isinstance(fc, Mapping) and "name" not in fc and "params" not in fc)):
            _plan_forecaster_installed()
            return {**data, "forecaster": {**(fc or {}), **PLAN_FORECASTER}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TargetConfig":
        if self.interval <= timedelta(0):
            raise ValueError(f"interval ({self.interval}) must be positive")
        if self.forecaster.history < self.interval:
            # every cycle would find no sample in its history window and fall back
            raise ValueError(f"forecaster.history ({format_duration(self.forecaster.history)}) is shorter than "
                             f"the interval ({format_duration(self.interval)}): no sample would be in it")
        if self.policy.max_staleness <= timedelta(0):
            raise ValueError("policy.max_staleness must be longer than zero (every observation would be stale)")
        names = [a.name for a in self.alerts]
        if len(set(names)) != len(names):
            raise ValueError(f"alerts: names must be unique; got {', '.join(names)}")
        for i, a in enumerate(self.alerts):
            if a.level is not None and a.level not in self.forecaster.quantiles:
                raise ValueError(f"alerts[{i}].level ({a.level}) is not one of forecaster.quantiles "
                                 f"({', '.join(f'{q:g}' for q in self.forecaster.quantiles)})")
        from actuators.base import check_apply_bound

        # an apply that blocks (terraform) must end before the daemon
        # abandons the cycle: found at load (validate), not at the first cycle
        bound = check_apply_bound(self.actuator_config, self.timeout)
        if bound is not None:
            raise ValueError(bound)
        ladder = self.policy.ladder
        initial = getattr(self.actuator, "initial_capacity", None)
        if ladder is not None and initial is not None and initial > len(ladder) - 1:
            # on a ladder capacity is a rung index: past the top rung there
            # is no instance type to simulate (it would show as "7 -> 2")
            raise ValueError(f"actuator.initial_capacity: {initial} is not a rung of policy.ladder "
                             f"(capacity on a ladder is the rung index, 0-{len(ladder) - 1}: "
                             f"{ladder[0].name} .. {ladder[-1].name})")
        if self.resources:
            self._check_resources()
        return self

    def _check_resources(self) -> None:
        """Each further resource's policy (this policy with its capacity
        model) and its target view, derived once here."""
        if self.resource in self.resources:
            raise ValueError(f"resources.{self.resource}: the name of the target's own signal "
                             f"(resource: {self.resource})")
        sm = self.policy.smoothing
        if sm.kind != "none" and sm.applies_to == "forecast":
            raise ValueError("policy.smoothing: applies_to: forecast smooths one resource's demand; "
                             "with several resources use applies_to: recommendation")
        from policies.resources import resource_policy

        for name, res in self.resources.items():
            try:
                policy = resource_policy(self.policy, capacity_per_replica=res.capacity_per_replica,
                                         rung_capacity=res.rung_capacity,
                                         target_utilization=res.target_utilization)
            except ValidationError as exc:
                raise ValueError(f"resources.{name}: " + "; ".join(
                    format_validation_error(exc))) from None
            except ValueError as exc:
                raise ValueError(f"resources.{name}: {exc}") from None
            # the resource as a target of its own for the runner: its
            # series name (feedback, cached samples) is ``target/resource``,
            # which no target can be named (a target name has no '/')
            view = self.model_copy(update={
                "name": self.resource_series(name), "source": res.source,
                "forecaster": res.forecaster or self.forecaster, "policy": policy,
                "covariates": {}, "resources": {}, "alerts": ()})
            view._resource_targets = {}  # (model_copy shared this dict)
            self._resource_targets[name] = view

    def resource_series(self, name: str) -> str:
        """The series name a further resource's samples, forecasts and
        accuracy are kept under (``target/resource``); the target's own
        signal keeps the target's name."""
        return f"{self.name}/{name}"

    def resource_target(self, name: str) -> "TargetConfig":
        """Resource ``name`` as a target of its own (its source, forecaster
        and policy, named ``target/resource``): what its runner and source
        are built from."""
        return self._resource_targets[name]

    @model_validator(mode="wrap")
    @classmethod
    def _staleness_fits_the_interval(cls, data: Any, handler: Any) -> "TargetConfig":
        """The observation is the newest bin of the history on the
        interval's grid, labelled by the last grid point at or before the
        newest sample: up to one interval older than that sample. With
        ``interval: 1h`` the default ``max_staleness`` (15 min) called every
        observation stale, and every cycle fell back for good. Unstated, it
        is at least two intervals; stated shorter than one, an error."""
        target = handler(data)
        pol = target.policy
        two = 2 * target.interval
        if "max_staleness" in pol.model_fields_set:
            if pol.max_staleness < target.interval:
                raise ValueError(f"policy.max_staleness ({format_duration(pol.max_staleness)}) is shorter than "
                                 f"the interval ({format_duration(target.interval)}): the newest observation "
                                 "sits on the interval's grid, up to one interval back; every cycle would "
                                 f"fall back (give {format_duration(two)} or more)")
        elif pol.max_staleness < two:
            target = target._with_policy(pol.model_copy(update={"max_staleness": two}))
        return target

    def _with_policy(self, policy: Any) -> "TargetConfig":
        """This target with ``policy`` (a default derived at load): each
        resource's view derives from the policy in force, so it is derived
        again."""
        target = self.model_copy(update={"policy": policy})
        if target.resources:
            target._resource_targets = {}
            target._check_resources()
        return target

    @model_validator(mode="wrap")
    @classmethod
    def _resize_downtime_from_the_actuator(cls, data: Any, handler: Any) -> "TargetConfig":
        """A planner on a ladder that states no ``plan.resize_downtime`` prices
        the one the target's actuator states (stated once, used by both)."""
        target = handler(data)
        pol = target.policy
        from actuators.base import ActuatorConfig

        if pol.kind == "plan" and pol.ladder is not None and pol.plan.resize_downtime is None \
                and isinstance(target.actuator, ActuatorConfig) and target.actuator.resize_downtime is not None:
            plan = pol.plan.model_copy(update={"resize_downtime": target.actuator.resize_downtime})
            target = target._with_policy(pol.model_copy(update={"plan": plan}))
        return target

    @model_validator(mode="after")
    def _forecaster_reaches_the_policy_horizon(self) -> "TargetConfig":
        """Checked at load, where the policy uses a forecast (a reactive one
        never builds it: the backtest's reactive baseline shares the policy's
        forecaster config): an ``auto`` forecaster's parameters fit the
        horizon they will be scored over (:attr:`forecaster_params`), and a
        model whose parameters bound how far ahead it forecasts (the
        per-series ``lstm``'s ``horizon``) reaches the steps the policy reads;
        else every cycle's forecast would fail and the policy fall back."""
        if not self.policy.uses_forecast:
            return self
        params = self.forecaster_params
        reach = getattr(params, "max_steps", None) if self.forecaster.init_from is None else None
        if reach is not None and reach < self.horizon_steps:
            read = "plan.horizon and the lead window" if self.policy.kind == "plan" else "its lead window"
            saved = getattr(params, "checkpoint", None)
            fix = (f"shorten {read.split(' and ')[0]}, or use a model trained to {self.horizon_steps} steps "
                   f"(forescale train-global --params with {params.max_steps_field} reaching it)" if saved else
                   f"set {params.max_steps_field}: {self.horizon_steps} or more" if params.max_steps_field != "horizons"
                   else f"add a step of {self.horizon_steps} or more to horizons")
            field = "checkpoint" if saved else params.max_steps_field
            raise ValueError(
                f"forecaster.params.{field}: {self.forecaster.name} forecasts {reach} steps "
                f"({format_duration(self.interval * reach)}) ahead, but the policy reads {self.horizon_steps} "
                f"({format_duration(self.interval * self.horizon_steps)}, {read}); {fix}")
        return self

    @property
    def forecaster_params(self) -> Any:
        """The forecaster's parameters as the engine builds it. An ``auto``
        forecaster that states no ``horizon_steps`` backtests at the steps
        this target's policy reads: its forecast horizon (the lead window; a
        planner's whole horizon, :attr:`horizon_steps`), and ``lead_bands``
        given as durations become steps of the target's interval; derived
        here, once for every place that builds or fits the forecaster."""
        fc = self.forecaster
        if fc.name != "auto" or ("horizon_steps" in fc.params.model_fields_set and fc.params.lead_bands_in_steps):
            return fc.params
        stated = {} if "horizon_steps" in fc.params.model_fields_set else {"horizon_steps": self.horizon_steps}
        why = f" (horizon_steps unstated: the target's forecast horizon, {self.horizon_steps} steps)" if stated else ""
        try:
            params = type(fc.params).model_validate({**fc.params.model_dump(exclude_unset=True), **stated})
            return params.in_steps(self.interval)  # lead_bands given as durations
        except ValidationError as exc:
            raise ValueError("forecaster.params: " + "; ".join(format_validation_error(exc)) + why) from None
        except ValueError as exc:
            raise ValueError(f"forecaster.params: {exc}{why}") from None

    # the names callers have used for the typed plugin configs
    @property
    def source_config(self) -> Any:
        return self.source

    @property
    def actuator_config(self) -> Any:
        return self.actuator

    @property
    def covariate_configs(self) -> dict[str, Any]:
        return dict(self.covariates)

    @property
    def forecast_quantiles(self) -> tuple[float, ...]:
        """The levels the engine asks the forecaster for: the configured ones
        and those the policy needs (the planner's distribution)."""
        band = {self.anomalies.level} if self.anomalies is not None and self.anomalies.method == "band" else set()
        return tuple(sorted(set(self.forecaster.quantiles) | set(self.policy.forecast_quantiles) | band))

    @property
    def horizon_steps(self) -> int:
        """Forecast steps for the configured lead window (no learned delay)."""
        return self.forecast_steps(lead_window(self.policy, None))

    def forecast_steps(self, window: LeadWindow, now: datetime | None = None) -> int:
        """How many interval steps a forecast made this cycle must reach:
        the end of the cycle's lead window, plus ``extra_horizon``. The one
        place the forecast horizon is derived (extend it here when something
        else, such as a planning horizon, must be covered too). ``now``: the
        cycle's time; a cycle that far past the grid that the last step
        would still lie before the lead window (``interval: 1h``, a cycle at
        :58, a 5-minute lead: the one step at the hour, 2 minutes ahead) gets
        one step more. On the grid (every backtest) nothing changes."""
        span = window.end + self.forecaster.extra_horizon
        if self.policy.kind == "plan":  # the planner plans over its whole horizon
            span = max(span, self.policy.plan.horizon)
        step = int(self.interval.total_seconds())
        steps = max(1, -(-int(span.total_seconds()) // step))
        if now is not None:
            past = int(now.timestamp()) % step  # how far the cycle is past the grid
            if steps * step - past < window.lead_time.total_seconds():
                steps += 1
        return steps


class TargetTemplate(_Model):
    """Targets from label sets (``templates[]``): every series that the
    source's PromQL ``query`` returns becomes a target, one per label set
    (``sum by (user, group) (storage_used_bytes)``: one per user and
    group). The block holds the template's own fields (``name``,
    ``source``, ``target_name``, ``discover_every``) and, beside them, any
    field of a target but ``name`` and ``source`` (``interval``, ``mode``,
    ``forecaster``, ``policy``, ``actuator``...), in which ``{label}`` is
    replaced by the series' value of that label (``namespace: "{group}"``).
    Each target's source is the template's query with ``series`` set to its
    labels; its state is kept under its name, so a series that goes away
    and comes back finds its state."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: the query whose result series become targets (a ``prometheus`` source)
    source: SourceConfig
    #: each target's name from its labels, e.g. ``storage-{user}-{group}``
    #: (default: the template's name and the label values, in label order);
    #: characters a target name cannot hold become ``_``
    target_name: str | None = Field(None, min_length=1)
    #: how often the query is asked which series exist now
    discover_every: Duration = timedelta(minutes=5)
    #: the target fields (everything else in the block), ``{label}`` unreplaced
    fields: dict[str, Any] = Field(default_factory=dict)
    #: per target name, sections that replace the template's for that target
    #: only (``{storage-alice-g1: {forecaster: {...}}}``, what ``forescale
    #: select --write-config`` writes); ``{label}`` is put in as in ``fields``
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the template validated once as a target (every label ``x``), set at
    #: load: the sections without a placeholder are taken from it as they are
    prototype: "TargetConfig | None" = Field(None, exclude=True)

    OWN: ClassVar[tuple[str, ...]] = ("name", "source", "target_name", "discover_every", "overrides")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "fields" not in data:
            return {**{k: v for k, v in data.items() if k in cls.OWN},
                    "fields": {k: v for k, v in data.items() if k not in cls.OWN}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TargetTemplate":
        if getattr(self.source, "type", None) != "prometheus":
            raise ValueError(f"source.type: a template's source must be prometheus (its query's series become "
                             f"targets), got {getattr(self.source, 'type', None)!r}")
        if getattr(self.source, "series", None):
            raise ValueError("source.series: set by the template for each target; leave it out")
        if self.discover_every <= timedelta(0):
            raise ValueError(f"discover_every ({self.discover_every}) must be positive")
        if self.target_name is not None and re.search(r"[{}]", _PLACEHOLDER.sub("", self.target_name)):
            raise ValueError(f"target_name: {self.target_name!r} has a brace that is not part of a {{label}} "
                             "placeholder")
        grouped = _grouping_labels(getattr(self.source, "query", ""))
        if grouped is not None:
            for label in self.labels:
                if label not in grouped:
                    raise ValueError(f"placeholder {{{label}}}: the query's result has only the labels "
                                     f"{', '.join(sorted(grouped)) or '(none)'} (its 'by' clause)")
        for name, over in self.overrides.items():
            fixed = sorted(k for k in over if k in ("name", "source") or k not in TargetConfig.model_fields)
            if fixed:
                raise ValueError(f"overrides.{name}.{fixed[0]}: an override replaces a target field other than "
                                 "name and source")
        for section, word in (("source", "type"), ("actuator", "type"), ("forecaster", "name"), ("policy", "kind")):
            chosen = (self.fields.get(section) or {}).get(word) if isinstance(self.fields.get(section), Mapping) \
                else None
            if isinstance(chosen, str) and _PLACEHOLDER.search(chosen):
                # (validated with every label "x", it said "unknown actuator 'x'")
                raise ValueError(f"{section}.{word}: {chosen!r}: a placeholder cannot choose the {section}'s "
                                 f"{'plugin' if word in ('type', 'name') else 'kind'}; name it")
        for part in (self.target_name or "", *_strings(self.fields), *_strings(self.overrides)):
            bad = _BAD_PLACEHOLDER.search(part)
            if bad:
                raise ValueError(f"{bad.group(0)!r} in {part!r} is not a placeholder: write {{label}} with a "
                                 "label name (letters, digits, _)")
        return self

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels the template's names and fields refer to."""
        found = _PLACEHOLDER.findall(self.target_name or "")
        for part in (*_strings(self.fields), *_strings(self.overrides)):
            found += _PLACEHOLDER.findall(part)
        return tuple(dict.fromkeys(found))

    def name_for(self, labels: Mapping[str, str]) -> str:
        """The target name of one label set."""
        if self.target_name is None:
            raw = "-".join([self.name, *(labels[k] for k in sorted(labels))])
        else:
            raw = _substitute(self.target_name, labels, f"templates[{self.name}].target_name")
        return _NAME_UNSAFE.sub("_", raw)

    def raw_target(self, labels: Mapping[str, str]) -> dict[str, Any]:
        """The target's fields with the labels put in (not yet validated)."""
        return {**_substitute(self.fields, labels, f"templates[{self.name}]"), "name": self.name_for(labels),
                "source": self.source.model_copy(update={"series": dict(labels)})}

    def override(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """The sections that replace the template's for target ``name``
        (none: ``{}``), with the labels put in."""
        over = self.overrides.get(name)
        return {} if not over else _substitute(over, labels, f"templates[{self.name}].overrides.{name}")

    def expand(self, labels: Mapping[str, str], base_dir: Path | None = None) -> "TargetConfig":
        """The target of one label set, validated (a section without a
        placeholder is the prototype's, not validated again: 10,000 targets
        of one template cost 10,000 small validations, not full ones); an
        override of the target's name replaces the template's sections."""
        raw = self.raw_target(labels)
        if self.prototype is not None:
            for k, v in self.fields.items():
                if not _PLACEHOLDER.search(json.dumps(v, default=str)):
                    raw[k] = getattr(self.prototype, k)
        raw.update(self.override(raw["name"], labels))
        try:
            return TargetConfig.model_validate(raw, context={"base_dir": base_dir})
        except ValidationError as exc:
            lines = format_validation_error(exc, f"templates[{self.name}] ({raw['name']})")
            raise ConfigError(_join(lines)) from None

    def sample(self) -> dict[str, str]:
        """A label set with every label the template refers to (``x``)."""
        return {k: "x" for k in self.labels}


#: ``{label}``; ``{{`` and ``}}`` stand for literal braces
_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
#: a brace pair that is neither a placeholder nor a PromQL selector (``{job="a"}``)
_BAD_PLACEHOLDER = re.compile(r"(?<!\{)\{(?![A-Za-z_][A-Za-z0-9_]*\})[^{}=~!\"']*\}(?!\})")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def _grouping_labels(query: str) -> set[str] | None:
    """The labels a query's result has when it is one aggregation ``... by
    (a, b) (...)`` (then exactly those), else None (not known before asking)."""
    clauses = re.findall(r"\b(by|without)\s*\(([^)]*)\)", query)
    if len(clauses) != 1 or clauses[0][0] != "by" or not query.lstrip().startswith(
            ("sum", "max", "min", "avg", "count", "group", "topk", "bottomk", "quantile", "stddev", "stdvar")):
        return None
    return {x.strip() for x in clauses[0][1].split(",") if x.strip()}


def _override_errors(tp: TargetTemplate, i: int, base_dir: Path | None) -> list[str]:
    """Each override validated as the template's sample target with it put
    in (overrides that are alike, e.g. one per target ``select`` chose the
    same model for, are validated once). The errors name the field."""
    errors: list[str] = []
    seen: set[str] = set()
    sample = tp.sample()
    for name, over in tp.overrides.items():
        once = json.dumps(over, sort_keys=True, default=str)
        if once in seen:
            continue
        seen.add(once)
        try:
            TargetConfig.model_validate({**tp.raw_target(sample), **tp.override(name, sample)},
                                        context={"base_dir": base_dir})
        except ValidationError as exc:
            errors += format_validation_error(exc, f"templates[{i}].overrides.{name}")
        except ConfigError as exc:
            errors.append(f"templates[{i}].overrides.{name}: {exc}")
    return errors


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _substitute(value: Any, labels: Mapping[str, str], where: str) -> Any:
    """``value`` with every ``{label}`` in its strings replaced; a label the
    series does not have is a ConfigError naming the field."""
    if isinstance(value, str):
        def put(m: re.Match[str]) -> str:
            if m.group(1) not in labels:
                raise ConfigError(f"{where}: placeholder {{{m.group(1)}}} in {value!r}: the series "
                                  f"{_labelset(labels)} has no label {m.group(1)!r}")
            return labels[m.group(1)]

        return _PLACEHOLDER.sub(put, value).replace("{{", "{").replace("}}", "}")
    if isinstance(value, Mapping):
        return {k: _substitute(v, labels, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(v, labels, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _labelset(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``,
    bracketed or not)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AuthConfig(_Model):
    """Bearer tokens the daemon's HTTP server accepts (``server.auth``).

    Tokens are never written in the file: ``token_sha256`` lists the
    SHA-256 hex digests of accepted tokens (``printf %s "$TOKEN" |
    sha256sum``), and ``token_env`` names an environment variable holding
    one more token, hashed at startup."""

    token_sha256: tuple[str, ...] = ()
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, d in enumerate(v):
            if len(d) != 64 or any(c not in "0123456789abcdefABCDEF" for c in d):
                # the value may be a token pasted by mistake: never echo it
                raise ValueError(f"entry {i} is not a SHA-256 hex digest (64 hex characters)")
        return tuple(d.lower() for d in v)

    @model_validator(mode="after")
    def _some(self) -> "AuthConfig":
        if not self.token_sha256 and not self.token_env:
            raise ValueError("set token_sha256 (digests of accepted tokens) or token_env (a variable "
                             "holding a token)")
        return self


class RemoteWriteTLS(_Model):
    #: a PEM bundle to trust instead of the system's (relative: next to the config file)
    ca_file: Path | None = None
    insecure_skip_verify: bool = False

    @field_validator("ca_file")
    @classmethod
    def _relative_to_the_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        return base / v if v is not None and not v.is_absolute() and base is not None else v


class BasicAuth(_Model):
    username: str = Field(min_length=1)
    #: the environment variable holding the password (never in the file)
    password_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class RemoteWriteConfig(_Model):
    """Prometheus remote write of the forecast and accuracy series
    (``server.remote_write``; :mod:`engine.remote_write`)."""

    url: str = Field(pattern=r"^https?://")
    #: the environment variable holding a bearer token (never in the file)
    bearer_token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    basic_auth: BasicAuth | None = None
    tls: RemoteWriteTLS | None = None
    timeout: Duration = timedelta(seconds=10)
    #: cycles' batches waiting to be sent; beyond it they are dropped (counted)
    queue_size: int = Field(1000, ge=1)
    max_retries: int = Field(3, ge=0)
    #: labels added to every series written (Prometheus' external_labels):
    #: ``{job: forescale, instance: prod}`` tells two daemons' series apart,
    #: and the written ones from those the same Prometheus scrapes
    labels: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _own_labels(cls, v: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(v) & {"target", "horizon", "level", "resource"} | {k for k in v if k.startswith("__")})
        if taken:
            raise ValueError(f"{', '.join(taken)}: forescale's own series labels (or reserved); name them otherwise")
        return v

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if urlsplit(v).password is not None or "@" in urlsplit(v).netloc:
            # credentials in the URL would end up in logs and errors
            raise ValueError("url must not carry credentials (user:password@); use basic_auth")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> "RemoteWriteConfig":
        if self.bearer_token_env and self.basic_auth is not None:
            raise ValueError("set bearer_token_env or basic_auth, not both")
        return self


class ServerConfig(_Model):
    """The daemon's HTTP server (/metrics, /healthz, /readyz, /api/v1)."""

    #: host:port; a non-loopback host needs ``auth``
    listen: str = "127.0.0.1:9464"
    enabled: bool = True
    #: bearer tokens; required for a non-loopback ``listen``
    auth: AuthConfig | None = None
    #: also push each new forecast to this Prometheus Pushgateway (for
    #: dashboards where Prometheus cannot scrape forescale); None: off
    pushgateway: str | None = Field(None, pattern=r"^https?://")
    #: also remote-write each cycle's forecast and accuracy series; None: off
    remote_write: RemoteWriteConfig | None = None

    @model_validator(mode="after")
    def _bind(self) -> "ServerConfig":
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen ({self.listen!r}) must be host:port")
        if self.enabled and not is_loopback(host) and self.auth is None:
            raise ValueError(f"listen ({self.listen}) is not a loopback address: configure server.auth "
                             "(bearer tokens) before serving on the network")
        return self


class Retention(_Model):
    """How long the daemon keeps rows of the state file, and the model
    checkpoints of retired targets (pruned once an hour). ``None``: forever. The predicted-versus-actual records and the
    sample cache are working data: never pruned below what a target still
    needs (its conformal window; its fetch history); decisions, with their
    plans and actuations, are the audit log and are kept unless a span is
    given (an unfinished intent or accepted action is never pruned)."""

    #: predicted-versus-actual records (``forescale accuracy`` reads 7 days)
    forecasts: Duration | None = timedelta(days=14)
    #: the metric sample cache (the default forecaster history is 14 days)
    samples: Duration | None = timedelta(days=15)
    #: decisions, plans and actuation records (the audit log)
    decisions: Duration | None = None
    #: the model checkpoint of a retired target (a template's whose series
    #: went away, one removed from the file), counted from its last cycle
    #: or fit; a live target's is never pruned
    models: Duration | None = timedelta(days=15)

    @field_validator("forecasts", "samples", "decisions", "models")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError(f"{v} must be positive, or null to keep forever")
        return v


def _secret_text(value: object) -> object:
    """A secret must be a string; the error never shows the value."""
    if isinstance(value, SecretStr) or value is None:
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string (the value is a secret and is not shown)")
    return value


#: a secret given inline in the file (``url``, ``password``, ...); the
#: ``*_env`` field beside it names an environment variable instead
Secret = Annotated[SecretStr | None, BeforeValidator(_secret_text)]


class SecretSection(_Model):
    """Each secret of a section comes inline (``<name>``) or from the
    environment (``<name>_env``), not both."""

    SECRETS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _one_source(self) -> "SecretSection":
        for name in self.SECRETS:
            if getattr(self, name) is not None and getattr(self, f"{name}_env") is not None:
                raise ValueError(f"give {name} or {name}_env, not both")
        return self

    def reveal(self, name: str, environ: Any = None) -> str | None:
        """The secret's value, from the file or the environment; a missing
        variable is a ConfigError naming the variable (never a value)."""
        import os

        inline, env = getattr(self, name), getattr(self, f"{name}_env")
        if inline is not None:
            return inline.get_secret_value()
        if env is None:
            return None
        value = (os.environ if environ is None else environ).get(env)
        if not value:
            raise ConfigError(f"{name}_env: environment variable {env} is not set")
        return value


NotifyEvent = Literal["plan_created", "plan_approved", "plan_rejected", "plan_expired", "applied", "failed",
                      "fallback_streak", "missed"]


class NotifyChannel(SecretSection):
    """One place notifications go: ``webhook`` (JSON POST), ``slack``
    (incoming webhook), ``dingtalk`` (robot webhook, optionally signed with
    its ``secret``) or ``email`` (SMTP with STARTTLS)."""

    type: Literal["webhook", "slack", "dingtalk", "email"]
    #: a name for logs and metrics (default: the type)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    #: which events (default: all)
    events: tuple[NotifyEvent, ...] | None = None
    url: Secret = None
    url_env: str | None = None
    #: dingtalk: the robot's signing secret ("SEC...")
    secret: Secret = None
    secret_env: str | None = None
    # email
    host: str | None = None
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password: Secret = None
    password_env: str | None = None
    sender: str | None = Field(None, alias="from")
    to: tuple[str, ...] = ()
    #: a CA bundle to verify the SMTP server's certificate (default: the system's)
    ca_file: Path | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _fields_for_type(self) -> "NotifyChannel":
        if self.type == "email":
            missing = [f for f, v in (("host", self.host), ("from", self.sender), ("to", self.to)) if not v]
            if missing:
                raise ValueError(f"an email channel needs {', '.join(missing)}")
            if self.url is not None or self.url_env is not None:
                raise ValueError("an email channel takes host/port, not url")
        else:
            if self.url is None and self.url_env is None:
                raise ValueError(f"a {self.type} channel needs url (or url_env)")
            if self.host is not None:
                raise ValueError(f"a {self.type} channel takes url, not host")
        if (self.secret is not None or self.secret_env is not None) and self.type != "dingtalk":
            raise ValueError("secret is for a dingtalk channel (its signing secret)")
        return self

    SECRETS: ClassVar[tuple[str, ...]] = ("url", "secret", "password")

    @property
    def label(self) -> str:
        return self.name or self.type


class NotifyConfig(_Model):
    """Where plan and action events are sent (engine/notify.py)."""

    channels: tuple[NotifyChannel, ...] = Field(min_length=1)
    #: tell people after this many consecutive fallback cycles of a target
    fallback_streak: int = Field(3, ge=1)
    #: messages waiting per channel; beyond it new ones are dropped (counted)
    queue_size: int = Field(100, ge=1)
    #: attempts per message before it is dropped (counted)
    max_attempts: int = Field(5, ge=1)
    #: per-request timeout
    timeout: Duration = timedelta(seconds=5)
    #: after a restart, at most this many plan events that happened while the
    #: daemon was down are sent per channel (the newest; a ``missed`` event
    #: says how many were left out); 0: none, start at the newest
    catch_up: int = Field(20, ge=0, le=10_000)


class ConsoleUser(SecretSection):
    """A person who may log in to the console and approve plans: their
    token's sha256 (``token_sha256``; make one with ``forescale console
    --hash-token``) or the environment variable holding the token."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    token_env: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "ConsoleUser":
        if (self.token_sha256 is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_sha256 or token_env")
        return self


class ConsoleConfig(SecretSection):
    """The web console and approval API (engine/console/)."""

    #: where ``forescale console`` listens (the daemon serves it on server.listen)
    listen: str = "127.0.0.1:9465"
    users: tuple[ConsoleUser, ...] = ()
    #: the address people reach the console at, for links in notifications
    public_url: str | None = Field(None, pattern=r"^https?://")
    #: the server secret that signs sessions and approval links; the daemon
    #: and ``forescale console`` must share it for links to work
    secret: Secret = None
    secret_env: str | None = None
    #: how long an approval link in a notification stays valid
    link_ttl: Duration = timedelta(hours=1)
    #: how long a login lasts
    session_ttl: Duration = timedelta(hours=12)
    #: failed logins allowed per client address per minute (then 429)
    login_attempts_per_minute: int = Field(5, ge=1)
    #: serve over TLS (cookies are then Secure)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    SECRETS: ClassVar[tuple[str, ...]] = ("secret",)

    @model_validator(mode="after")
    def _tls_pair(self) -> "ConsoleConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return self


class ExecutorConfig(_Model):
    """Where the heavy evidence work runs (``forescale select``, ``forescale
    fit``): ``local``, a process pool on this machine, or ``dask``, a
    ``distributed`` cluster at ``address`` or a ``LocalCluster`` started here
    (``local_cluster: true``). See ``engine/executor.py``."""

    kind: Literal["local", "dask"] = "local"
    #: local: pool processes (default: the CPU count; 1 runs in this process);
    #: dask with local_cluster: worker processes
    workers: int | None = Field(None, ge=1, le=4096)
    #: the scheduler of an existing Dask cluster (kind dask)
    address: str | None = Field(None, pattern=r"^tcp://[^\s/]+:[0-9]+$")
    #: start a LocalCluster on 127.0.0.1 instead of connecting (kind dask)
    local_cluster: bool = False
    #: threads per LocalCluster worker (1: the models are CPU-bound and hold the GIL)
    threads_per_worker: int = Field(1, ge=1, le=256)
    #: memory limit per LocalCluster worker (Dask's syntax, e.g. 2GiB)
    memory_limit: str = Field("2GiB", pattern=r"^[0-9.]+\s*[KMGT]?i?B$")
    #: how often a task that raised is run again before it counts as failed
    retries: int = Field(2, ge=0, le=20)
    #: worker deaths a task may cause before it counts as lost (Dask's
    #: distributed.scheduler.allowed-failures; set on a LocalCluster only)
    allowed_failures: int = Field(3, ge=0, le=20)
    #: how long to wait for the scheduler
    connect_timeout: Duration = timedelta(seconds=30)
    #: how long a cycle waits for its refits on the executor: a task still
    #: running then is a ``timeout`` failure, and its target falls back to
    #: reactive (default: half the cycle's interval or half its timeout,
    #: whichever is shorter; see ``deadline_for``)
    deadline: Duration | None = None

    @field_validator("deadline")
    @classmethod
    def _deadline_positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError(f"{format_duration(v)} must be positive (or leave it out: half the cycle's interval)")
        return v

    def deadline_for(self, target: "TargetConfig") -> timedelta:
        """The deadline of the refits of ``target``'s cycle (a template's
        prototype stands for its targets): ``deadline``, else half the
        shorter of the cycle's interval and timeout, so the cycle still
        decides and records before it is abandoned, and before the next."""
        return self.deadline if self.deadline is not None else min(target.interval, target.timeout) / 2

    @model_validator(mode="after")
    def _where(self) -> "ExecutorConfig":
        if self.kind == "local" and (self.address is not None or self.local_cluster):
            raise ValueError("address and local_cluster are for kind: dask")
        if self.kind == "dask" and (self.address is None) == (not self.local_cluster):
            raise ValueError("kind: dask needs either address (tcp://host:port) or local_cluster: true, not both")
        if self.kind == "dask" and self.address is not None and self.workers is not None:
            raise ValueError("workers is the size of a local_cluster; a remote cluster has its own")
        return self


class HaConfig(_Model):
    """Several daemon replicas on one PostgreSQL state (``state:
    postgresql://...``): targets are hashed onto ``shards``; each replica
    holds a lease per shard it runs, renewed every ``renew`` (default a
    third of ``lease``). A replica that stops renewing (killed, cut off)
    loses its shards after ``lease``, and another takes them over."""

    #: how many shards the targets are spread over (the unit of leadership)
    shards: int = Field(16, ge=1, le=4096)
    #: how long a lease lasts without renewal: the longest a dead
    #: replica's targets wait for another one
    lease: Duration = timedelta(seconds=30)
    #: how often a replica renews its leases and looks for free shards
    #: (default: a third of ``lease``)
    renew: Duration | None = None
    #: connections per daemon process to the database
    pool: int = Field(10, ge=2, le=200)

    @model_validator(mode="after")
    def _times(self) -> "HaConfig":
        if self.lease < timedelta(seconds=2):
            raise ValueError(f"lease: {self.lease} is too short (at least 2s)")
        if self.renew is not None and not timedelta(0) < self.renew <= self.lease / 3:
            # the fence wants a renew interval of lease left; just before a
            # renewal, lease - renew is left
            raise ValueError(f"renew: {self.renew} must be positive and at most a third of the lease ({self.lease})")
        return self

    @property
    def renew_every(self) -> timedelta:
        return self.renew if self.renew is not None else self.lease / 3


def _state_setting(v: Any) -> Any:
    """A path (str or Path) or a ``postgresql://`` URL; a URL is checked
    here, its password never shown."""
    from .db import is_url, redact_url

    if isinstance(v, Path):
        return str(v)
    if isinstance(v, str) and is_url(v):
        from urllib.parse import parse_qs, urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"not a valid PostgreSQL URL: {redact_url(v)}") from None
        if parts.netloc.count("@") > 1:
            # libpq ends the user info at the first '@', this parser at the
            # last: the rest of the password would be taken for the host
            # (and shown in libpq's errors, and asked of the DNS)
            raise ValueError("the PostgreSQL URL has more than one '@' before the host: write an '@' in the "
                             "user name or password as %40, or give the password in state_password_env "
                             "(the URL is not shown: it holds a password)")
        socket_dir = parse_qs(parts.query).get("host")  # postgresql:///db?host=/run/postgresql
        if not (parts.hostname or socket_dir) or not parts.path.strip("/"):
            raise ValueError(f"a PostgreSQL URL needs a host and a database name "
                             f"(postgresql://user@host:5432/dbname), got {redact_url(v)}")
    return v


class Config(_Model):
    #: where state is kept: a SQLite file (relative paths are relative to
    #: the config file), or a PostgreSQL database
    #: (``postgresql://user[:password]@host[:port]/dbname``) shared by
    #: several daemon replicas (see ``ha``)
    state: Annotated[str, BeforeValidator(_state_setting)] = Field("forescale.db", min_length=1)
    #: the environment variable holding the PostgreSQL password (default:
    #: the URL's password, else libpq's own ``PGPASSWORD``/``.pgpass``)
    state_password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: leader election among replicas (PostgreSQL state only)
    ha: HaConfig = HaConfig()
    #: how long the daemon keeps records in the state file
    retention: Retention = Retention()
    log_format: Literal["text", "json"] = "text"
    server: ServerConfig = ServerConfig()
    #: notifications of plans and actions (None: none sent)
    notify: NotifyConfig | None = None
    console: ConsoleConfig = ConsoleConfig()
    audit: AuditConfig = AuditConfig()
    #: where model selection, per-series fits and replays run (given in
    #: the file: also the daemon's batched refits, see ``cycle_executor``)
    executor: ExecutorConfig = ExecutorConfig()
    targets: tuple[TargetConfig, ...] = ()
    #: targets from label sets: one per series of a query (engine/fleet.py)
    templates: tuple[TargetTemplate, ...] = ()
    #: where the file was loaded from (relative paths resolve against it)
    base_dir: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        if not self.targets and not self.templates:
            raise ValueError("targets: Tuple should have at least 1 item (or give templates)")
        names = [t.name for t in self.targets]
        dup = repeated(names)
        if dup:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dup)}")
        names = [t.name for t in self.templates]
        dup = repeated(names)
        if dup:
            raise ValueError(f"template names must be unique; repeated: {', '.join(dup)}")
        deadline = self.executor.deadline
        if deadline is not None:
            for kind, name, t in [("target", t.name, t) for t in self.targets] + [
                    ("template", tp.name, tp.prototype) for tp in self.templates if tp.prototype is not None]:
                if deadline >= t.timeout:
                    raise ConfigError(f"{format_duration(deadline)} is not shorter than the timeout of {kind} {name} "
                                      f"({format_duration(t.timeout)}): "
                                      "a cycle is abandoned at its timeout, so its refits must end before it",
                                      "executor.deadline")
        return self

    @property
    def cycle_executor(self) -> ExecutorConfig | None:
        """Where the daemon's batched cycles send their per-series refits:
        the file's ``executor:`` section when it has one; None (no section)
        fits them in the cycle's own thread (:mod:`engine.fleet`)."""
        return self.executor if "executor" in self.model_fields_set else None

    @property
    def target_shapes(self) -> tuple[TargetConfig, ...]:
        """The static targets and each template's prototype: what settings
        such as retention must cover before discovery has run."""
        return self.targets + tuple(t.prototype for t in self.templates if t.prototype is not None)

    def unset_env(self, environ: Any = None) -> list[tuple[str, str]]:
        """(field path, variable) for each environment variable the file
        names (every ``*_env`` field) that is unset or empty in ``environ``
        (default: this process's): what ``forescale validate`` warns of,
        since ``run`` and ``console`` refuse to start without them. Not the
        audit key's: without it the chain is plain SHA-256, by choice."""
        import os

        env = os.environ if environ is None else environ
        out: list[tuple[str, str]] = []

        def walk(obj: Any, path: str) -> None:
            if isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    value, here = getattr(obj, name), f"{path}.{name}" if path else name
                    if name.endswith("_env") and isinstance(value, str):
                        if name != "hmac_key_env" and not env.get(value):
                            out.append((here, value))
                    else:
                        walk(value, here)
            elif isinstance(obj, (tuple, list)):
                for i, item in enumerate(obj):
                    walk(item, f"{path}[{i}]")

        walk(self, "")
        return out

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise ConfigError(f"no target named {name!r}; known: {', '.join(t.name for t in self.targets)}")

    @property
    def state_url(self) -> str | None:
        """The PostgreSQL URL (``None``: the state is a SQLite file)."""
        from .db import is_url

        return self.state if is_url(self.state) else None

    @property
    def state_path(self) -> Path:
        """The SQLite state file (a ConfigError for a PostgreSQL state)."""
        if self.state_url is not None:
            raise ConfigError("state is a PostgreSQL database, not a file")
        p = Path(self.state)
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p

    @property
    def state_shown(self) -> str:
        """Where state is kept, as logs and messages show it (no password)."""
        from .db import redact_url

        return str(self.state_path) if self.state_url is None else redact_url(self.state_url)

    def state_password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The PostgreSQL password from ``state_password_env`` (``None``:
        from the URL or libpq's defaults); a variable that is not set is a
        ConfigError naming it."""
        import os

        if self.state_password_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.state_password_env)
        if not value:
            raise ConfigError(f"state_password_env: environment variable {self.state_password_env} is not set")
        return value


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


#: words in a field name (or any part of its path) that mark a secret: its
#: input is never echoed in an error, valid or not
SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "credential", "auth", "header", "cookie",
                "private")
#: the parts of a target that a plugin validates (their fields are unknown
#: to this module, so their inputs are echoed only where the plugin's model
#: says the field is no secret)
_PLUGIN_SECTIONS = ("source", "actuator", "covariates", "params")


def _secret_name(part: Any) -> bool:
    return isinstance(part, str) and any(w in part.lower() for w in SECRET_WORDS)


def _holds_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_holds_secret(a) for a in get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def _known_not_secret(model: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """Whether ``loc`` inside ``model`` names a field that is known and holds
    no secret (a ``SecretStr`` anywhere in its type, or a secret-like name,
    makes it secret; a field the model does not declare is unknown)."""
    current: list[type[BaseModel]] = [model]
    field = None
    for part in loc:
        if not isinstance(part, str) or not current:
            continue  # a list index or dict key below a known field
        found = next((m.model_fields[part] for m in current if part in m.model_fields), None)
        if found is None:
            if field is None or _models_in(field.annotation):
                return False  # a field the model does not declare
            continue  # a dict key
        field = found
        if _holds_secret(field.annotation):
            return False
        current = _models_in(field.annotation)
    return field is not None


def _may_echo(prefix: str, loc: tuple[Any, ...], model: type[BaseModel] | None, document: Any,
              at: tuple[Any, ...] = ()) -> bool:
    """``at``: where in ``document`` the validated object sits (a
    template's target: ``("targets", 0)`` of a one-target document)."""
    if _secret_name(prefix) or any(_secret_name(part) for part in loc):
        return False
    if model is not None:
        return _known_not_secret(model, loc)
    inside = _section_model(document, at + loc) if document is not None else None
    if inside is not None:  # a plugin section: only what its model declares no secret
        section_model, rest = inside
        if rest == ("type",):
            return True  # a plugin's name is never a secret
        return section_model is not None and _known_not_secret(section_model, rest)
    # a plugin section without the document to look its model up in
    for i, part in enumerate(loc):
        if part in _PLUGIN_SECTIONS and not (part == "params" and (i == 0 or loc[i - 1] != "forecaster")):
            return False
    return True


#: a section says what it is with one of these two words: a source, an
#: actuator, a channel ``type:``; a policy, its smoothing, the executor ``kind:``
_NAMING_WORDS = {"type": "kind", "kind": "type"}


def _models_at(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The model classes the section at ``loc`` under ``root`` may be
    (several for a union), or none where the path leaves the models (a
    plugin's fields, a union's tag)."""
    current = [root] if root is not None else []
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: its model came with the field
        field = next((m.model_fields[part] for m in current if part in m.model_fields), None)
        if field is None:
            return []
        current = _models_in(field.annotation)
    return current


def _naming_hint(err: dict[str, Any], loc: tuple[Any, ...], root: type[BaseModel] | None) -> str | None:
    """The message for a section named with the other of ``type:`` and
    ``kind:`` (``source: {kind: csv}``, ``policy: {type: plan}``), which
    is right in spelling and wrong in word; None otherwise."""
    if not loc or loc[-1] not in _NAMING_WORDS:
        return None
    word, other = loc[-1], _NAMING_WORDS[loc[-1]]
    if err["type"] == "missing" and isinstance(err.get("input"), dict) and other in err["input"]:
        return f"required field is missing (this section says what it is with `{word}:`, not `{other}:`)"
    if err["type"] == "extra_forbidden":
        if any(other in m.model_fields for m in _models_at(root, loc[:-1])):
            return f"unknown field (this section says what it is with `{other}:`, not `{word}:`)"
    return None


def format_validation_error(exc: ValidationError, prefix: str = "",
                            model: type[BaseModel] | None = None, *, document: Any = None,
                            root: type[BaseModel] | None = None, at: tuple[Any, ...] = ()) -> list[str]:
    """One line per problem, ``path: message (got value)``. The value is
    left out (and scrubbed from the message) wherever it may be a secret: a
    field with a secret-like name, a ``SecretStr`` field of a plugin's
    model (``model``, or looked up from the raw ``document`` for a plugin
    section), or any field of a plugin section its model does not declare.
    ``root``: the model validated, for the hint at a section named with
    ``kind:`` where it takes ``type:`` or the other way round."""
    lines = []
    missing = {tuple(e["loc"]) for e in exc.errors() if e["type"] == "missing"}
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        echo = _may_echo(prefix, loc, model, document, at)
        inp = err.get("input")
        if not echo and isinstance(inp, (str, int, float)) and len(str(inp)) >= 4:
            msg = msg.replace(repr(inp), "<hidden>").replace(str(inp), "<hidden>")
        hint = _naming_hint(err, loc, root)
        if hint and err["type"] == "extra_forbidden" and loc[:-1] + (_NAMING_WORDS[loc[-1]],) in missing:
            continue  # said once, at the word missing
        if hint:
            msg = hint
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif echo and "input" in err and err["type"] not in ("value_error", "assertion_error"):
            if not isinstance(inp, (dict, list)) and repr(inp) not in msg:
                shown = repr(inp) if len(repr(inp)) <= 80 else f"{repr(inp)[:40]}... ({len(str(inp))} characters)"
                msg = f"{msg} (got {shown})"
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def _section_model(document: Any, loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, tuple[Any, ...]] | None:
    """For an error inside a plugin section of the raw ``document``: the
    plugin's model (None if it cannot be found) and the location inside it.
    None when ``loc`` is not inside a plugin section."""
    if len(loc) < 3 or loc[0] not in ("targets", "templates") or not isinstance(loc[1], int):
        return None
    try:
        target = document[loc[0]][loc[1]]  # a template block holds a target's sections as they are
        part = loc[2]
        if part in ("source", "actuator"):
            kind, section, rest = part, target.get(part, {"type": "dry-run"}), loc[3:]
        elif part == "covariates" and len(loc) > 3:
            kind, section, rest = "source", target["covariates"][loc[3]], loc[4:]
        elif part == "resources" and len(loc) > 4 and loc[4] == "source":
            kind, section, rest = "source", target["resources"][loc[3]]["source"], loc[5:]
        elif part == "forecaster" and len(loc) > 3 and loc[3] == "params":
            name = (target.get("forecaster") or {}).get("name", ForecasterConfig.model_fields["name"].default)
            return _registry("forecaster").get(name).Params, loc[4:]
        else:
            return None
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, loc[3:]
    try:
        return _registry(kind).get(section["type"]).Config, rest
    except (PluginError, KeyError, TypeError):
        return None, rest


def parse_config(data: Any, *, base_dir: Path | None = None, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a :class:`Config`: the core
    fields and every plugin section in one pass, every problem listed in one
    :class:`ConfigError`."""
    from forecasters import registry as forecasters

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping with a 'targets' list")
    try:
        # model_validate, not Config(**data): a non-string key or a stray
        # base_dir in the file must be a validation error, not a TypeError
        if "base_dir" in data:  # set from the file's location, never by the file
            raise ConfigError("invalid configuration:\n  base_dir: unknown field (check the spelling)")
        cfg = Config.model_validate({**data, "base_dir": base_dir}, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = format_validation_error(exc, document=data, root=Config)
        # pydantic also reports "too short" for a list whose items all failed
        lines = [ln for ln in lines if not (": Tuple should have at least" in ln and any(
            other.startswith(ln.split(": ", 1)[0] + "[") for other in lines))]
        raise ConfigError(_join(lines)) from None
    errors: list[str] = []
    templates = []
    for i, tp in enumerate(cfg.templates):
        try:
            raw = tp.raw_target(tp.sample())
            proto = TargetConfig.model_validate(raw, context={"base_dir": base_dir})
        except ValidationError as exc:
            # (the raw target as the document: a plugin's name and its
            # declared non-secret fields are shown, as for a file's target)
            errors += [ln.replace(f"templates[{i}].name:", f"templates[{i}].target_name:")
                       for ln in format_validation_error(exc, f"templates[{i}]", root=TargetConfig,
                                                         document={"targets": [raw]}, at=("targets", 0))]
            continue
        except ConfigError as exc:
            errors.append(f"templates[{i}]: {exc}")
            continue
        errors += _override_errors(tp, i, base_dir)
        templates.append(tp.model_copy(update={"prototype": proto}))
    if not errors and templates:
        cfg = cfg.model_copy(update={"templates": tuple(templates)})
    checked = [(f"targets[{i}]", t) for i, t in enumerate(cfg.targets)]
    checked += [(f"templates[{i}]", t.prototype) for i, t in enumerate(cfg.templates) if t.prototype is not None]
    for p, t in checked:
        if t.forecaster.init_from is not None:
            if not capabilities_of(forecasters.get(t.forecaster.name)).init_from:
                errors.append(f"{p}.forecaster.init_from: forecaster {t.forecaster.name!r} cannot start "
                              "from a saved model")
            elif not t.forecaster.init_from.exists():
                errors.append(f"{p}.forecaster.init_from: no such file {t.forecaster.init_from}")
        if t.forecaster.quality_gate is not None:
            for j, name in enumerate(t.forecaster.quality_gate.fallbacks):
                try:
                    forecasters.get(name)
                except PluginError as exc:
                    errors.append(f"{p}.forecaster.quality_gate.fallbacks[{j}]: {exc}")
    tls = cfg.server.remote_write.tls if cfg.server.remote_write is not None else None
    if tls is not None and tls.ca_file is not None and not tls.ca_file.exists():
        errors.append(f"server.remote_write.tls.ca_file: no such file {tls.ca_file}")
    if errors:
        raise ConfigError(_join(errors))
    return cfg


def _join(lines: list[str]) -> str:
    """One line for one problem; a list for several."""
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
    return "invalid configuration:\n  " + "\n  ".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps
    the last silently: ``interval: 5m`` then ``interval: 1m`` ran every
    minute, and no one was told)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            hash(key)
        except TypeError:
            continue  # left to the constructor's own error
        if key in seen and key != "<<":
            first = seen[key]
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {first.line + 1}); the file would keep "
                            "only the last", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


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
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ConfigError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=str(p))
