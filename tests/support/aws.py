"""Loopback AWS for the AWS actuator tests: a real ``moto`` server process,
a fault-injecting HTTP proxy in front of it, and builders for the resources
a test needs (made through the real EC2 and Auto Scaling APIs).

The proxy speaks the AWS query protocol: it reads the ``Action`` of each
request, counts it, and either answers with an AWS error document (the
exact XML shape EC2 and Auto Scaling send) or forwards to moto, optionally
rewriting moto's answer.
"""

from __future__ import annotations

import functools
import http.client
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 and a free port."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.log()}")
            try:
                self._request("GET", "/moto-api/")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"moto_server did not answer within {start_timeout} s: {self.log()}")
                time.sleep(0.05)

    def _request(self, method: str, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------ proxy
@dataclass
class _Rule:
    action: str
    times: int
    status: int = 400
    code: str = ""
    message: str = ""
    rewrite: Callable[[bytes], bytes] | None = None


def error_document(service: str, code: str, message: str, request_id: str) -> bytes:
    """The XML body AWS sends with a query-protocol error."""
    if service == "ec2":
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            f"</Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
    return (
        '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([a-z0-9-]+)/aws4_request")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream``.

    ``fail(action, times=N, code=...)`` answers the next N requests for
    ``action`` with an AWS error; ``rewrite(action, times=N, fn)`` passes the
    next N answers through ``fn``. ``count(action)`` says how many requests
    for ``action`` arrived (answered or forwarded)."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self._host, self._port = up.hostname, up.port
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.actions: Counter[str] = Counter()
        self.injected_request_ids: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- test API
    def fail(self, action: str, *, times: int = 1, code: str = "Throttling",
             message: str = "Rate exceeded", status: int = 400) -> None:
        with self._lock:
            self._rules.append(_Rule(action, times, status, code, message))

    def rewrite(self, action: str, fn: Callable[[bytes], bytes], *, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(action, times, rewrite=fn))

    def count(self, action: str) -> int:
        with self._lock:
            return self.actions[action]

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self.actions.clear()
            self.injected_request_ids.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- internals
    def _take(self, action: str) -> _Rule | None:
        with self._lock:
            self.actions[action] += 1
            for rule in self._rules:
                if rule.action == action and rule.times > 0:
                    rule.times -= 1
                    return rule
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = parse_qs(body.decode("utf-8", errors="replace"))
                action = (form.get("Action") or [""])[0]
                scope = _SCOPE.search(self.headers.get("Authorization", ""))
                service = scope.group(1) if scope else ""
                rule = proxy._take(action)
                if rule is not None and rule.rewrite is None:
                    rid = str(uuid.uuid4())
                    with proxy._lock:
                        proxy.injected_request_ids.append(rid)
                    self._send(rule.status, error_document(service, rule.code, rule.message, rid),
                               [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)])
                    return
                status, headers, payload = self._forward(body)
                if rule is not None and rule.rewrite is not None:
                    payload = rule.rewrite(payload)
                self._send(status, payload, headers)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                    return resp.status, kept, payload
                finally:
                    conn.close()

            def _send(self, status: int, payload: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


# --------------------------------------------------------------------------- builders
@functools.lru_cache(maxsize=None)
def clients(endpoint_url: str) -> tuple[object, object]:
    """(autoscaling, ec2) boto3 clients for arranging a test, retries off."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"total_max_attempts": 1})
    kw = {"region_name": REGION, "endpoint_url": endpoint_url, "config": cfg}
    return boto3.client("autoscaling", **kw), boto3.client("ec2", **kw)


@functools.lru_cache(maxsize=None)
def _subnet_and_image(endpoint_url: str) -> tuple[str, str]:
    """One subnet (room for thousands of instances) and an Amazon Linux 2
    image per server: tests share them and use resources of their own."""
    _, ec2 = clients(endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/18",
                               AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    images = ec2.describe_images(Owners=["amazon"],
                                 Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])["Images"]
    return subnet, images[0]["ImageId"]


def make_group(endpoint_url: str, name: str, *, min_size: int = 1, max_size: int = 5,
               desired: int = 2) -> None:
    """An Auto Scaling group from a launch template in a fresh subnet."""
    autoscaling, ec2 = clients(endpoint_url)
    subnet, image = _subnet_and_image(endpoint_url)
    ec2.create_launch_template(LaunchTemplateName=f"{name}-lt",
                               LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": f"{name}-lt"},
        MinSize=min_size, MaxSize=max_size, DesiredCapacity=desired, VPCZoneIdentifier=subnet,
    )


def make_instance(endpoint_url: str, instance_type: str = "t3.small") -> str:
    """A running, EBS-backed instance; returns its id."""
    _, ec2 = clients(endpoint_url)
    subnet, image = _subnet_and_image(endpoint_url)
    return ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1,
                             SubnetId=subnet)["Instances"][0]["InstanceId"]


def describe_group(endpoint_url: str, name: str) -> dict:
    autoscaling, _ = clients(endpoint_url)
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def describe_instance(endpoint_url: str, instance_id: str) -> dict:
    _, ec2 = clients(endpoint_url)
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
