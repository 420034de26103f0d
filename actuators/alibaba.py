"""Alibaba Cloud ECS actuators, over the official SDK ``alibabacloud_ecs20140526``.

- ``alibaba-ecs`` (:class:`EcsInstanceSpecActuator`): vertical. Capacity is the
  index of the instance's type in the configured ladder of instance types.
  A change is checked for stock first (``DescribeResourcesModification``),
  before anything is stopped. Pay-as-you-go (``PostPaid``) instances are
  stopped, changed with ``ModifyInstanceSpec`` and started again;
  subscription (``PrePaid``) instances are changed with
  ``ModifyPrepayInstanceSpec`` (``AutoPay``, rebooted when finished if they
  were running). If the change fails after the stop, the instance is started
  again with its old type and the error says so.
- ``alibaba-ecs-group`` (:class:`EcsInstanceGroupActuator`): horizontal. The
  group is every instance carrying a configured tag; capacity is the number of
  ``Running`` members. Scale-out is ``RunInstances`` from a launch template,
  scale-in is ``DeleteInstances`` (``Force``) of the newest members.

The SDK is imported only when a client is built, so importing this module
(and ``actuators``) stays light. A client can be handed in (``client=``);
otherwise one is built from the config and credentials found, in this order,
in ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``ALIBABA_CLOUD_ACCESS_KEY_SECRET``
(plus ``ALIBABA_CLOUD_SECURITY_TOKEN`` for STS), then in the default chain of
``alibabacloud_credentials`` (profile files, OIDC, the ECS RAM role). Secrets
never appear in a log line or an error message.

Error mapping (the Tea SDK raises ``ClientException`` / ``ServerException`` /
``ThrottlingException``, all carrying ``.code``, ``.status_code`` and
``.data`` with the ``RequestId``; network failures arrive wrapped in an
``UnretryableException``):

- ``Throttling*``, ``ServiceUnavailable*``, ``InternalError*``, any 5xx,
  timeouts and connection errors: :class:`TransientActuatorError`, retried
  with backoff by :func:`actuators.base.retrying`.
- ``IncorrectInstanceStatus*``: transient (the instance is between states),
  except inside the stop/modify/start flow, where it ends the change and the
  instance is started again.
- stock and quota codes (``OperationDenied.NoStock``, ``QuotaExceed*``,
  ``*ZoneNotSupported``): :class:`LimitExceeded`.
- ``InvalidAccessKeyId*``, ``Forbidden*``, ``SignatureDoesNotMatch``,
  ``InvalidInstanceId.NotFound``, ``InvalidInstanceType*``, ``MissingParameter``,
  other 4xx: :class:`PermanentActuatorError`, not retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ClassVar, Literal, Sequence

from pydantic import Field

from engine.core.errors import (
    ActuatorError,
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)
from engine.core.types import ActionPlan, ActuationResult
from engine.core.units import Duration

from .base import ActuatorConfig, Monotonic, Sleep, require_non_negative

log = logging.getLogger(__name__)

ENV_ACCESS_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_SECURITY_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
INSTALL_HINT = "pip install 'forescale[alibaba]'"

# ECS instance states (DescribeInstances ``Status``).
RUNNING, STOPPED = "Running", "Stopped"
STABLE_STATES = frozenset({RUNNING, STOPPED})
#: states of a group member that count towards the group's size: it is, or is
#: about to be, serving. Stopping/Stopped members are left alone (someone may
#: have stopped them on purpose) and are not counted.
LIVE_STATES = frozenset({"Pending", "Starting", RUNNING})

# ECS caps RunInstances Amount and DeleteInstances InstanceId.N at 100 per call.
_BATCH = 100


# ----------------------------------------------------------------------- config
class EcsConnectionConfig(ActuatorConfig):
    """Where and how to reach the ECS API (shared by both actuators)."""

    type: str
    region_id: str = Field(min_length=1)
    #: host[:port] of the API; None: the SDK's regional endpoint
    #: (``ecs.<region>.aliyuncs.com``)
    endpoint: str | None = None
    protocol: Literal["https", "http"] = "https"
    #: ``auto``: the environment variables, else the default chain of
    #: ``alibabacloud_credentials``; ``environment``: only the variables;
    #: ``default-chain``: only the chain
    credential_source: Literal["auto", "environment", "default-chain"] = "auto"
    connect_timeout: Duration = timedelta(seconds=5)
    read_timeout: Duration = timedelta(seconds=10)



class EcsInstanceSpecConfig(EcsConnectionConfig):
    type: str = "alibaba-ecs"
    instance_id: str = Field(min_length=1)
    #: StopInstance ForceStop: like pulling the power; off by default so the
    #: guest shuts down cleanly
    force_stop: bool = False
    #: StopInstance StoppedMode: KeepCharging keeps the instance's resources
    #: reserved while it is stopped, so the StartInstance after the change
    #: (or the one that undoes a failed change) cannot fail for lack of stock
    stopped_mode: Literal["KeepCharging", "StopCharging"] = "KeepCharging"
    #: downtime reported by describe() for a stop/modify/start of a running
    #: pay-as-you-go instance; a rough figure (a clean stop plus a start take
    #: on the order of a minute each), replace it with what you measure
    stop_start_downtime: Duration = timedelta(minutes=2)
    #: downtime reported for the reboot that applies a subscription change
    reboot_downtime: Duration = timedelta(minutes=1)


class EcsInstanceGroupConfig(EcsConnectionConfig):
    type: str = "alibaba-ecs-group"
    #: members are the instances tagged tag_key=tag_value
    tag_key: str = Field(min_length=1)
    tag_value: str
    launch_template_id: str = Field(min_length=1)
    #: None: the template's default version
    launch_template_version: int | None = Field(default=None, ge=1)
    #: a safety cap of our own on top of the account's quota; None: no cap
    max_instances: int | None = Field(default=None, ge=0)


# ----------------------------------------------------------------------- errors
_LIMIT_CODES = ("OperationDenied.NoStock", "QuotaExceed", "Zone.NotOnSale",
                "InvalidInstanceType.ZoneNotSupported", "InvalidResourceType.NotSupported")
_TRANSIENT_CODES = ("Throttling", "ServiceUnavailable", "InternalError", "UnknownError",
                    "LastTokenProcessing", "IncorrectInstanceStatus")
_URL_IN_MESSAGE = re.compile(r"\s*with url: \S*")


def _sdk_error_fields(exc: BaseException) -> tuple[str, str, str | None, int | None] | None:
    """(code, message, request id, HTTP status) of an SDK response error, or
    None when ``exc`` is not one."""
    code = getattr(exc, "code", None)
    data = getattr(exc, "data", None)
    if not code or code == "None":
        return None
    data = data if isinstance(data, dict) else {}
    message = data.get("Message") or data.get("message") or getattr(exc, "message", "") or ""
    request_id = getattr(exc, "request_id", None) or data.get("RequestId") or data.get("requestId")
    status = getattr(exc, "status_code", None) or data.get("statusCode")
    return str(code), str(message), (str(request_id) if request_id else None), status


def map_error(exc: BaseException, action: str, where: str) -> ActuatorError:
    """Map an exception raised by the SDK onto the engine's error hierarchy.

    ``action`` is the ECS API action, ``where`` what it acted on (instance id
    or group) for the message.
    """
    if isinstance(exc, ActuatorError):
        return exc
    fields = _sdk_error_fields(exc)
    if fields is not None:
        code, message, request_id, status = fields
        ids = (request_id,) if request_id else ()
        text = f"{action} on {where} failed: {code}: {message}".rstrip(": ")
        if request_id:
            text += f" (RequestId {request_id})"
        if code.startswith(_LIMIT_CODES) or code.endswith("ZoneNotSupported"):
            err: ActuatorError = LimitExceeded(text, request_ids=ids)
        elif code.startswith(_TRANSIENT_CODES) or (isinstance(status, int) and status >= 500):
            err = TransientActuatorError(text, request_ids=ids)
        else:
            err = PermanentActuatorError(text, request_ids=ids)
        err.code = code  # type: ignore[attr-defined]
        return err
    inner = getattr(exc, "inner_exception", None) or exc
    name = type(inner).__name__
    if _is_network_error(inner):
        reason = _URL_IN_MESSAGE.sub("", str(getattr(inner, "message", None) or inner))[:300]
        return TransientActuatorError(f"{action} on {where}: cannot reach the ECS API ({name}: {reason})")
    return PermanentActuatorError(f"{action} on {where} failed: {name}: {str(inner)[:300]}")


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    # darabonba turns every requests IOError into its RetryError
    return type(exc).__name__ in {"RetryError", "ConnectionError", "Timeout", "ReadTimeout",
                                  "ConnectTimeout", "ChunkedEncodingError"}


# ------------------------------------------------------------------ client build
def build_client(config: EcsConnectionConfig) -> Any:
    """An ECS SDK client for ``config``, with credentials from the environment
    or the default chain. Raises one PermanentActuatorError (naming what is
    missing, never a value) when there is no credential."""
    try:
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_tea_openapi.models import Config
    except ImportError as exc:
        raise PermanentActuatorError(
            f"{config.type} needs the package {getattr(exc, 'name', None) or exc!s}; "
            f"install it with: {INSTALL_HINT}") from None

    key_id = os.environ.get(ENV_ACCESS_KEY_ID, "")
    key_secret = os.environ.get(ENV_ACCESS_KEY_SECRET, "")
    options: dict[str, Any] = {}
    source = config.credential_source
    if source in ("auto", "environment") and key_id and key_secret:
        options = {"access_key_id": key_id, "access_key_secret": key_secret,
                   "security_token": os.environ.get(ENV_SECURITY_TOKEN) or None}
        log.info("%s: using credentials from %s/%s", config.type, ENV_ACCESS_KEY_ID,
                 ENV_ACCESS_KEY_SECRET)
    elif source == "environment":
        missing = [n for n, v in ((ENV_ACCESS_KEY_ID, key_id), (ENV_ACCESS_KEY_SECRET, key_secret))
                   if not v]
        raise PermanentActuatorError(
            f"no Alibaba Cloud credentials: {' and '.join(missing)} not set "
            f"(credential_source: environment)")
    else:
        options = {"credential": _default_chain(config, key_id, key_secret)}
        log.info("%s: using credentials from the alibabacloud_credentials default chain",
                 config.type)
    sdk_config = Config(
        region_id=config.region_id,
        endpoint=config.endpoint,
        protocol=config.protocol,
        connect_timeout=int(config.connect_timeout.total_seconds() * 1000),
        read_timeout=int(config.read_timeout.total_seconds() * 1000),
        **options,
    )
    return Client(sdk_config)


def _default_chain(config: EcsConnectionConfig, key_id: str, key_secret: str) -> Any:
    env_note = (f"{ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET} are not both set"
                if config.credential_source == "auto" else "credential_source: default-chain")
    try:
        from alibabacloud_credentials.client import Client as CredentialClient
    except ImportError:
        raise PermanentActuatorError(
            f"no Alibaba Cloud credentials: {env_note}, and the default credential chain needs "
            f"the package alibabacloud-credentials (pip install alibabacloud-credentials)") from None
    credential = CredentialClient()
    try:
        # resolve now, so a missing credential fails validate() and not a cycle
        credential.get_credential()
    except Exception as exc:  # noqa: BLE001 - any provider failure means "no credential"
        reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
        raise PermanentActuatorError(
            f"no Alibaba Cloud credentials: {env_note}, and the default credential chain "
            f"found none ({reason})") from None
    return credential


def _client_token(*parts: object) -> str:
    """An idempotency token for mutating calls (ECS ClientToken: <= 64 ASCII
    characters): the same decision asking the same thing sends the same token,
    so a retried call whose first answer was lost does not act twice."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return f"forescale-{digest[:40]}"


@dataclass(frozen=True)
class EcsInstance:
    """The fields of DescribeInstances the actuators use."""

    instance_id: str
    instance_type: str
    status: str
    zone_id: str
    charge_type: str
    creation_time: str

    @classmethod
    def from_sdk(cls, item: Any) -> "EcsInstance":
        return cls(
            instance_id=item.instance_id or "",
            instance_type=item.instance_type or "",
            status=item.status or "",
            zone_id=item.zone_id or "",
            charge_type=item.instance_charge_type or "",
            creation_time=item.creation_time or "",
        )


class _EcsBase:
    """Calls into the SDK: retries, error mapping, request-id collection."""

    config: EcsConnectionConfig
    target: str

    def __init__(self, config: EcsConnectionConfig, *, target: str, sleep: Sleep,
                 monotonic: Monotonic, client: Any) -> None:
        self.config = config
        self.target = target
        self.sleep = sleep
        self.monotonic = monotonic
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = build_client(self.config)
        return self._client

    @staticmethod
    def _models() -> Any:
        try:
            from alibabacloud_ecs20140526 import models
        except ImportError as exc:
            raise PermanentActuatorError(
                f"alibaba actuators need the package {getattr(exc, 'name', None) or exc!s}; "
                f"install it with: {INSTALL_HINT}") from None
        return models

    def _call(self, action: str, method: str, request: Any, *, where: str,
              request_ids: list[str] | None = None, status_conflict_is_final: bool = False) -> Any:
        """Call ``client.<method>(request)`` with retries; return the body.

        ``status_conflict_is_final``: inside the stop/modify/start flow an
        IncorrectInstanceStatus means the instance was changed under us;
        retrying would not help, the flow must undo its stop instead.
        """

        def once() -> Any:
            try:
                response = getattr(self.client, method)(request)
            except Exception as exc:  # noqa: BLE001 - mapped onto our hierarchy just below
                err = map_error(exc, action, where)
                if (status_conflict_is_final and isinstance(err, TransientActuatorError)
                        and getattr(err, "code", "").startswith("IncorrectInstanceStatus")):
                    final = PermanentActuatorError(str(err), request_ids=err.request_ids)
                    final.code = err.code  # type: ignore[attr-defined]
                    raise final from exc
                if err is exc:
                    raise
                raise err from exc
            body = response.body
            if request_ids is not None and getattr(body, "request_id", None):
                request_ids.append(body.request_id)
            return body

        return self.config.retry(once, sleep=self.sleep)

    def _wait(self, check: Callable[[], tuple[bool, Any]]) -> tuple[bool, Any, float]:
        return self.config.poll(check, sleep=self.sleep, monotonic=self.monotonic)


# ----------------------------------------------------------------- vertical
class EcsInstanceSpecActuator(_EcsBase):
    """Resize one ECS instance along a ladder of instance types."""

    name: ClassVar[str] = "alibaba-ecs"
    Config = EcsInstanceSpecConfig
    config: EcsInstanceSpecConfig

    def __init__(self, config: EcsInstanceSpecConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, client: Any = None) -> None:
        if not ladder:
            raise ConfigError("the alibaba-ecs actuator needs a ladder of instance types "
                              "(capacity is an index into it)", path="ladder")
        dupes = sorted({t for t in ladder if list(ladder).count(t) > 1})
        if dupes:
            raise ConfigError(f"instance types appear more than once: {', '.join(dupes)}",
                              path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=client)
        self.ladder: tuple[str, ...] = tuple(ladder)

    # ------------------------------------------------------------- protocol
    def validate(self) -> None:
        """Credentials resolve, the instance exists, its type is on the ladder."""
        self.read()

    def read(self) -> int:
        return self._index(self._describe_instance())

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        self._check_desired(desired)
        inst = self._describe_instance()
        new_type = self.ladder[desired]
        from_capacity = current if current is not None else self._index_or_none(inst.instance_type)
        details: dict[str, Any] = {
            "instance_id": inst.instance_id, "zone_id": inst.zone_id,
            "charge_type": inst.charge_type, "status": inst.status,
            "old_type": inst.instance_type, "new_type": new_type,
        }
        if inst.instance_type == new_type:
            details["api_actions"] = []
            return ActionPlan(self.name, self.target, from_capacity, desired,
                              f"no change: {inst.instance_id} already has type {new_type}",
                              details, timedelta(0))
        running = inst.status == RUNNING
        if inst.charge_type == "PrePaid":
            op = self._operator_type(inst.instance_type, new_type)
            actions = ["DescribeResourcesModification", "ModifyPrepayInstanceSpec"]
            details.update(operator_type=op, auto_pay=True, reboot_when_finished=running)
            downtime = self.config.reboot_downtime if running else timedelta(0)
            how = f"ModifyPrepayInstanceSpec ({op}, AutoPay" + (", reboot)" if running else ")")
        else:
            actions = (["DescribeResourcesModification", "StopInstance", "ModifyInstanceSpec",
                        "StartInstance"] if running
                       else ["DescribeResourcesModification", "ModifyInstanceSpec"])
            downtime = self.config.stop_start_downtime if running else timedelta(0)
            how = ("stop, ModifyInstanceSpec, start" if running
                   else "ModifyInstanceSpec (instance is stopped and stays stopped)")
        details["api_actions"] = actions
        return ActionPlan(
            self.name, self.target, from_capacity, desired,
            f"resize ECS instance {inst.instance_id} ({inst.charge_type}, {inst.zone_id}) "
            f"{inst.instance_type} -> {new_type}: {how}",
            details, downtime)

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        self._check_desired(desired)
        t0 = self.monotonic()
        request_ids: list[str] = []
        inst = self._wait_stable()
        old_type, new_type = inst.instance_type, self.ladder[desired]
        was_running = inst.status == RUNNING
        action = "none"
        if old_type != new_type:
            self._check_available(inst, new_type, request_ids)
            token = _client_token(self.target, decision_id, inst.instance_id, new_type)
            if inst.charge_type == "PrePaid":
                action = "ModifyPrepayInstanceSpec"
                self._resize_prepaid(inst, new_type, token, request_ids)
            elif inst.charge_type == "PostPaid":
                action = "ModifyInstanceSpec"
                self._resize_postpaid(inst, new_type, token, request_ids)
            else:
                raise PermanentActuatorError(
                    f"instance {inst.instance_id} has charge type {inst.charge_type!r}; "
                    f"only PostPaid and PrePaid can be resized")

        def check() -> tuple[bool, EcsInstance]:
            now = self._describe_instance()
            status_ok = now.status == RUNNING if was_running else now.status in STABLE_STATES
            return now.instance_type == new_type and status_ok, now

        done, seen, _ = self._wait(check)
        return ActuationResult(
            requested=desired,
            observed=self._index(seen),
            verified=done,
            elapsed=timedelta(seconds=max(0.0, self.monotonic() - t0)),
            request_ids=tuple(request_ids),
            details={"instance_id": inst.instance_id, "action": action, "old_type": old_type,
                     "new_type": new_type, "observed_type": seen.instance_type,
                     "status": seen.status},
        )

    # ------------------------------------------------------------- steps
    def _check_desired(self, desired: int) -> None:
        require_non_negative(desired)
        if desired >= len(self.ladder):
            raise PermanentActuatorError(
                f"desired capacity {desired} is beyond the ladder "
                f"(0..{len(self.ladder) - 1}: {', '.join(self.ladder)})")

    def _index_or_none(self, instance_type: str) -> int | None:
        return self.ladder.index(instance_type) if instance_type in self.ladder else None

    def _index(self, inst: EcsInstance) -> int:
        i = self._index_or_none(inst.instance_type)
        if i is None:
            raise PermanentActuatorError(
                f"instance {inst.instance_id} has type {inst.instance_type!r}, which is not in "
                f"the configured ladder ({', '.join(self.ladder)})")
        return i

    def _operator_type(self, old_type: str, new_type: str) -> str:
        old = self._index_or_none(old_type)
        if old is None:
            raise PermanentActuatorError(
                f"instance {self.config.instance_id} has type {old_type!r}, not in the ladder; "
                f"cannot tell whether {new_type} is an upgrade or a downgrade")
        return "upgrade" if self.ladder.index(new_type) > old else "downgrade"

    def _describe_instance(self) -> EcsInstance:
        m = self._models()
        iid = self.config.instance_id
        body = self._call("DescribeInstances", "describe_instances",
                          m.DescribeInstancesRequest(region_id=self.config.region_id,
                                                     instance_ids=json.dumps([iid])),
                          where=iid)
        items = (body.instances.instance if body.instances else None) or []
        found = [i for i in items if i.instance_id == iid]
        if not found:
            raise PermanentActuatorError(
                f"InvalidInstanceId.NotFound: instance {iid} not found in region "
                f"{self.config.region_id}",
                request_ids=(body.request_id,) if body.request_id else ())
        return EcsInstance.from_sdk(found[0])

    def _wait_status(self, status: str) -> tuple[bool, EcsInstance]:
        done, inst, _ = self._wait(lambda: (lambda i: (i.status == status, i))(
            self._describe_instance()))
        return done, inst

    def _wait_stable(self) -> EcsInstance:
        """The instance once it is Running or Stopped (not between states)."""
        done, inst, _ = self._wait(lambda: (lambda i: (i.status in STABLE_STATES, i))(
            self._describe_instance()))
        if not done:
            raise TransientActuatorError(
                f"instance {inst.instance_id} stayed {inst.status} for "
                f"{self.config.verify_timeout}; not changing it while it is between states")
        return inst

    def _check_available(self, inst: EcsInstance, new_type: str, request_ids: list[str]) -> None:
        """Refuse (LimitExceeded) before anything is stopped when ECS has no
        stock of ``new_type`` for this instance in its zone."""
        m = self._models()
        op = ("Upgrade" if inst.charge_type != "PrePaid"
              else self._operator_type(inst.instance_type, new_type).capitalize())
        body = self._call(
            "DescribeResourcesModification", "describe_resources_modification",
            m.DescribeResourcesModificationRequest(
                region_id=self.config.region_id, resource_id=inst.instance_id,
                destination_resource="InstanceType", operation_type=op),
            where=inst.instance_id, request_ids=request_ids)
        status = "not offered as a change target"
        zones = (body.available_zones.available_zone if body.available_zones else None) or []
        for zone in zones:
            if zone.zone_id != inst.zone_id:
                continue
            resources = (zone.available_resources.available_resource
                         if zone.available_resources else None) or []
            for res in resources:
                if res.type != "InstanceType" or not res.supported_resources:
                    continue
                for sup in res.supported_resources.supported_resource or []:
                    if sup.value == new_type:
                        if sup.status == "Available":
                            return
                        status = f"{sup.status}, {sup.status_category}"
        raise LimitExceeded(
            f"instance type {new_type} is not available in zone {inst.zone_id} for instance "
            f"{inst.instance_id} ({status}); nothing was changed",
            request_ids=tuple(request_ids[-1:]))

    def _resize_prepaid(self, inst: EcsInstance, new_type: str, token: str,
                        request_ids: list[str]) -> None:
        m = self._models()
        self._call(
            "ModifyPrepayInstanceSpec", "modify_prepay_instance_spec",
            m.ModifyPrepayInstanceSpecRequest(
                region_id=self.config.region_id, instance_id=inst.instance_id,
                instance_type=new_type, auto_pay=True,
                operator_type=self._operator_type(inst.instance_type, new_type),
                # a running instance only gets the new type after a restart
                reboot_when_finished=inst.status == RUNNING, client_token=token),
            where=inst.instance_id, request_ids=request_ids)

    def _resize_postpaid(self, inst: EcsInstance, new_type: str, token: str,
                         request_ids: list[str]) -> None:
        m = self._models()
        iid = inst.instance_id
        was_running = inst.status == RUNNING
        if was_running:
            self._call("StopInstance", "stop_instance",
                       m.StopInstanceRequest(instance_id=iid, force_stop=self.config.force_stop,
                                             stopped_mode=self.config.stopped_mode),
                       where=iid, request_ids=request_ids)
            stopped, now = self._wait_status(STOPPED)
            if not stopped:
                self._start_again(inst, request_ids, PermanentActuatorError(
                    f"instance {iid} did not reach Stopped within {self.config.verify_timeout} "
                    f"after StopInstance (status {now.status}); nothing was modified",
                    request_ids=tuple(request_ids)))
        try:
            self._call("ModifyInstanceSpec", "modify_instance_spec",
                       m.ModifyInstanceSpecRequest(instance_id=iid, instance_type=new_type,
                                                   client_token=token),
                       where=iid, request_ids=request_ids, status_conflict_is_final=True)
        except ActuatorError as exc:
            if not was_running:
                raise
            self._start_again(inst, request_ids, exc)
        if was_running:
            try:
                self._call("StartInstance", "start_instance", m.StartInstanceRequest(instance_id=iid),
                           where=iid, request_ids=request_ids)
            except ActuatorError as exc:
                raise PermanentActuatorError(
                    f"instance {iid} was changed to {new_type} but starting it failed ({exc}); "
                    f"the instance is STOPPED: start it by hand",
                    request_ids=tuple(request_ids) + exc.request_ids) from exc

    def _start_again(self, inst: EcsInstance, request_ids: list[str],
                     cause: ActuatorError) -> None:
        """Undo our stop after a failed change: start the instance with its old
        type, then raise ``cause``'s kind of error saying so. Never returns."""
        m = self._models()
        iid = inst.instance_id
        try:
            self._call("StartInstance", "start_instance", m.StartInstanceRequest(instance_id=iid),
                       where=iid, request_ids=request_ids)
            running, now = self._wait_status(RUNNING)
        except ActuatorError as exc:
            raise PermanentActuatorError(
                f"{cause}; starting instance {iid} again also failed ({exc}): it may be left "
                f"STOPPED with type {inst.instance_type}, start it by hand",
                request_ids=tuple(request_ids)) from cause
        if not running:
            raise PermanentActuatorError(
                f"{cause}; instance {iid} was started again with its old type "
                f"{inst.instance_type} but is {now.status} after {self.config.verify_timeout}",
                request_ids=tuple(request_ids)) from cause
        kind = type(cause) if isinstance(cause, ActuatorError) else PermanentActuatorError
        raise kind(
            f"{cause}; instance {iid} was started again with its old type {inst.instance_type}",
            request_ids=tuple(dict.fromkeys(tuple(request_ids) + cause.request_ids))) from cause


# ----------------------------------------------------------------- horizontal
class EcsInstanceGroupActuator(_EcsBase):
    """A group of identical ECS instances, found by tag, scaled by launching
    from a template and deleting the newest."""

    name: ClassVar[str] = "alibaba-ecs-group"
    Config = EcsInstanceGroupConfig
    config: EcsInstanceGroupConfig

    def __init__(self, config: EcsInstanceGroupConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, client: Any = None) -> None:
        if ladder:
            raise ConfigError("alibaba-ecs-group is horizontal (capacity is a count of "
                              "instances) and takes no ladder", path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=client)

    @property
    def _where(self) -> str:
        return f"group {self.config.tag_key}={self.config.tag_value}"

    # ------------------------------------------------------------- protocol
    def validate(self) -> None:
        """Credentials resolve and the launch template exists."""
        m = self._models()
        lt = self.config.launch_template_id
        body = self._call("DescribeLaunchTemplates", "describe_launch_templates",
                          m.DescribeLaunchTemplatesRequest(region_id=self.config.region_id,
                                                           launch_template_id=[lt]),
                          where=self._where)
        sets = (body.launch_template_sets.launch_template_set
                if body.launch_template_sets else None) or []
        if not any(s.launch_template_id == lt for s in sets):
            raise PermanentActuatorError(
                f"launch template {lt} not found in region {self.config.region_id}",
                request_ids=(body.request_id,) if body.request_id else ())
        self.read()

    def read(self) -> int:
        return sum(1 for i in self._members() if i.status == RUNNING)

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        self._check_desired(desired)
        live = self._live(self._members())
        cur = current if current is not None else sum(1 for i in live if i.status == RUNNING)
        details: dict[str, Any] = {"tag": {self.config.tag_key: self.config.tag_value},
                                   "live_instances": [i.instance_id for i in live]}
        if desired > len(live):
            n = desired - len(live)
            details.update(api_actions=["RunInstances"], launch_template_id=self.config.launch_template_id,
                           amount=n)
            summary = (f"launch {n} instance(s) from launch template "
                       f"{self.config.launch_template_id} into {self._where} ({len(live)} -> {desired})")
        elif desired < len(live):
            doomed = self._newest(live, len(live) - desired)
            details.update(api_actions=["DeleteInstances"], delete=[i.instance_id for i in doomed])
            summary = (f"delete the {len(doomed)} newest instance(s) of {self._where} "
                       f"({', '.join(i.instance_id for i in doomed)}; {len(live)} -> {desired})")
        else:
            details["api_actions"] = []
            summary = f"no change: {self._where} has {len(live)} instance(s)"
        return ActionPlan(self.name, self.target, cur, desired, summary, details)

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        self._check_desired(desired)
        m = self._models()
        t0 = self.monotonic()
        request_ids: list[str] = []
        live = self._live(self._members())
        launched: list[str] = []
        deleted: list[str] = []
        if desired > len(live):
            missing = desired - len(live)
            for chunk, start in enumerate(range(0, missing, _BATCH)):
                amount = min(_BATCH, missing - start)
                body = self._call(
                    "RunInstances", "run_instances",
                    m.RunInstancesRequest(
                        region_id=self.config.region_id,
                        launch_template_id=self.config.launch_template_id,
                        launch_template_version=self.config.launch_template_version,
                        amount=amount,
                        tag=[m.RunInstancesRequestTag(key=self.config.tag_key,
                                                      value=self.config.tag_value)],
                        client_token=_client_token(self.target, decision_id, desired,
                                                   len(live), chunk)),
                    where=self._where, request_ids=request_ids)
                sets = body.instance_id_sets
                launched += list((sets.instance_id_set if sets else None) or [])
        elif desired < len(live):
            doomed = [i.instance_id for i in self._newest(live, len(live) - desired)]
            for start in range(0, len(doomed), _BATCH):
                batch = doomed[start:start + _BATCH]
                self._call("DeleteInstances", "delete_instances",
                           m.DeleteInstancesRequest(region_id=self.config.region_id,
                                                    instance_id=batch, force=True),
                           where=self._where, request_ids=request_ids)
                deleted += batch

        def check() -> tuple[bool, tuple[int, int]]:
            members = self._live(self._members())
            running = sum(1 for i in members if i.status == RUNNING)
            return running == desired and len(members) == desired, (running, len(members))

        done, (running, live_now), _ = self._wait(check)
        return ActuationResult(
            requested=desired,
            observed=running,
            verified=done,
            elapsed=timedelta(seconds=max(0.0, self.monotonic() - t0)),
            request_ids=tuple(request_ids),
            details={"launched": launched, "deleted": deleted, "live": live_now},
        )

    # ------------------------------------------------------------- steps
    def _check_desired(self, desired: int) -> None:
        require_non_negative(desired)
        cap = self.config.max_instances
        if cap is not None and desired > cap:
            raise LimitExceeded(f"desired capacity {desired} is above max_instances ({cap}) "
                                f"of {self._where}")

    @staticmethod
    def _live(members: list[EcsInstance]) -> list[EcsInstance]:
        return [i for i in members if i.status in LIVE_STATES]

    @staticmethod
    def _newest(members: list[EcsInstance], n: int) -> list[EcsInstance]:
        # CreationTime is ISO 8601 UTC (2024-05-01T10:02Z): sorts as text;
        # the id breaks ties between instances launched in the same minute
        ordered = sorted(members, key=lambda i: (i.creation_time, i.instance_id), reverse=True)
        return ordered[:n]

    def _members(self) -> list[EcsInstance]:
        m = self._models()
        out: list[EcsInstance] = []
        token: str | None = None
        while True:
            body = self._call(
                "DescribeInstances", "describe_instances",
                m.DescribeInstancesRequest(
                    region_id=self.config.region_id, max_results=100, next_token=token,
                    tag=[m.DescribeInstancesRequestTag(key=self.config.tag_key,
                                                       value=self.config.tag_value)]),
                where=self._where)
            items = (body.instances.instance if body.instances else None) or []
            out += [EcsInstance.from_sdk(i) for i in items]
            token = body.next_token or None
            if not token or not items:
                return out
