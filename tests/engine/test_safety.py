"""The safety claims, proved at the seam where they matter: the actuator's
write path.

1. In observe, dry-run and approve mode nothing is ever written to the
   platform without an approved plan, across every fault path: the metric
   source down, a forecast failure, a restart in the middle of a cycle, a
   config reload, a stale plan, an expired plan, a forged approval, a
   reactive override without the emergency rule, a plan approved before the
   target was switched to a mode that never writes. The platform here fails
   the test on any write (``pytest.fail`` raises a BaseException, which no
   ``except Exception`` in the engine can swallow).
2. A property test: for any interleaving of plan / approve / reject / expire
   / supersede / apply / tick / crash / restart, no plan is written twice, no
   plan is written unless it was approved and claimed, none is written after
   it was rejected, expired or superseded, a final state never changes, and
   the audit chain verifies.
"""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.audit import verify
from engine.config import load_config
from engine.core.errors import ForescaleError
from engine.core.types import ActionPlan, ActuationResult, CapacityReading, Decision, PlanStatus
from engine.plans import apply_plan, approve, create_plan, reject, tick
from engine.store import Store

from tests.support.live import STEP, T0, FlakySource, build_live, target_dict, write_config, write_trace


class NoWrites:
    """A platform whose write path fails the test."""

    name = "no-writes"

    def __init__(self, capacity: int = 5) -> None:
        self.capacity = capacity

    def validate(self) -> None:
        return None

    def read(self) -> CapacityReading:
        return CapacityReading(self.capacity)

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        return ActionPlan("no-writes", "web", self.capacity if current is None else current, desired, "would set")

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        pytest.fail(f"the platform was written to: set {desired} for {decision_id}")


# demand 100 -> 20 replicas from 5; a spike to 400 at the end
VALUES = [100.0] * 40


class World:
    """A target on the fixed test clock, rebuilt on restart and reload."""

    def __init__(self, tmp: Path, mode: str, values=VALUES, **over) -> None:
        self.tmp, self.over = tmp, {"plan_ttl": "1h", **over}
        self.trace = write_trace(tmp / "load.csv", values, start=T0 - 25 * STEP)
        self.platform = NoWrites()
        self.store = Store(tmp / "state.db")
        self.source: FlakySource | None = None
        self.configure(mode)

    def configure(self, mode: str, **more) -> None:
        t = target_dict("web", self.trace, mode=mode, **{**self.over, **more})
        self.cfg = write_config(self.tmp / "c.yaml", [t])
        self.target = load_config(self.cfg).target("web")
        self.live = build_live(self.cfg, self.store, self.platform, source=self.source)

    def restart(self, mode: str) -> None:
        self.store.close()
        self.store = Store(self.tmp / "state.db")
        self.configure(mode)

    def approved_plan(self, at) -> str:
        """A plan made and approved while the target was in approve mode."""
        mode = self.target.mode
        self.configure("approve")
        res = self.live.run(at)
        assert res.status == "planned", res
        approve(self.store, res.plan.id, at + timedelta(seconds=5), identity="unix:alice", channel="cli")
        self.configure(mode)
        return res.plan.id


def _steady(w: World, mode: str) -> None:
    for i in range(3):
        w.live.run(T0 + i * STEP)


def _source_down(w: World, mode: str) -> None:
    from engine.build import build_source

    w.source = FlakySource(build_source(w.target, load_config(w.cfg)))
    w.configure(mode)
    w.live.run(T0)
    w.source.mode = "down"
    for i in range(1, 4):
        assert w.live.run(T0 + i * STEP).fetch_error
    w.source.mode = "garbage"
    w.live.run(T0 + 4 * STEP)


def _forecast_failure(w: World, mode: str) -> None:
    w.configure(mode, forecaster={"name": "seasonal_naive", "history": "2h", "refit_every": "1h"})
    for i in range(3):
        res = w.live.run(T0 + i * STEP)
        assert "forecast_error" in res.details


def _restart_mid_cycle(w: World, mode: str) -> None:
    w.live.run(T0)

    class Crash(BaseException):
        pass

    def die(*a, **k):
        raise Crash()

    w.live.source = type("Dying", (), {"fetch": staticmethod(die)})()
    with pytest.raises(Crash):
        w.live.run(T0 + STEP)
    w.restart(mode)
    for i in range(2, 5):
        w.live.run(T0 + i * STEP)


def _reload(w: World, mode: str) -> None:
    w.live.run(T0)
    w.configure(mode, policy={"max_replicas": 8})
    w.live.run(T0 + STEP)
    w.configure(mode, policy={"min_replicas": 30})  # bounds force a scale-up
    w.live.run(T0 + 2 * STEP)


def _stale_plan(w: World, mode: str) -> None:
    pid = w.approved_plan(T0)
    w.platform.capacity = 7  # changed by hand since planning
    w.live.run(T0 + STEP)
    if mode == "approve":
        assert w.store.plan(pid).status == PlanStatus.REFUSED
    with pytest.raises(ForescaleError):
        apply_plan(w.store, w.platform, pid, T0 + STEP, w.target)


def _expired_plan(w: World, mode: str) -> None:
    w.over["plan_ttl"] = "6m"
    pid = w.approved_plan(T0)
    w.live.run(T0 + STEP + timedelta(minutes=2))  # past its 6 minutes
    with pytest.raises(ForescaleError):
        apply_plan(w.store, w.platform, pid, T0 + 2 * STEP, w.target)
    assert w.store.plan(pid).status == PlanStatus.EXPIRED


def _forged_approval(w: World, mode: str) -> None:
    mode_now = w.target.mode
    w.configure("approve")
    res = w.live.run(T0)
    w.configure(mode_now)
    raw = sqlite3.connect(w.store.path)
    raw.execute("UPDATE plans SET status='approved'")
    raw.commit()
    raw.close()
    w.live.run(T0 + STEP)
    with pytest.raises(ForescaleError):
        apply_plan(w.store, w.platform, res.plan.id, T0 + STEP, w.target)


def _reactive_override_without_the_emergency_rule(w: World, mode: str) -> None:
    w.trace = write_trace(w.tmp / "load.csv", [100.0] * 25 + [400.0] * 10, start=T0 - 25 * STEP)
    w.configure(mode, forecaster={"name": "seasonal_naive", "history": "2h", "refit_every": "1h"})
    for i in range(3):
        res = w.live.run(T0 + i * STEP)
        assert res.decision.step("reactive").reason == "ReactiveOverride"


FAULTS = [_steady, _source_down, _forecast_failure, _restart_mid_cycle, _reload, _stale_plan, _expired_plan,
          _forged_approval, _reactive_override_without_the_emergency_rule]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("mode", ["observe", "dry-run", "approve"])
def test_nothing_is_written_without_an_approved_plan(tmp_path, mode, fault):
    w = World(tmp_path, mode)
    fault(w, mode)  # NoWrites fails the test on any write
    assert verify(w.store).ok
    w.store.close()


@pytest.mark.parametrize("mode", ["observe", "dry-run"])
def test_a_plan_approved_before_a_switch_to_a_mode_that_never_writes_is_never_applied(tmp_path, mode):
    w = World(tmp_path, mode)
    pid = w.approved_plan(T0)
    for i in range(1, 3):
        w.live.run(T0 + i * STEP)  # the cycle of a non-approve target never applies plans
    assert w.store.plan(pid).status == PlanStatus.APPROVED
    with pytest.raises(ForescaleError, match=f"in {mode} mode now"):
        apply_plan(w.store, w.platform, pid, T0 + 2 * STEP, w.target)
    assert tick(w.store, w.target, w.platform, T0 + 2 * STEP) == []  # nothing left to apply
    assert w.store.plan(pid).status == PlanStatus.REFUSED


# ------------------------------------------------------------ the property test
class ProcessDied(BaseException):
    """The process running the apply was killed (no ``except Exception``
    catches it)."""


class Recorder:
    """A platform that checks, at every write, that the plan being written
    was approved and claimed, and counts writes per decision."""

    name = "recorder"

    def __init__(self, world: "Machine") -> None:
        self.world = world
        self.capacity = 5
        self.writes: list[str] = []
        self.crash_next = False

    def validate(self) -> None:
        return None

    def read(self) -> CapacityReading:
        return CapacityReading(self.capacity)

    def describe(self, desired, current=None):
        return ActionPlan("recorder", "web", current, desired, "set")

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        store = self.world.store
        (pid, status) = store.db.execute("SELECT id, status FROM plans WHERE decision_id=?",
                                         (decision_id,)).fetchone()
        seen = [t.to_status for t in store.plan_history(pid)]
        # pytest.fail: a BaseException, so no ``except Exception`` in the engine swallows it
        if status != "applying":
            pytest.fail(f"plan {pid} written while {status}")
        if PlanStatus.APPROVED not in seen:
            pytest.fail(f"plan {pid} written without an approval: {seen}")
        if {PlanStatus.REJECTED, PlanStatus.EXPIRED, PlanStatus.SUPERSEDED} & set(seen):
            pytest.fail(f"plan {pid} written after it was rejected, expired or superseded: {seen}")
        if decision_id in self.writes:
            pytest.fail(f"plan {pid} written twice")
        self.writes.append(decision_id)
        self.capacity = desired
        if self.crash_next:  # the process dies after the platform accepted the change
            self.crash_next = False
            raise ProcessDied()
        return ActuationResult(desired, desired, True, timedelta(0), (f"req-{len(self.writes)}",))


class Machine:
    def __init__(self, tmp: Path) -> None:
        trace = write_trace(tmp / "load.csv", [1.0] * 3)
        cfg = write_config(tmp / "c.yaml", [target_dict("web", trace, mode="approve", plan_ttl="20m",
                                                        timeout="1m")])
        self.target = load_config(cfg).target("web")
        self.path = tmp / "state.db"
        self.store = Store(self.path)
        self.platform = Recorder(self)
        self.now = T0
        self.n = 0
        self.final: dict[str, PlanStatus] = {}

    def plans(self):
        return self.store.plans("web")

    def pick(self, i: int):
        ps = self.plans()
        return ps[i % len(ps)].id if ps else None

    def step(self, event: str, i: int) -> None:
        self.now += timedelta(minutes=1)
        s, pid = self.store, self.pick(i)
        try:
            if event == "plan":  # a new decision: supersedes a different open plan
                self.n += 1
                desired = 1 + (i % 9)
                d = Decision(target="web", at=self.now, current=self.platform.capacity, desired=desired,
                             recommendation=desired, steps=())
                if desired != self.platform.capacity:
                    create_plan(s, self.target, d, self.platform.capacity, "p", self.now)
            elif event == "approve" and pid:
                approve(s, pid, self.now, identity="unix:alice", channel="cli")
            elif event == "reject" and pid:
                reject(s, pid, self.now, identity="token:bob", channel="http")
            elif event == "expire":
                self.now += timedelta(minutes=25)
                tick(s, self.target, self.platform, self.now)
            elif event == "apply" and pid:
                apply_plan(s, self.platform, pid, self.now, self.target)
            elif event == "tick":
                tick(s, self.target, self.platform, self.now)
            elif event == "crash" and pid:
                self.platform.crash_next = True
                try:
                    apply_plan(s, self.platform, pid, self.now, self.target)
                except ProcessDied:
                    self.restart()
                finally:
                    self.platform.crash_next = False
            elif event == "restart":
                self.restart()
        except ForescaleError:
            pass  # refused: the state machine said no
        self.check()

    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.path)
        self.now += timedelta(minutes=2)  # past the cycle timeout: an interrupted apply is settled

    def check(self) -> None:
        for p in self.plans():
            if p.id in self.final:
                assert p.status == self.final[p.id], f"plan {p.id} left final state {self.final[p.id]}"
            elif p.status.final:
                self.final[p.id] = p.status


EVENTS = st.tuples(st.sampled_from(["plan", "approve", "reject", "expire", "apply", "tick", "crash", "restart"]),
                   st.integers(0, 20))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, min_size=1, max_size=25))
def test_no_interleaving_applies_a_plan_twice_or_one_that_was_not_approved(events):
    with tempfile.TemporaryDirectory() as tmp:
        m = Machine(Path(tmp))
        try:
            for event, i in [("plan", 7)] + events:
                m.step(event, i)
            tick(m.store, m.target, m.platform, m.now + timedelta(hours=1))  # settle what is left
            m.check()
            applied = {p.decision_id for p in m.plans() if p.status == PlanStatus.APPLIED}
            assert applied <= set(m.platform.writes)  # applied means written, once
            st_ = verify(m.store)
            assert st_.ok, st_.summary()
        finally:
            m.store.close()
