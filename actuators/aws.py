"""AWS actuators: Auto Scaling group capacity (``aws-asg``) and an EC2
instance resized along a ladder of instance types (``aws-ec2``).

boto3 is imported only when an actuator first needs a client, so importing
``actuators`` (or this module) never imports it. Clients can be injected
(``autoscaling=``, ``ec2=``); otherwise they are created from the config
(``region``, optional ``endpoint_url`` and ``profile``) through boto3's
standard credential chain.

botocore's own retries are switched off on the clients we create
(``total_max_attempts=1``): there is exactly one retry loop,
:func:`actuators.base.retrying`, bounded by ``retry_attempts`` and
``retry_max_wait`` with the sleep injected, so tests do not wait and the
audit sees every attempt's outcome.

Error mapping (one table, :func:`map_aws_error`):

- throttling, 5xx, ``ScalingActivityInProgress``, ``ResourceContention``,
  connection failures and timeouts -> :class:`TransientActuatorError`
  (retried);
- quota and capacity codes, and an Auto Scaling ``ValidationError`` about
  MinSize/MaxSize -> :class:`LimitExceeded`;
- every other service error (``ValidationError``, ``AccessDenied``,
  ``UnauthorizedOperation``, ``InvalidInstanceID.NotFound``, ...) and
  missing credentials -> :class:`PermanentActuatorError` (not retried).

Errors carry the provider's request ids. Credentials are never logged or put
in an error message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from engine.core.errors import (
    ActuatorError,
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)
from engine.core.types import ActionPlan, ActuationResult
from engine.core.units import Duration

from .base import ActuatorConfig, Monotonic, Sleep, require_non_negative, retrying

log = logging.getLogger(__name__)

#: Error codes that say "try again later". Sources: the AWS SDKs' standard
#: retry mode (botocore/retries/standard.py THROTTLING_ERROR_CODES and
#: TRANSIENT_ERROR_CODES), plus the Auto Scaling faults documented as
#: retryable (ScalingActivityInProgress, ResourceContention).
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
    "ServiceUnavailable", "Unavailable", "InternalFailure", "InternalError",
    "InternalServerError", "ScalingActivityInProgress", "ResourceContention",
})

#: Codes that mean the request is outside the platform's (or the account's)
#: own limits: retrying will not help, raising a limit or choosing another
#: capacity will.
LIMIT_CODES = frozenset({
    "LimitExceeded", "InstanceLimitExceeded", "VcpuLimitExceeded",
    "InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported",
})

# Auto Scaling answers a desired capacity outside MinSize..MaxSize with a
# ValidationError "New SetDesiredCapacity value 9 is above max value 5 ...".
_LIMIT_MESSAGE = re.compile(r"\b(above|below) (max|min)\b|\bMaxSize\b|\bMinSize\b", re.I)

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "name a profile in the actuator's 'profile' field, or run with an instance/task role"
)


def map_aws_error(exc: BaseException, operation: str) -> ActuatorError | None:
    """The forescale error for a botocore exception raised by ``operation``
    (``None``: not an AWS error, let it propagate)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(error.get("Code", "") or "")
        message = str(error.get("Message", "") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        rid = meta.get("RequestId") or ""
        ids = (rid,) if rid else ()
        text = f"{operation} failed: {code or f'HTTP {status}'}: {message}".rstrip(": ")
        if rid:
            text += f" (request id {rid})"
        if code in TRANSIENT_CODES or status >= 500:
            return TransientActuatorError(text, request_ids=ids)
        if code in LIMIT_CODES or (code == "ValidationError" and _LIMIT_MESSAGE.search(message)):
            return LimitExceeded(text, request_ids=ids)
        if code in {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException"}:
            return PermanentActuatorError(f"{text}; check the AWS credentials", request_ids=ids)
        return PermanentActuatorError(text, request_ids=ids)
    if isinstance(exc, bx.NoCredentialsError):
        return PermanentActuatorError(f"{operation}: {NO_CREDENTIALS}")
    if isinstance(exc, (bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        # the message names the provider and the missing variable, never a secret
        return PermanentActuatorError(f"{operation}: AWS credentials are incomplete: {exc}")
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
        return TransientActuatorError(f"{operation}: cannot reach the AWS endpoint: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return PermanentActuatorError(f"{operation}: {exc}")
    return None


# ----------------------------------------------------------------------------- config
class AwsConfig(ActuatorConfig):
    """Where and as whom the AWS actuators call."""

    #: the region of the group / instance, e.g. ``eu-west-1``
    region: str = Field(min_length=1)
    #: another endpoint (a VPC endpoint, a test server); ``None``: AWS's own
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    #: a named profile of the shared config files; ``None``: the default chain
    profile: str | None = None



class AutoScalingGroupConfig(AwsConfig):
    type: str = "aws-asg"
    #: the Auto Scaling group's name; ``None``: the target's name
    group_name: str | None = Field(default=None, min_length=1)
    #: ``desired``: set DesiredCapacity. ``min-floor``: set MinSize as a floor
    #: and leave DesiredCapacity to the group's own dynamic policies (AWS's
    #: predictive-scaling pattern), so they still answer surprises.
    mode: Literal["desired", "min-floor"] = "desired"
    #: min-floor only: the MinSize the group has when the forecast asks for
    #: less (the floor is never lowered below it)
    base_min_size: int | None = Field(default=None, ge=0)
    #: clamp a request outside MinSize..MaxSize to the nearest limit instead
    #: of failing with LimitExceeded
    clamp_to_group_limits: bool = False
    #: what read() reports: ``in_service`` instances, ``desired`` capacity,
    #: or (min-floor only) ``min_size``. ``None``: ``in_service`` in desired
    #: mode, ``min_size`` in min-floor mode (the value forescale sets).
    read: Literal["in_service", "desired", "min_size"] | None = None

    @model_validator(mode="after")
    def _check_mode(self) -> "AutoScalingGroupConfig":
        if self.mode == "min-floor" and self.base_min_size is None:
            raise ValueError("base_min_size is required when mode is 'min-floor' "
                             "(the MinSize restored when the forecast asks for less)")
        if self.mode == "desired" and self.base_min_size is not None:
            raise ValueError("base_min_size applies only to mode 'min-floor'")
        if self.read == "min_size" and self.mode != "min-floor":
            raise ValueError("read 'min_size' applies only to mode 'min-floor'")
        return self

    @property
    def read_mode(self) -> str:
        if self.read is not None:
            return self.read
        return "min_size" if self.mode == "min-floor" else "in_service"


class EC2InstanceTypeConfig(AwsConfig):
    type: str = "aws-ec2"
    #: the instance to resize
    instance_id: str = Field(pattern=r"^i-[0-9a-f]{8,17}$")
    #: stated in describe() so approvers see the cost of a resize: a stop
    #: and start of an EBS-backed instance usually takes one to three
    #: minutes, status checks a few more; five minutes is a cautious default.
    downtime_estimate: Duration = timedelta(minutes=5)
    #: after start, also wait for the instance and system status checks
    wait_for_status_checks: bool = True


# ------------------------------------------------------------------------- plumbing
_loaders_lock = threading.Lock()
_loaders: dict[Any, Any] = {}


def _new_session(profile: str | None, region: str) -> Any:
    """A boto3 session of its own (own credentials, own profile) that shares
    parsed service models with the others: the EC2 model is megabytes of
    JSON, and a daemon with many targets should parse it once, not once per
    actuator."""
    import boto3
    import botocore.session
    from botocore.loaders import create_loader

    core = botocore.session.get_session()
    data_path = core.get_config_variable("data_path")
    with _loaders_lock:
        loader = _loaders.get(data_path)
        if loader is None:
            loader = _loaders[data_path] = create_loader(data_path)
        core.register_component("data_loader", loader)
        session = boto3.Session(botocore_session=core, profile_name=profile, region_name=region)
        # boto3 appends its own data folder to the loader's search path on
        # every Session; keep one copy
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


class _AwsActuator:
    """Client creation, the retried call and the credential check shared by
    both actuators."""

    name: ClassVar[str]
    _services: ClassVar[tuple[str, ...]]

    def __init__(self, config: AwsConfig, *, target: str, sleep: Sleep, monotonic: Monotonic,
                 clients: Mapping[str, Any]) -> None:
        self.config = config
        self.target = target
        self._sleep = sleep
        self._monotonic = monotonic
        self._clients: dict[str, Any] = {k: v for k, v in clients.items() if v is not None}
        self._session: Any = None

    # -- clients
    def _boto_session(self) -> Any:
        if self._session is None:
            from botocore.exceptions import ProfileNotFound

            # an explicit profile, or AWS_PROFILE when none is configured
            profile = self.config.profile
            try:
                session = _new_session(profile, self.config.region)
                profile = session.profile_name
                missing = profile not in session.available_profiles and profile != "default"
            except ProfileNotFound as exc:
                profile, missing = exc.kwargs.get("profile", profile), True
            if missing:
                raise PermanentActuatorError(
                    f"the AWS profile {profile!r} (actuator field 'profile', or AWS_PROFILE) "
                    f"is not in the shared config or credentials files"
                )
            self._session = session
        return self._session

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            self._clients[service] = self._boto_session().client(
                service,
                endpoint_url=self.config.endpoint_url,
                config=Config(
                    # one retry loop only: ours (see the module docstring)
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    # botocore's defaults are 60 s each; a control-plane call
                    # that takes longer is better retried than waited on
                    connect_timeout=10,
                    read_timeout=30,
                    user_agent_extra="forescale",
                ),
            )
        return self._clients[service]

    def _check_credentials(self) -> None:
        """Raise one clear error when no credentials resolve. Injected
        clients carry their own; their first call reports a missing one."""
        if all(s in self._clients for s in self._services):
            return
        from botocore import exceptions as bx

        try:
            credentials = self._boto_session().get_credentials()
        except bx.BotoCoreError as exc:  # partial keys, a failing credential_process, SSO expiry
            raise map_aws_error(exc, "resolving credentials") from exc  # type: ignore[misc]
        if credentials is None:
            raise PermanentActuatorError(NO_CREDENTIALS)

    # -- calls
    def _call(self, service: str, operation: str, request_ids: list[str] | None = None,
              **params: Any) -> dict[str, Any]:
        """One API call, transient errors retried with backoff. The request
        id of a successful call is appended to ``request_ids``."""
        client = self._client(service)
        method = getattr(client, operation)
        api_name = client.meta.method_to_api_mapping.get(operation, operation)

        def once() -> dict[str, Any]:
            try:
                response = method(**params)
            except Exception as exc:  # noqa: BLE001 - mapped or re-raised as is
                mapped = map_aws_error(exc, f"{service}:{api_name}")
                if mapped is None:
                    raise
                raise mapped from exc
            rid = (response.get("ResponseMetadata") or {}).get("RequestId")
            if rid and request_ids is not None:
                request_ids.append(rid)
            return response

        return self.config.retry(once, sleep=self._sleep)

    def _wait(self, check: Callable[[], tuple[bool, Any]]) -> tuple[bool, Any, float]:
        return self.config.poll(check, sleep=self._sleep, monotonic=self._monotonic)


def _with_ids(exc: ActuatorError, message: str, ids: Sequence[str]) -> ActuatorError:
    """``exc``'s class with a longer message and every request id so far."""
    merged = tuple(dict.fromkeys([*ids, *exc.request_ids]))
    return type(exc)(message, request_ids=merged)


# ------------------------------------------------------------------- auto scaling
@dataclass(frozen=True)
class _Group:
    name: str
    min_size: int
    max_size: int
    desired: int
    in_service: int

    @classmethod
    def from_api(cls, g: Mapping[str, Any]) -> "_Group":
        return cls(
            name=g["AutoScalingGroupName"],
            min_size=int(g["MinSize"]),
            max_size=int(g["MaxSize"]),
            desired=int(g["DesiredCapacity"]),
            # Pending, Standby, Terminating, Warmed:* and detached instances
            # do not serve load
            in_service=sum(1 for i in g.get("Instances", ()) if i.get("LifecycleState") == "InService"),
        )


@dataclass(frozen=True)
class _GroupChange:
    operation: str | None  # boto3 method; None: the group already is where asked
    api: str
    params: dict[str, Any]
    target: int  # the DesiredCapacity (desired mode) or MinSize (min-floor) driven to
    clamped_from: int | None  # the capacity asked before clamping, if clamped


class AutoScalingGroupActuator(_AwsActuator):
    """Horizontal: the capacity of one EC2 Auto Scaling group.

    ``mode: desired`` sets DesiredCapacity (SetDesiredCapacity with
    HonorCooldown false: the forecast decided, not a cooldown) and verifies
    that the number of InService instances reaches it. ``mode: min-floor``
    sets MinSize to ``max(capacity, base_min_size)`` and raises
    DesiredCapacity only when it is below the new floor; the group's own
    scaling policies keep working above the floor.
    """

    name: ClassVar[str] = "aws-asg"
    Config = AutoScalingGroupConfig
    _services = ("autoscaling",)

    def __init__(self, config: AutoScalingGroupConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, autoscaling: Any = None) -> None:
        if ladder:
            raise ConfigError("the aws-asg actuator is horizontal and takes no ladder", path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic,
                         clients={"autoscaling": autoscaling})
        self.config: AutoScalingGroupConfig = config
        self.group_name = config.group_name or target
        if not self.group_name:
            raise ConfigError("no Auto Scaling group named: set group_name or the target's name",
                              path="group_name")

    # -- protocol
    def validate(self) -> None:
        self._check_credentials()
        group = self._group()
        if self.config.mode == "min-floor" and self.config.base_min_size > group.max_size:  # type: ignore[operator]
            raise LimitExceeded(
                f"base_min_size ({self.config.base_min_size}) is above MaxSize ({group.max_size}) "
                f"of Auto Scaling group {group.name!r}"
            )

    def read(self) -> int:
        return self._observed(self._group())

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        require_non_negative(desired)
        group = self._group()
        change = self._change(desired, group)
        before = self._observed(group) if current is None else current
        what = "desired capacity" if self.config.mode == "desired" else "MinSize floor"
        now = group.desired if self.config.mode == "desired" else group.min_size
        if change.operation is None:
            summary = f"Auto Scaling group {group.name!r}: {what} already {change.target}, no API call"
        else:
            shown = ", ".join(f"{k}={v}" for k, v in change.params.items() if k != "AutoScalingGroupName")
            summary = (f"Auto Scaling group {group.name!r}: {what} {now} -> {change.target} "
                       f"({change.api} {shown})")
        if change.clamped_from is not None:
            summary += f"; {change.clamped_from} clamped to the group's limits"
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=before,
            to_capacity=desired,
            summary=summary,
            details={
                "group": group.name,
                "region": self.config.region,
                "mode": self.config.mode,
                "calls": [] if change.operation is None else [
                    {"api": change.api, "parameters": dict(change.params)}],
                "min_size": group.min_size,
                "max_size": group.max_size,
                "desired_capacity": group.desired,
                "in_service": group.in_service,
                "clamped_from": change.clamped_from,
            },
            # adding or removing instances takes no running one down
            downtime=timedelta(0),
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        require_non_negative(desired)
        t0 = self._monotonic()
        ids: list[str] = []
        group = self._group()
        change = self._change(desired, group)
        if change.operation is not None:
            self._call("autoscaling", change.operation, ids, **change.params)

        def check() -> tuple[bool, _Group]:
            g = self._group()
            return self._serving(g, change.target), g

        done, group, _ = self._wait(check)
        return ActuationResult(
            requested=desired,
            observed=self._observed(group),
            verified=done,
            elapsed=timedelta(seconds=max(0.0, self._monotonic() - t0)),
            request_ids=tuple(ids),
            details={
                "decision_id": decision_id,
                "group": group.name,
                "mode": self.config.mode,
                "api": change.api if change.operation else None,
                "target": change.target,
                "clamped_from": change.clamped_from,
                "in_service": group.in_service,
                "desired_capacity": group.desired,
                "min_size": group.min_size,
                "max_size": group.max_size,
            },
        )

    # -- helpers
    def _group(self) -> _Group:
        resp = self._call("autoscaling", "describe_auto_scaling_groups",
                          AutoScalingGroupNames=[self.group_name])
        groups = resp.get("AutoScalingGroups") or []
        if not groups:
            raise PermanentActuatorError(
                f"Auto Scaling group {self.group_name!r} not found in region {self.config.region}"
            )
        return _Group.from_api(groups[0])

    def _observed(self, group: _Group) -> int:
        mode = self.config.read_mode
        if mode == "desired":
            return group.desired
        if mode == "min_size":
            return group.min_size
        return group.in_service

    def _serving(self, group: _Group, target: int) -> bool:
        if self.config.mode == "min-floor":
            # the floor is met; the group's own policies may run above it
            return group.in_service >= target and group.min_size == target
        return group.in_service == target and group.desired == target

    def _limit(self, asked: int, group: _Group, what: str) -> tuple[int, int | None]:
        """``asked`` inside MinSize..MaxSize, clamped or refused."""
        low = group.min_size if self.config.mode == "desired" else 0
        if low <= asked <= group.max_size:
            return asked, None
        if self.config.clamp_to_group_limits:
            return min(max(asked, low), group.max_size), asked
        limit, value, side = (("MaxSize", group.max_size, "above") if asked > group.max_size
                              else ("MinSize", group.min_size, "below"))
        raise LimitExceeded(
            f"{what} {asked} is {side} {limit} ({value}) of Auto Scaling group {group.name!r}; "
            f"change the group's {limit} or set clamp_to_group_limits: true"
        )

    def _change(self, desired: int, group: _Group) -> _GroupChange:
        if self.config.mode == "desired":
            target, clamped = self._limit(desired, group, "desired capacity")
            params = {"AutoScalingGroupName": group.name, "DesiredCapacity": target,
                      "HonorCooldown": False}
            op = None if group.desired == target else "set_desired_capacity"
            return _GroupChange(op, "autoscaling:SetDesiredCapacity", params, target, clamped)
        floor = max(desired, self.config.base_min_size or 0)
        target, clamped = self._limit(floor, group, "MinSize floor")
        if clamped is not None and desired != floor:
            clamped = desired
        params: dict[str, Any] = {"AutoScalingGroupName": group.name, "MinSize": target}
        if group.desired < target:
            # AWS raises DesiredCapacity with MinSize on its own; saying so
            # keeps the plan honest and does not depend on it
            params["DesiredCapacity"] = target
        op = None if group.min_size == target and group.desired >= target else "update_auto_scaling_group"
        return _GroupChange(op, "autoscaling:UpdateAutoScalingGroup", params, target, clamped)


# ---------------------------------------------------------------------- EC2 resize
@dataclass(frozen=True)
class _Instance:
    id: str
    state: str
    type: str
    root_device: str


class EC2InstanceTypeActuator(_AwsActuator):
    """Vertical: one EC2 instance's type, capacity = index into the ladder.

    A resize is stop, wait stopped, ModifyInstanceAttribute InstanceType,
    start, wait running and (``wait_for_status_checks``) status checks ok.
    Every wait is bounded by ``verify_timeout``. If the modify or the start
    fails once the instance is stopped, the instance is started again with
    its previous type and the original error is raised (with the rollback
    said in its message). Only running, EBS-backed instances are resized:
    forescale never starts an instance someone else stopped.
    """

    name: ClassVar[str] = "aws-ec2"
    Config = EC2InstanceTypeConfig
    _services = ("ec2",)

    def __init__(self, config: EC2InstanceTypeConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, ec2: Any = None) -> None:
        if not ladder:
            raise ConfigError("the aws-ec2 actuator needs a ladder of instance types "
                              "(capacity is an index into it)", path="ladder")
        types = [str(t) for t in ladder]
        dupes = sorted({t for t in types if types.count(t) > 1})
        if dupes:
            raise ConfigError(f"instance types appear more than once: {', '.join(dupes)}", path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, clients={"ec2": ec2})
        self.config: EC2InstanceTypeConfig = config
        self.ladder: tuple[str, ...] = tuple(types)

    # -- protocol
    def validate(self) -> None:
        self._check_credentials()
        inst = self._instance()
        if inst.state in ("shutting-down", "terminated"):
            raise PermanentActuatorError(f"instance {inst.id} is {inst.state}")
        if inst.root_device != "ebs":
            raise PermanentActuatorError(
                f"instance {inst.id} has a {inst.root_device} root device; only EBS-backed "
                f"instances can be stopped to change their type"
            )
        self._rung_of(inst.type)
        # the ladder's names exist in this region (a typo fails now, not mid-resize)
        for i in range(0, len(self.ladder), 100):
            self._call("ec2", "describe_instance_types", InstanceTypes=list(self.ladder[i:i + 100]))
        # the permissions a resize needs, checked without changing anything
        for operation, params in self._resize_calls(inst.type).items():
            self._dry_run(operation, params)

    def read(self) -> int:
        return self._rung_of(self._instance().type)

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        require_non_negative(desired)
        new_type = self._type_at(desired)
        inst = self._instance()
        before = self._rung_of(inst.type) if current is None else current
        if inst.type == new_type:
            return ActionPlan(
                actuator=self.name, target=self.target, from_capacity=before, to_capacity=desired,
                summary=f"EC2 instance {inst.id} already is {new_type}, no API call",
                details={"instance_id": inst.id, "region": self.config.region, "from_type": inst.type,
                         "to_type": new_type, "state": inst.state, "calls": []},
                downtime=timedelta(0),
            )
        calls = self._resize_calls(new_type)
        minutes = self.config.downtime_estimate.total_seconds() / 60
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=before,
            to_capacity=desired,
            summary=(f"resize EC2 instance {inst.id} {inst.type} -> {new_type}: stop, modify "
                     f"InstanceType, start; the instance is down for about {minutes:g} min"),
            details={
                "instance_id": inst.id,
                "region": self.config.region,
                "from_type": inst.type,
                "to_type": new_type,
                "state": inst.state,
                "calls": [{"api": f"ec2:{_API[op]}", "parameters": params} for op, params in calls.items()],
                "wait_for_status_checks": self.config.wait_for_status_checks,
            },
            downtime=self.config.downtime_estimate,
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        require_non_negative(desired)
        new_type = self._type_at(desired)
        t0 = self._monotonic()
        ids: list[str] = []
        inst = self._instance()
        if inst.state == "pending":
            inst = self._wait_state("running", ids, inst.type)
        if inst.state != "running":
            raise PermanentActuatorError(
                f"instance {inst.id} is {inst.state}; forescale resizes only running instances "
                f"and never starts one it did not stop"
            )
        details: dict[str, Any] = {"decision_id": decision_id, "instance_id": inst.id,
                                   "from_type": inst.type, "to_type": new_type}
        if inst.type == new_type:
            healthy = self._wait_healthy()
            return self._result(desired, healthy, t0, ids, {**details, "changed": False})

        old_type = inst.type
        self._call("ec2", "stop_instances", ids, InstanceIds=[inst.id])
        stopped_at = self._monotonic()
        self._wait_state("stopped", ids, old_type)
        try:
            self._call("ec2", "modify_instance_attribute", ids,
                       InstanceId=inst.id, InstanceType={"Value": new_type})
        except ActuatorError as exc:
            self._roll_back(exc, old_type, new_type, ids, modified=False)
        try:
            self._call("ec2", "start_instances", ids, InstanceIds=[inst.id])
        except ActuatorError as exc:
            self._roll_back(exc, old_type, new_type, ids, modified=True)
        self._wait_state("running", ids, new_type)
        downtime = self._monotonic() - stopped_at
        healthy = self._wait_healthy()
        return self._result(desired, healthy, t0, ids,
                            {**details, "changed": True, "downtime_s": round(downtime, 3)})

    # -- helpers
    def _result(self, desired: int, healthy: bool, t0: float, ids: list[str],
                details: dict[str, Any]) -> ActuationResult:
        inst = self._instance()
        observed = self._rung_of(inst.type)
        return ActuationResult(
            requested=desired,
            observed=observed,
            verified=healthy and inst.state == "running" and observed == desired,
            elapsed=timedelta(seconds=max(0.0, self._monotonic() - t0)),
            request_ids=tuple(ids),
            details={**details, "state": inst.state, "status_checks_ok": healthy},
        )

    def _instance(self) -> _Instance:
        resp = self._call("ec2", "describe_instances", InstanceIds=[self.config.instance_id])
        found = [i for r in resp.get("Reservations", ()) for i in r.get("Instances", ())]
        if not found:
            raise PermanentActuatorError(
                f"EC2 instance {self.config.instance_id} not found in region {self.config.region}"
            )
        i = found[0]
        return _Instance(i["InstanceId"], i["State"]["Name"], i["InstanceType"],
                         i.get("RootDeviceType", "ebs"))

    def _rung_of(self, instance_type: str) -> int:
        try:
            return self.ladder.index(instance_type)
        except ValueError:
            raise PermanentActuatorError(
                f"instance {self.config.instance_id} is {instance_type}, which is not in the "
                f"ladder ({', '.join(self.ladder)})"
            ) from None

    def _type_at(self, capacity: int) -> str:
        if capacity >= len(self.ladder):
            raise LimitExceeded(
                f"capacity {capacity} is beyond the ladder's last rung {len(self.ladder) - 1} "
                f"({self.ladder[-1]})"
            )
        return self.ladder[capacity]

    def _resize_calls(self, new_type: str) -> dict[str, dict[str, Any]]:
        iid = self.config.instance_id
        return {
            "stop_instances": {"InstanceIds": [iid]},
            "modify_instance_attribute": {"InstanceId": iid, "InstanceType": {"Value": new_type}},
            "start_instances": {"InstanceIds": [iid]},
        }

    def _dry_run(self, operation: str, params: Mapping[str, Any]) -> None:
        """EC2's DryRun: ``DryRunOperation`` means the call is permitted."""
        from botocore.exceptions import ClientError

        client = self._client("ec2")

        def once() -> None:
            try:
                getattr(client, operation)(DryRun=True, **params)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "DryRunOperation":
                    return
                raise map_aws_error(exc, f"ec2:{_API[operation]} (dry run)") from exc  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001
                mapped = map_aws_error(exc, f"ec2:{_API[operation]} (dry run)")
                if mapped is None:
                    raise
                raise mapped from exc

        retrying(once, attempts=self.config.retry_attempts,
                 max_wait=self.config.retry_max_wait.total_seconds(), sleep=self._sleep)

    def _wait_state(self, wanted: str, ids: list[str], expected_type: str) -> _Instance:
        def check() -> tuple[bool, _Instance]:
            inst = self._instance()
            if inst.state in ("shutting-down", "terminated"):
                raise PermanentActuatorError(f"instance {inst.id} is {inst.state} while waiting "
                                             f"for it to be {wanted}", request_ids=tuple(ids))
            return inst.state == wanted, inst

        done, inst, elapsed = self._wait(check)
        if not done:
            hint = ("; its type was not changed and forescale will not start it: check it, "
                    "and start it by hand once it has stopped" if wanted == "stopped" else "")
            raise PermanentActuatorError(
                f"instance {inst.id} ({expected_type}) is {inst.state}, not {wanted}, "
                f"{elapsed:.0f} s after asking{hint}",
                request_ids=tuple(ids),
            )
        return inst

    def _wait_healthy(self) -> bool:
        if not self.config.wait_for_status_checks:
            return True

        def check() -> tuple[bool, Any]:
            resp = self._call("ec2", "describe_instance_status", InstanceIds=[self.config.instance_id])
            statuses = resp.get("InstanceStatuses") or []
            if not statuses:
                return False, None
            s = statuses[0]
            ok = {"ok", "not-applicable"}
            return (s.get("InstanceStatus", {}).get("Status") in ok
                    and s.get("SystemStatus", {}).get("Status") in ok), s

        done, _, _ = self._wait(check)
        return done

    def _roll_back(self, cause: ActuatorError, old_type: str, new_type: str, ids: list[str],
                   *, modified: bool) -> None:
        """Start the stopped instance again with ``old_type``, then raise
        ``cause`` (its class kept) saying so."""
        iid = self.config.instance_id
        log.warning("resize of %s to %s failed (%s); starting it again as %s", iid, new_type,
                    cause, old_type)
        try:
            if modified:
                self._call("ec2", "modify_instance_attribute", ids,
                           InstanceId=iid, InstanceType={"Value": old_type})
            self._call("ec2", "start_instances", ids, InstanceIds=[iid])
            self._wait_state("running", ids, old_type)
        except ActuatorError as failed:
            raise PermanentActuatorError(
                f"resizing instance {iid} to {new_type} failed ({cause}) and starting it again "
                f"as {old_type} failed too ({failed}); the instance may be stopped: start it by hand",
                request_ids=tuple(dict.fromkeys([*ids, *cause.request_ids, *failed.request_ids])),
            ) from cause
        raise _with_ids(
            cause, f"{cause}; instance {iid} was started again as {old_type}", ids
        ) from cause


_API = {
    "stop_instances": "StopInstances",
    "modify_instance_attribute": "ModifyInstanceAttribute",
    "start_instances": "StartInstances",
}
