"""Fixtures of the AWS actuator tests: a real moto server on loopback,
driven by the real boto3, with a fault-injecting proxy (tests/support/aws.py)
in front of it for throttling, permission and capacity errors.

moto's semantics, which these tests rely on: instances of an Auto Scaling
group are created InService at once (no Pending phase), so a slow platform
is made by rewriting moto's answers into Pending at the proxy; a stopped
instance is stopped at once and a started one running at once with status
checks "ok"; moto does not enforce MaxSize on SetDesiredCapacity (the
actuator checks the limits itself before calling).
"""

from __future__ import annotations

import uuid

import pytest

from engine.core.clock import ManualClock

from tests.support.aws import FAKE_CREDENTIALS, FaultProxy, MotoServer


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(moto):
    p = FaultProxy(moto.url)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path, moto, proxy):
    """Fake credentials only; nothing from the developer's ~/.aws or IMDS."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k, v in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    proxy.reset()


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def gname():
    """A group name of this test's own: the moto server is shared by the
    module (restarting or resetting it per test costs seconds)."""
    return f"web-{uuid.uuid4().hex[:10]}"
