"""What both Alibaba Cloud ECS actuators share: the connection config, the
error mapping, the SDK client and the calls behind
:class:`actuators.base.PlatformCalls`.

Error mapping (the Tea SDK raises ``ClientException`` / ``ServerException`` /
``ThrottlingException``, all carrying ``.code``, ``.status_code`` and
``.data`` with the ``RequestId``; network failures arrive wrapped in an
``UnretryableException``):

- ``Throttling*``, ``ServiceUnavailable*``, ``InternalError*``, any 5xx,
  timeouts and connection errors: :class:`TransientActuatorError`, retried
  with backoff within ``retry_attempts`` / ``retry_max_wait``.
- ``IncorrectInstanceStatus*``: transient (the instance is between states),
  except inside the stop/modify/start flow, where it ends the change and the
  instance is started again.
- stock and quota codes (``OperationDenied.NoStock``, ``QuotaExceed*``,
  ``*ZoneNotSupported``): :class:`LimitExceeded`.
- ``InvalidAccessKeyId*``, ``Forbidden*``, ``SignatureDoesNotMatch``,
  ``InvalidInstanceId.NotFound``, ``InvalidInstanceType*``, ``MissingParameter``,
  other 4xx: :class:`PermanentActuatorError`, not retried.

Credentials are found, in this order, in ``ALIBABA_CLOUD_ACCESS_KEY_ID`` /
``ALIBABA_CLOUD_ACCESS_KEY_SECRET`` (plus ``ALIBABA_CLOUD_SECURITY_TOKEN`` for
STS), then in the default chain of ``alibabacloud_credentials`` (profile
files, OIDC, the ECS RAM role). Secrets never appear in a log line or an
error message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from engine.core.errors import (
    ActuatorError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)
from engine.core.units import Duration

from ..base import ActuatorConfig, Monotonic, PlatformCalls, Sleep

log = logging.getLogger("actuators.alibaba")

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
    _quiet_sdk_loggers()
    credential = CredentialClient()
    chain = logging.getLogger("credentials")
    level = chain.level
    chain.setLevel(logging.CRITICAL + 1)  # each provider's failure, traceback and all: said once below
    try:
        # resolve now, so a missing credential fails validate() and not a cycle
        credential.get_credential()
    except Exception as exc:  # noqa: BLE001 - any provider failure means "no credential"
        reason = str(exc).splitlines()[0][:1500] if str(exc) else type(exc).__name__
        raise PermanentActuatorError(
            f"no Alibaba Cloud credentials: {env_note}, and the default credential chain "
            f"found none ({reason})") from None
    finally:
        chain.setLevel(level)
    return credential


def _quiet_sdk_loggers() -> None:
    """The Alibaba SDKs put stream handlers of their own on their loggers
    (``credentials`` three of them): every message printed raw, two or four
    times, past forescale's log format and redaction. Theirs go; the
    messages reach forescale's handlers as any library's do."""
    for name in ("credentials", "alibabacloud-tea"):
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
            lg.removeHandler(h)
        lg.propagate = True
        if lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)


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


class EcsActuator:
    """The SDK client (built on first use), the retried call with the error
    mapping and the request ids, for both actuators."""

    config: EcsConnectionConfig
    target: str

    def __init__(self, config: EcsConnectionConfig, *, target: str, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, client: Any = None) -> None:
        self.config = config
        self.target = target
        self.monotonic = monotonic
        self.calls = PlatformCalls(config, connect=lambda: build_client(config), sleep=sleep,
                                   client=client,
                                   request_id=lambda response: getattr(response.body, "request_id", None))

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

        def send(client: Any) -> Any:
            try:
                return getattr(client, method)(request)
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

        return self.calls.call(action, send, request_ids).body

    def _elapsed(self, t0: float) -> timedelta:
        return timedelta(seconds=max(0.0, self.monotonic() - t0))
