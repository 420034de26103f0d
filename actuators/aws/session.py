"""Where and as whom the AWS actuators call: the config they share, one
boto3 session per actuator (sharing parsed service models), and the one
client each actuator needs behind :class:`actuators.base.PlatformCalls`.

botocore's own retries are switched off on the clients we create
(``total_max_attempts=1``): there is exactly one retry loop,
:meth:`actuators.base.PlatformCalls.call`, bounded by ``retry_attempts`` and
``retry_max_wait`` with the sleep injected, so tests do not wait and the
audit sees every attempt's outcome.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from pydantic import Field, field_validator

from engine.core.errors import PermanentActuatorError

from ..base import ActuatorConfig, Monotonic, PlatformCalls, Sleep
from .errors import NO_CREDENTIALS, map_aws_error


class AwsConfig(ActuatorConfig):
    """Where and as whom the AWS actuators call."""

    #: the region of the group / instance, e.g. ``eu-west-1``
    region: str = Field(min_length=1)
    #: another endpoint (a VPC endpoint, a test server); ``None``: AWS's own
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    #: a named profile of the shared config files; ``None``: the default chain
    profile: str | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v is not None and "@" in urlsplit(v).netloc:
            # botocore puts the endpoint into its errors: they would show it
            raise ValueError("endpoint_url must not carry credentials (user:password@); AWS credentials come "
                             "from the standard chain (environment, profile, instance role)")
        return v


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



def _request_id(response: Any) -> str | None:
    """The RequestId of a boto3 answer (a dry run's permitted call has none)."""
    if not isinstance(response, dict):
        return None
    return (response.get("ResponseMetadata") or {}).get("RequestId")


class AwsActuator:
    """The client, the retried call and the credential check shared by the
    AWS actuators (each talks to one service)."""

    name: ClassVar[str]
    service: ClassVar[str]

    def __init__(self, config: AwsConfig, *, target: str, sleep: Sleep, monotonic: Monotonic,
                 client: Any = None) -> None:
        self.config = config
        self.target = target
        self._monotonic = monotonic
        self._session: Any = None
        self.calls = PlatformCalls(config, connect=self._new_client, map_error=map_aws_error,
                                   request_id=_request_id, sleep=sleep, client=client)

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

    def _new_client(self) -> Any:
        from botocore.config import Config

        return self._boto_session().client(
            self.service,
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

    def check_credentials(self) -> None:
        """Raise one clear error when no credentials resolve. An injected
        client carries its own; its first call reports a missing one."""
        if self.calls.injected:
            return
        from botocore import exceptions as bx

        try:
            credentials = self._boto_session().get_credentials()
        except bx.BotoCoreError as exc:  # partial keys, a failing credential_process, SSO expiry
            raise map_aws_error(exc, "resolving credentials") from exc  # type: ignore[misc]
        if credentials is None:
            raise PermanentActuatorError(NO_CREDENTIALS)

    def call(self, operation: str, request_ids: list[str] | None = None, *, retry: bool = True,
             **params: Any) -> dict[str, Any]:
        """One API call (a boto3 method name), transient errors retried. The
        request id of a successful call is appended to ``request_ids``."""
        client = self.calls.client
        api = f"{self.service}:{client.meta.method_to_api_mapping.get(operation, operation)}"
        return self.calls.call(api, lambda c: getattr(c, operation)(**params), request_ids, retry=retry)

    def elapsed_since(self, t0: float) -> float:
        return self._monotonic() - t0
