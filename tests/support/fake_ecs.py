"""A fake Alibaba Cloud ECS API on 127.0.0.1, for driving the real SDK.

It speaks the ECS RPC wire protocol (``POST /?Action=...&...``, parameters in
the query string or a form body; JSON answers carrying ``RequestId``; errors
as ``{"RequestId", "HostId", "Code", "Message", "Recommend"}`` with the HTTP
status ECS uses), so the SDK's signing, serialization and error parsing all
run. Signatures are not verified, but the access key id is read from the
``Authorization`` header (ACS3 signing) or ``AccessKeyId`` (RPC v2 signing)
and an unknown one is refused with ``InvalidAccessKeyId.NotFound``.

ECS semantics modelled, for the actions the actuators use:

- instances move between states over time: Running -> Stopping -> Stopped,
  Stopped -> Starting -> Running, Pending -> Starting -> Running for new
  ones, Stopping -> gone for deleted ones; each transition takes
  ``transition_s`` seconds of the injected ``clock`` (tests share a manual
  clock with the actuator, whose ``sleep`` advances it);
- ``ModifyInstanceSpec`` on a pay-as-you-go instance that is not Stopped:
  ``IncorrectInstanceStatus``; on a subscription one: ``ChargeTypeViolation``;
- ``ModifyPrepayInstanceSpec`` only for subscription instances; with
  ``RebootWhenFinished`` a running instance restarts (Stopping, Starting);
- stock per (zone, type): ``DescribeResourcesModification`` reports it and a
  change to a sold-out type fails with ``OperationDenied.NoStock``;
- ``ClientToken`` makes mutating calls idempotent (same answer, no repeat);
- required parameters: ``MissingParameter`` (HTTP 400);
- injected failures: ``throttle(n)`` answers the next n calls with
  ``Throttling.User``; ``fail(action, code, ...)`` answers chosen calls with
  any error.

Every call is appended to ``calls`` (action and parameters) for assertions.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

HOST_ID = "ecs.aliyuncs.com"
#: ECS's order of instance types used to tell upgrade from downgrade is the
#: catalog's order here: tests list types small to large
DEFAULT_TYPES = ("ecs.g7.large", "ecs.g7.xlarge", "ecs.g7.2xlarge", "ecs.g7.4xlarge")


class EcsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _missing(name: str) -> EcsError:
    return EcsError(400, "MissingParameter",
                    f'The input parameter "{name}" that is mandatory for processing this '
                    f"request is not supplied.")


def _incorrect_status(iid: str, status: str) -> EcsError:
    return EcsError(403, "IncorrectInstanceStatus",
                    f"The current status of the resource does not support this operation. "
                    f"(instance {iid} is {status})")


def _not_found(iid: str) -> EcsError:
    return EcsError(404, "InvalidInstanceId.NotFound",
                    f"The specified InstanceId does not exist. ({iid})")


@dataclass
class FakeInstance:
    instance_id: str
    instance_type: str
    zone_id: str
    charge_type: str = "PostPaid"
    status: str = "Running"
    creation_time: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: pending transitions, (at clock time, new status or None for "gone")
    schedule: list[tuple[float, str | None]] = field(default_factory=list)

    def to_ecs(self, region_id: str) -> dict[str, Any]:
        return {
            "InstanceId": self.instance_id,
            "InstanceName": self.instance_id,
            "InstanceType": self.instance_type,
            "Status": self.status,
            "ZoneId": self.zone_id,
            "RegionId": region_id,
            "InstanceChargeType": self.charge_type,
            "CreationTime": self.creation_time,
            "Tags": {"Tag": [{"TagKey": k, "TagValue": v} for k, v in self.tags.items()]},
        }


@dataclass(frozen=True)
class Call:
    action: str
    params: dict[str, str]


class FakeEcs:
    """State and semantics of the fake; :meth:`start` serves it over HTTP."""

    def __init__(self, *, region_id: str = "cn-hangzhou", clock: Callable[[], float] = time.monotonic,
                 transition_s: float = 10.0, access_key_ids: tuple[str, ...] = ("fake-key-id",),
                 instance_types: tuple[str, ...] = DEFAULT_TYPES) -> None:
        self.region_id = region_id
        self.clock = clock
        self.transition_s = transition_s
        self.access_key_ids = set(access_key_ids)
        self.instance_types = tuple(instance_types)
        self.instances: dict[str, FakeInstance] = {}
        #: (zone, type) -> "Available" | "SoldOut"; absent means Available
        self.stock: dict[tuple[str, str], str] = {}
        #: launch template id -> {"InstanceType", "ZoneId", ...}
        self.launch_templates: dict[str, dict[str, str]] = {}
        self.calls: list[Call] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._throttle: list[tuple[str | None, int]] = []
        self._failures: list[dict[str, Any]] = []
        self._tokens: dict[tuple[str, str], dict[str, Any]] = {}
        self._epoch = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ test setup
    def add_instance(self, instance_type: str, *, zone_id: str = "cn-hangzhou-h",
                     charge_type: str = "PostPaid", status: str = "Running",
                     tags: dict[str, str] | None = None, instance_id: str | None = None,
                     created_minutes_ago: int = 60) -> FakeInstance:
        with self._lock:
            iid = instance_id or self._new_id()
            created = self._epoch - timedelta(minutes=created_minutes_ago)
            inst = FakeInstance(iid, instance_type, zone_id, charge_type, status,
                                created.strftime("%Y-%m-%dT%H:%MZ"), dict(tags or {}))
            self.instances[iid] = inst
            return inst

    def add_launch_template(self, instance_type: str, *, zone_id: str = "cn-hangzhou-h",
                            template_id: str | None = None) -> str:
        tid = template_id or f"lt-{uuid.uuid4().hex[:16]}"
        self.launch_templates[tid] = {"InstanceType": instance_type, "ZoneId": zone_id}
        return tid

    def throttle(self, n: int, action: str | None = None) -> None:
        """Answer the next ``n`` calls (of ``action``, or any) with Throttling.User."""
        with self._lock:
            self._throttle.append((action, n))

    def fail(self, action: str, code: str, message: str = "injected failure", *,
             status: int = 400, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` with this error."""
        with self._lock:
            self._failures.append({"action": action, "code": code, "message": message,
                                   "status": status, "left": times})

    def actions(self) -> list[str]:
        return [c.action for c in self.calls]

    def count(self, action: str) -> int:
        return sum(1 for c in self.calls if c.action == action)

    # ------------------------------------------------------------ server
    def start(self) -> "FakeEcs":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without this, Nagle's
            # algorithm and the client's delayed ACK add 40 ms to every call
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._handle()

            def do_GET(self) -> None:  # noqa: N802
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                if body and "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                    params.update(parse_qsl(body, keep_blank_values=True))
                action = params.get("Action") or self.headers.get("x-acs-action") or ""
                status, payload = fake.handle(action, params, dict(self.headers.items()))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # a short poll interval: shutdown() waits up to one interval
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeEcs":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ dispatch
    def handle(self, action: str, params: dict[str, str],
               headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request_id = str(uuid.uuid4()).upper()
        with self._lock:
            self.calls.append(Call(action, dict(params)))
            try:
                self._authenticate(params, headers)
                self._injected(action)
                self._advance()
                handler = getattr(self, f"_{_snake(action)}", None)
                if handler is None:
                    raise EcsError(404, "InvalidAction.NotFound",
                                   f"Specified api is not found, please check your url and method. ({action})")
                token = params.get("ClientToken")
                if token and (action, token) in self._tokens:
                    return 200, dict(self._tokens[(action, token)])
                result = handler(params)
                result["RequestId"] = request_id
                if token:
                    self._tokens[(action, token)] = dict(result)
                return 200, result
            except EcsError as err:
                return err.status, {"RequestId": request_id, "HostId": HOST_ID, "Code": err.code,
                                    "Message": err.message,
                                    "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}"}

    def _authenticate(self, params: dict[str, str], headers: dict[str, str]) -> None:
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        m = re.search(r"Credential=([^,\s]+)", auth)
        key_id = m.group(1) if m else params.get("AccessKeyId")
        if not key_id:
            raise EcsError(400, "MissingAccessKeyId", "AccessKeyId is mandatory for this action.")
        if key_id not in self.access_key_ids:
            raise EcsError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")

    def _injected(self, action: str) -> None:
        for i, (only, n) in enumerate(self._throttle):
            if n > 0 and only in (None, action):
                self._throttle[i] = (only, n - 1)
                raise EcsError(400, "Throttling.User", "Request was denied due to user flow control.")
        for f in self._failures:
            if f["left"] > 0 and f["action"] == action:
                f["left"] -= 1
                raise EcsError(f["status"], f["code"], f["message"])

    def _advance(self) -> None:
        now = self.clock()
        for iid in list(self.instances):
            inst = self.instances[iid]
            while inst.schedule and inst.schedule[0][0] <= now:
                _, status = inst.schedule.pop(0)
                if status is None:
                    del self.instances[iid]
                    break
                inst.status = status

    def _transition(self, inst: FakeInstance, *steps: str | None) -> None:
        """Enter ``steps[0]`` now, and each later step ``transition_s`` after
        the one before."""
        now = self.clock()
        inst.status = steps[0]  # type: ignore[assignment]
        inst.schedule = [(now + self.transition_s * (k + 1), s) for k, s in enumerate(steps[1:])]

    def _new_id(self) -> str:
        return f"i-fake{next(self._ids):012d}"

    # ------------------------------------------------------------ helpers
    def _require(self, params: dict[str, str], *names: str) -> None:
        for name in names:
            if not params.get(name):
                raise _missing(name)

    def _region(self, params: dict[str, str]) -> None:
        self._require(params, "RegionId")
        if params["RegionId"] != self.region_id:
            raise EcsError(400, "InvalidRegionId.NotFound",
                           "The specified RegionId does not exist.")

    def _instance(self, params: dict[str, str], key: str = "InstanceId") -> FakeInstance:
        self._require(params, key)
        inst = self.instances.get(params[key])
        if inst is None:
            raise _not_found(params[key])
        return inst

    def _available(self, zone: str, instance_type: str) -> str:
        return self.stock.get((zone, instance_type), "Available")

    def _check_type(self, inst: FakeInstance, instance_type: str) -> None:
        if instance_type not in self.instance_types:
            raise EcsError(400, "InvalidInstanceType.ValueNotSupported",
                           f"The specified InstanceType does not exist or beyond the permitted "
                           f"range. ({instance_type})")
        if self._available(inst.zone_id, instance_type) != "Available":
            raise EcsError(403, "OperationDenied.NoStock",
                           "Sales of this resource are temporarily suspended in the specified "
                           "region; please try again later.")

    @staticmethod
    def _indexed(params: dict[str, str], prefix: str) -> list[str]:
        """``Prefix.1``, ``Prefix.2``, ... in order."""
        out = []
        for n in itertools.count(1):
            if f"{prefix}.{n}" not in params:
                return out
            out.append(params[f"{prefix}.{n}"])

    # ------------------------------------------------------------ actions
    def _describe_instances(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        found = list(self.instances.values())
        if p.get("InstanceIds"):
            try:
                wanted = json.loads(p["InstanceIds"])
                assert isinstance(wanted, list)
            except (ValueError, AssertionError):
                raise EcsError(400, "InvalidInstanceIds.Malformed",
                               "The specified parameter InstanceIds is not valid.") from None
            found = [i for i in found if i.instance_id in wanted]
        for n in itertools.count(1):
            key = p.get(f"Tag.{n}.Key")
            if key is None:
                break
            value = p.get(f"Tag.{n}.Value")
            found = [i for i in found if key in i.tags and (value is None or i.tags[key] == value)]
        if p.get("Status"):
            found = [i for i in found if i.status == p["Status"]]
        found.sort(key=lambda i: i.instance_id)
        size = int(p.get("MaxResults") or p.get("PageSize") or 10)
        start = int(p.get("NextToken") or 0)
        page = found[start:start + size]
        nxt = str(start + size) if start + size < len(found) else ""
        return {"TotalCount": len(found), "PageSize": size, "NextToken": nxt,
                "Instances": {"Instance": [i.to_ecs(self.region_id) for i in page]}}

    def _describe_resources_modification(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        self._require(p, "ResourceId", "DestinationResource")
        inst = self.instances.get(p["ResourceId"])
        if inst is None:
            raise EcsError(404, "InvalidResourceId.NotFound",
                           "The specified ResourceId is not found.")
        if p["DestinationResource"] != "InstanceType":
            raise EcsError(400, "InvalidDestinationResource.ValueNotSupported",
                           "The specified DestinationResource is not supported.")
        supported = []
        for t in self.instance_types:
            if t == inst.instance_type:
                continue
            st = self._available(inst.zone_id, t)
            supported.append({"Value": t, "Status": st,
                              "StatusCategory": "WithStock" if st == "Available" else "WithoutStock"})
        return {"AvailableZones": {"AvailableZone": [{
            "RegionId": self.region_id, "ZoneId": inst.zone_id,
            "Status": "Available", "StatusCategory": "WithStock",
            "AvailableResources": {"AvailableResource": [
                {"Type": "InstanceType", "SupportedResources": {"SupportedResource": supported}}]},
        }]}}

    def _stop_instance(self, p: dict[str, str]) -> dict[str, Any]:
        inst = self._instance(p)
        if inst.status != "Running":
            raise _incorrect_status(inst.instance_id, inst.status)
        self._transition(inst, "Stopping", "Stopped")
        return {}

    def _start_instance(self, p: dict[str, str]) -> dict[str, Any]:
        inst = self._instance(p)
        if inst.status != "Stopped":
            raise _incorrect_status(inst.instance_id, inst.status)
        self._transition(inst, "Starting", "Running")
        return {}

    def _modify_instance_spec(self, p: dict[str, str]) -> dict[str, Any]:
        inst = self._instance(p)
        if inst.charge_type != "PostPaid":
            raise EcsError(403, "ChargeTypeViolation",
                           "The operation is not permitted due to charge type of the instance.")
        if not p.get("InstanceType"):
            raise EcsError(400, "InvalidParameter.Conflict",
                           "At least one of InstanceType and bandwidth must be specified.")
        if inst.status != "Stopped":
            raise _incorrect_status(inst.instance_id, inst.status)
        self._check_type(inst, p["InstanceType"])
        inst.instance_type = p["InstanceType"]
        return {}

    def _modify_prepay_instance_spec(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        self._require(p, "InstanceType")
        inst = self._instance(p)
        if inst.charge_type != "PrePaid":
            raise EcsError(403, "ChargeTypeViolation",
                           "The operation is not permitted due to charge type of the instance.")
        op = p.get("OperatorType", "upgrade")
        if op not in ("upgrade", "downgrade"):
            raise EcsError(400, "InvalidOperatorType.ValueNotSupported",
                           "The specified OperatorType is not valid.")
        if inst.status not in ("Running", "Stopped"):
            raise _incorrect_status(inst.instance_id, inst.status)
        self._check_type(inst, p["InstanceType"])
        order = self.instance_types
        bigger = order.index(p["InstanceType"]) > order.index(inst.instance_type)
        if bigger != (op == "upgrade"):
            raise EcsError(400, "InvalidInstanceType.NotSupportedOperatorType",
                           f"The specified InstanceType does not support OperatorType {op}.")
        inst.instance_type = p["InstanceType"]
        if inst.status == "Running" and _flag(p, "RebootWhenFinished"):
            self._transition(inst, "Stopping", "Starting", "Running")
        return {"OrderId": str(200000000000000 + next(self._ids))}

    def _describe_launch_templates(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        ids = self._indexed(p, "LaunchTemplateId")
        sets = [{"LaunchTemplateId": t, "LaunchTemplateName": t, "DefaultVersionNumber": 1,
                 "LatestVersionNumber": 1} for t in self.launch_templates if not ids or t in ids]
        return {"TotalCount": len(sets), "PageNumber": 1, "PageSize": 10,
                "LaunchTemplateSets": {"LaunchTemplateSet": sets}}

    def _run_instances(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        lt = p.get("LaunchTemplateId")
        if not lt and not p.get("ImageId"):
            raise _missing("ImageId")
        if lt not in self.launch_templates:
            raise EcsError(403, "InvalidLaunchTemplate.NotFound",
                           "The specified launch template does not exist.")
        amount = int(p.get("Amount") or 1)
        if not 1 <= amount <= 100:
            raise EcsError(400, "InvalidParameter.Amount", "The specified Amount is not valid.")
        template = self.launch_templates[lt]
        tags = {}
        for n in itertools.count(1):
            if f"Tag.{n}.Key" not in p:
                break
            tags[p[f"Tag.{n}.Key"]] = p.get(f"Tag.{n}.Value", "")
        created = (self._epoch + timedelta(seconds=self.clock())).strftime("%Y-%m-%dT%H:%MZ")
        ids = []
        for _ in range(amount):
            inst = FakeInstance(self._new_id(), template["InstanceType"], template["ZoneId"],
                                "PostPaid", "Pending", created, dict(tags))
            self.instances[inst.instance_id] = inst
            self._transition(inst, "Pending", "Starting", "Running")
            ids.append(inst.instance_id)
        return {"InstanceIdSets": {"InstanceIdSet": ids}, "TradePrice": 0.0}

    def _delete_instances(self, p: dict[str, str]) -> dict[str, Any]:
        self._region(p)
        ids = self._indexed(p, "InstanceId")
        if not ids:
            raise _missing("InstanceId.1")
        targets = []
        for iid in ids:
            inst = self.instances.get(iid)
            if inst is None:
                raise _not_found(iid)
            if inst.status != "Stopped" and not _flag(p, "Force"):
                raise _incorrect_status(iid, inst.status)
            targets.append(inst)
        for inst in targets:
            self._transition(inst, "Stopping", None)
        return {}


def _flag(params: dict[str, str], name: str) -> bool:
    """A boolean parameter; the SDK sends Python's ``True``, ECS takes any case."""
    return params.get(name, "").lower() == "true"


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


# ------------------------------------------------------------ actuator builders
REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-h"
LADDER = ("ecs.g7.large", "ecs.g7.xlarge", "ecs.g7.2xlarge", "ecs.g7.4xlarge")
KEY_ID, KEY_SECRET = "fake-key-id", "fake-secret-do-not-log"
TAG = ("forescale-group", "web")
MUTATING = {"StopInstance", "StartInstance", "ModifyInstanceSpec", "ModifyPrepayInstanceSpec",
            "RunInstances", "DeleteInstances"}


def sdk_client(endpoint: str, key_id: str = KEY_ID):
    """The real SDK client, pointed at the fake."""
    from alibabacloud_ecs20140526.client import Client
    from alibabacloud_tea_openapi.models import Config

    return Client(Config(access_key_id=key_id, access_key_secret=KEY_SECRET, region_id=REGION,
                         endpoint=endpoint, protocol="http"))


def common(**overrides):
    """Settings every actuator of these tests shares."""
    from datetime import timedelta

    base = dict(region_id=REGION, verify_timeout=timedelta(minutes=10), retry_attempts=4,
                retry_max_wait=timedelta(seconds=30))
    base.update(overrides)
    return base


def spec_actuator(fake: "FakeEcs", clock, instance_id: str, *, client=None, **overrides):
    from actuators.alibaba import EcsInstanceSpecActuator, EcsInstanceSpecConfig

    config = EcsInstanceSpecConfig(instance_id=instance_id, **common(**overrides))
    return EcsInstanceSpecActuator(
        config, target="db", ladder=LADDER, sleep=clock.sleep, monotonic=clock.monotonic,
        client=client if client is not None else sdk_client(fake.endpoint))


def group_actuator(fake: "FakeEcs", clock, template_id: str, *, client=None, **overrides):
    from actuators.alibaba import EcsInstanceGroupActuator, EcsInstanceGroupConfig

    config = EcsInstanceGroupConfig(tag_key=TAG[0], tag_value=TAG[1],
                                    launch_template_id=template_id, **common(**overrides))
    return EcsInstanceGroupActuator(
        config, target="web", sleep=clock.sleep, monotonic=clock.monotonic,
        client=client if client is not None else sdk_client(fake.endpoint))


def mutating(fake: "FakeEcs") -> list[str]:
    return [a for a in fake.actions() if a in MUTATING]


def slowly(actuator, fake: "FakeEcs", clock):
    """The contract's ``slow_platform``: state changes take an hour until
    ``finish()``, which makes them instant and moves the clock past them."""
    from datetime import timedelta

    fake.transition_s = 3600.0

    def finish():
        fake.transition_s = 0.0
        clock.advance(timedelta(hours=2))
    return actuator, finish


def run_cycles(actuator, clock, desired: int, *, decision_id: str = "d1", every_s: float = 15.0,
               cycles: int = 8) -> list:
    """Apply as the engine does across cycles: once, then again (same
    decision) each cycle while unverified, the clock a cycle further each
    time. Returns every cycle's result."""
    from datetime import timedelta

    results = [actuator.apply(desired, decision_id=decision_id)]
    while not results[-1].verified and len(results) < cycles:
        clock.advance(timedelta(seconds=every_s))
        results.append(actuator.apply(desired, decision_id=decision_id))
    return results
