"""Fixtures of the Kubernetes actuator tests: the loopback API server of
tests/support/fake_kube.py and the one ManualClock."""

from __future__ import annotations

import pytest

from engine.core.clock import ManualClock

from tests.support.fake_kube import FakeKube


@pytest.fixture
def kube():
    with FakeKube(settle_after=1) as fake:
        yield fake


@pytest.fixture
def clock():
    return ManualClock()
