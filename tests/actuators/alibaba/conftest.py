"""Fixtures of the Alibaba Cloud ECS actuator tests: the real SDK
(``alibabacloud_ecs20140526``: its signing, serialization and error parsing)
against the fake ECS API in ``tests/support/fake_ecs.py`` on 127.0.0.1.

The actuator and the fake share the one ManualClock: the actuator's backoff
``sleep`` advances it, and the fake's instance state transitions follow it,
so a test moves time forward between the engine's cycles
(:func:`tests.support.fake_ecs.run_cycles`) and waits of minutes take
milliseconds."""

from __future__ import annotations

import pytest

from engine.core.clock import ManualClock

from tests.support.fake_ecs import KEY_ID, LADDER, REGION, FakeEcs


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock):
    with FakeEcs(region_id=REGION, clock=clock.monotonic, transition_s=10.0,
                 access_key_ids=(KEY_ID,), instance_types=LADDER) as f:
        yield f


@pytest.fixture
def instant(fake):
    """The fake with instances that change state at once: the platform the
    contract's ``actuator`` needs (a change in service by the next call)."""
    fake.transition_s = 0.0
    return fake
