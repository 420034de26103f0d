"""The state store, on a real SQLite file in tmp_path and on a real
PostgreSQL server (:mod:`tests.support.postgres`): the tests that hold for
both backends run on both (the ``state`` fixture); those about the file
itself (its lock, its pragmas, the version-1 migration) on SQLite."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine.core.units import isoformat
from engine.core.errors import PlanNotFound, PlanStateError, StateError, StateLocked
from engine.store import _SCHEMA_V1, SCHEMA_VERSION, Store, open_store
from tests.support.postgres import pg_server  # noqa: F401 - the session's server
from engine.core.types import (
    ActuationResult, Forecast, Observation, Plan, PlanStatus, ScaleEvent, ScalingState, Series,
)
from policies import PolicyConfig, decide

UTC = timezone.utc
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "forescale.db"  # the parent folder is created on open


@pytest.fixture(params=["sqlite", "postgres"])
def state(request, db_path):
    """Where the store lives: the SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return db_path
    return request.getfixturevalue("pg_server").fresh_database()


@pytest.fixture
def store(state):
    with open_store(state) as s:
        yield s


@pytest.fixture
def sqlite_store(db_path):
    with Store(db_path) as s:
        yield s


def full_state() -> ScalingState:
    return ScalingState(
        current=10,
        in_service=9,
        observation=Observation(42.5, NOW - minutes(1)),
        recommendations=((NOW - minutes(4), 12), (NOW - minutes(2), 8)),
        events=(ScaleEvent(NOW - minutes(30), 6, 12), ScaleEvent(NOW - minutes(3), 12, 10)),
        smoothed=(40.25, 41.0),
        headroom=0.125,
        learned_lead_time=timedelta(seconds=390),
        history_points=4032,
    )


def forecast(made_at: datetime, n: int = 3, level: float = 10.0, model: str = "seasonal_naive") -> Forecast:
    t = int(made_at.timestamp())
    pt = np.full(n, level)
    return Forecast(made_at=made_at, timestamps=t + 300 * np.arange(1, n + 1), point=pt,
                    quantiles={0.9: pt * 1.5}, model=model, model_version="v1")


def count(store: Store, table: str) -> int:
    return store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ---------------------------------------------------------------------- state
def test_state_round_trips_through_a_restart(state):
    with open_store(state) as s:
        assert s.load_state("web") is None
        s.save_state("web", full_state(), NOW)
    with open_store(state) as s:  # a new process opening the same file
        assert s.load_state("web") == full_state()
        assert s.load_state("other") is None


def test_a_restart_resumes_cooldown_clocks_and_stabilization_windows(state):
    # scale-up 2 min ago, cooldown 5 min; a 9 recommended 1 min ago inside the 5 min
    # down window. The forecast (10 -> q0.9 15 -> ceil(15 / 10 / 0.7) = 3) would scale
    # down at once without that memory.
    cfg = PolicyConfig(capacity_per_replica=10.0, cooldown={"after_scale_up": "5m"}, reactive={"enabled": False})
    before = ScalingState(current=10, observation=Observation(20.0, NOW),
                          recommendations=((NOW - minutes(1), 9),),
                          events=(ScaleEvent(NOW - minutes(2), 4, 10),))
    with open_store(state) as s:
        s.save_state("web", before, NOW)
    with open_store(state) as s:
        after = s.load_state("web")
    d = decide(forecast(NOW), after, cfg, NOW)
    assert d.recommendation == 3
    assert d.step("stabilization").value == 9  # the window survived the restart
    assert d.desired == 10 and d.step("cooldown").reason == "CooldownAfterScaleUp"  # so did the clock
    amnesiac = decide(forecast(NOW), ScalingState(current=10, observation=Observation(20.0, NOW)), cfg, NOW)
    assert amnesiac.desired == 3


def test_saving_state_again_replaces_it(store):
    store.save_state("web", full_state(), NOW)
    store.save_state("web", ScalingState(current=3), NOW + minutes(5))
    assert store.load_state("web") == ScalingState(current=3)
    assert count(store, "target_state") == 1


# ------------------------------------------------------------------ decisions
def make_decision(at: datetime, target: str = "web", current: int = 10, observed: float = 90.0):
    cfg = PolicyConfig(capacity_per_replica=10.0, target_utilization=0.5)
    return decide(None, ScalingState(current=current, observation=Observation(observed, at)), cfg, at,
                  target=target)


def test_decisions_are_logged_with_status_and_the_state_after_them_atomically(store):
    d = make_decision(NOW)  # fallback: 90 on 10 replicas of 5 -> 18
    after = ScalingState(current=10).after(d, keep=minutes(10))
    store.record_decision(d, "dry-run", "intent", NOW, state=after)
    assert store.load_state("web") == after
    (rec,) = store.decisions("web")
    assert rec == {**d.to_dict(), "mode": "dry-run", "status": "intent", "approval": None, "approvals": [],
                   "plan_id": None, "outcome": None}
    assert [s["reason"] for s in rec["steps"]] == [s.reason for s in d.steps]
    assert store.unfinished_intents("web")[0]["id"] == d.id

    store.set_decision_status(d.id, "applied", NOW + minutes(1), outcome={"observed": 18},
                              approval={"decision": "approved", "identity": "unix:ana"})
    rec = store.decision(d.id)
    assert (rec["status"], rec["outcome"], rec["approval"]) == ("applied", {"observed": 18},
                                                                {"decision": "approved", "identity": "unix:ana"})
    assert store.unfinished_intents("web") == []
    # a later status without an outcome keeps the recorded one
    store.set_decision_status(d.id, "applied", NOW + minutes(2))
    assert store.decision(d.id)["outcome"] == {"observed": 18}


def test_the_decision_log_filters_by_target_and_status_newest_first(store):
    for i in range(3):
        store.record_decision(make_decision(NOW + minutes(5 * i)), "auto", "applied", NOW)
    store.record_decision(make_decision(NOW, target="db"), "observe", "skipped", NOW)
    assert [r["at"] for r in store.decisions("web")] == [
        "2024-03-01T12:10:00Z", "2024-03-01T12:05:00Z", "2024-03-01T12:00:00Z"]
    assert len(store.decisions()) == 4
    assert [r["target"] for r in store.decisions(status="skipped")] == ["db"]
    assert len(store.decisions("web", limit=2)) == 2
    assert store.decision("nobody@2024-03-01T12:00:00Z") is None


def test_recording_the_same_decision_twice_updates_it(store):
    d = make_decision(NOW)
    store.record_decision(d, "auto", "intent", NOW)
    store.record_decision(d, "auto", "failed", NOW, outcome={"error": "throttled"})
    assert count(store, "decisions") == 1
    assert store.decision(d.id)["outcome"] == {"error": "throttled"}


def test_setting_the_status_of_an_unknown_decision_is_a_state_error(store):
    with pytest.raises(StateError, match="no decision 'web@x'"):
        store.set_decision_status("web@x", "applied", NOW)


# ------------------------------------------------------------------ forecasts
def test_forecasts_are_stored_and_actuals_filled_in_when_observed(store):
    store.record_forecast("web", forecast(NOW, n=3, level=10.0))  # points at +5, +10, +15 min
    store.record_forecast("web", forecast(NOW + minutes(5), n=3, level=20.0))  # +10, +15, +20 min
    assert count(store, "forecasts") == 6
    assert store.forecast_records("web") == []  # nothing observed yet
    observed = Series(np.array([T0 + 300, T0 + 600, T0 + 900]), np.array([11.0, np.nan, 13.0]))
    # +5 min: one forecast; +10 min is a gap (NaN, not filled); +15 min: two forecasts
    assert store.fill_actuals("web", observed) == 3
    recs = store.forecast_records("web")  # ordered by time; the two at +15 min in either order
    assert sorted((r["ts"] - T0, r["horizon_s"], r["point"], r["actual"]) for r in recs) == [
        (300, 300, 10.0, 11.0), (900, 600, 20.0, 13.0), (900, 900, 10.0, 13.0)]
    assert [r["point"] for r in store.forecast_records("web", horizon_s=600)] == [20.0]
    assert [r["model"] for r in store.forecast_records("web", horizon_s=300)] == ["seasonal_naive"]
    # an actual once filled is not overwritten by a later (revised) observation
    assert store.fill_actuals("web", Series(np.array([T0 + 300]), np.array([99.0]))) == 0
    assert store.forecast_records("web", horizon_s=300)[0]["actual"] == 11.0
    # other targets are untouched
    assert store.fill_actuals("db", observed) == 0
    # prune drops what is older than the cut
    store.prune(NOW + minutes(12))
    assert {r["ts"] - T0 for r in store.forecast_records("web", with_actual=False)} == {900, 1200}


# ---------------------------------------------------------------------- plans
def plan(pid: str = "p1", status: PlanStatus = PlanStatus.PENDING) -> Plan:
    return Plan(id=pid, target="web", decision_id="web@2024-03-01T12:00:00Z", from_capacity=4, to_capacity=8,
                observed_capacity=4, created_at=NOW, expires_at=NOW + minutes(5), status=status,
                description="set web to 8")


def test_plans_round_trip_and_move_through_their_states(store):
    store.save_plan(plan())
    assert store.plan("p1") == plan()
    approved = store.transition_plan("p1", PlanStatus.APPROVED, NOW + minutes(1), identity="unix:ana",
                                     channel="cli", comment="ok", allowed_from=(PlanStatus.PENDING,))
    assert (approved.status, approved.actor, approved.note) == (PlanStatus.APPROVED, "unix:ana", "ok")
    assert approved.updated_at == NOW + minutes(1)
    assert store.plan("p1") == approved
    applied = store.transition_plan("p1", PlanStatus.APPLIED, NOW + minutes(2),
                                    allowed_from=(PlanStatus.APPROVED,))
    assert (applied.actor, applied.note) == ("unix:ana", "ok")  # kept from the approval
    assert [p.id for p in store.plans("web", PlanStatus.APPLIED)] == ["p1"]
    assert store.plans("web", PlanStatus.PENDING) == []


def test_an_illegal_plan_transition_raises_and_changes_nothing(store):
    store.save_plan(plan(status=PlanStatus.APPLIED))
    with pytest.raises(PlanStateError, match="plan p1 is applied; cannot make it approved \\(only from pending\\)"):
        store.transition_plan("p1", PlanStatus.APPROVED, NOW, identity="unix:ana", allowed_from=(PlanStatus.PENDING,))
    assert store.plan("p1") == plan(status=PlanStatus.APPLIED)
    with pytest.raises(PlanNotFound, match="no plan 'p9'"):
        store.transition_plan("p9", PlanStatus.APPROVED, NOW, allowed_from=(PlanStatus.PENDING,))
    with pytest.raises(PlanNotFound):
        store.plan("p9")


# ---------------------------------------------------------- actuations, samples
def test_actuation_delays_count_only_verified_actions_newest_first(store):
    for i, (elapsed, ok) in enumerate([(120.0, True), (600.0, False), (95.5, True)]):
        store.record_actuation("web", f"web@{i}", NOW + minutes(i),
                               ActuationResult(requested=8, observed=8 if ok else 4, verified=ok,
                                               elapsed=timedelta(seconds=elapsed), request_ids=(f"req-{i}",)))
    assert store.actuation_delays("web") == [95.5, 120.0]
    assert store.actuation_delays("db") == []


def test_cached_samples_round_trip_with_gaps(store):
    s = Series(np.array([T0, T0 + 300, T0 + 600]), np.array([1.0, np.nan, 3.0]))
    store.cache_samples("web", s)
    back = store.cached_samples("web")
    assert back.timestamps.tolist() == s.timestamps.tolist()
    assert back.values[0] == 1.0 and np.isnan(back.values[1]) and back.values[2] == 3.0
    assert store.cached_samples("web", since=NOW).timestamps.tolist() == [T0 + 300, T0 + 600]


# ------------------------------------------------------------------ the lock
def test_a_second_store_on_the_same_file_cannot_take_the_lock_until_the_first_closes(db_path):
    first = Store(db_path)
    first.lock()
    second = Store(db_path)  # reading (the CLI) needs no lock
    with pytest.raises(StateLocked) as info:
        second.lock()
    msg = str(info.value)
    assert f"another forescale process (pid {os.getpid()}) holds the lock on {db_path}" in msg
    assert "one daemon per state file" in msg
    first.close()
    second.lock()  # released on close
    with pytest.raises(StateLocked):
        Store(db_path).lock()
    second.close()


def test_writers_of_one_process_wait_their_turn_instead_of_failing_on_a_busy_file(db_path):
    """Many target threads, each its own connection to the state file: a
    write that finds the file held by another writer of this process waits
    for it (in turn, on the process's lock) instead of failing with
    "database is locked" once SQLite's busy timeout (here cut to 0.2 s) has
    passed; both writes are there."""
    import threading
    import time

    first, second = Store(db_path), Store(db_path)
    second.db.execute("PRAGMA busy_timeout=200")
    held, done = threading.Event(), []

    def slow_writer() -> None:
        with first.batch():  # one transaction held open
            first.save_state("a", full_state(), NOW)
            held.set()
            time.sleep(1.0)  # five busy timeouts

    t = threading.Thread(target=slow_writer)
    t.start()
    assert held.wait(5)
    second.save_state("b", full_state(), NOW)  # raised StateError "database is locked" before
    done.append(True)
    t.join()
    assert done and first.load_state("b") == second.load_state("a") == full_state()
    first.close(), second.close()


def test_a_transaction_begun_inside_another_fails_and_leaves_the_file_to_the_other_writers(db_path, monkeypatch):
    import engine.store

    monkeypatch.setattr(engine.store, "WRITER_WAIT_S", 0.5)
    first, second = Store(db_path), Store(db_path)
    with pytest.raises(StateError, match="within a transaction"):
        with first.tx():
            with first.tx():
                pass
    second.save_state("b", full_state(), NOW)  # the process's writer lock was handed back
    first.save_state("a", full_state(), NOW)
    assert second.load_state("a") == full_state()
    first.close(), second.close()


# ------------------------------------------------------------ failures of the file
def test_a_state_file_from_a_newer_forescale_is_refused(db_path):
    Store(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this forescale "
                                         f"understands \\({SCHEMA_VERSION}\\); upgrade forescale"):
        Store(db_path)


def test_a_file_that_is_not_a_database_is_a_state_error(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="cannot open the state file .*not a database"):
        Store(db_path)


def test_a_full_database_is_a_state_error_and_writes_nothing(sqlite_store, db_path):
    store = sqlite_store
    store.record_forecast("web", forecast(NOW))
    store.save_state("web", full_state(), NOW)
    # SQLITE_FULL, portably: cap the file at the pages it has now
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StateError, match="database or disk is full"):
        store.record_forecast("web", forecast(NOW + minutes(5), n=5000))
    assert not store.db.in_transaction
    assert count(store, "forecasts") == 3  # not one row of the 5000
    # a decision and its state are one transaction: neither lands
    big = replace(full_state(), recommendations=tuple((NOW - timedelta(seconds=i), i) for i in range(20000)))
    with pytest.raises(StateError, match="database or disk is full"):
        store.record_decision(make_decision(NOW), "auto", "intent", NOW, state=big)
    assert count(store, "decisions") == 0
    assert store.load_state("web") == full_state()
    store.close()
    with Store(db_path) as again:  # and the file is intact afterwards
        assert count(again, "forecasts") == 3
        assert again.load_state("web") == full_state()


def test_a_read_only_database_is_a_state_error(sqlite_store):
    store = sqlite_store
    # PRAGMA query_only gives SQLITE_READONLY portably (chmod does not stop root)
    store.save_state("web", full_state(), NOW)
    store.db.execute("PRAGMA query_only=ON")
    with pytest.raises(StateError, match="readonly database"):
        store.save_state("web", ScalingState(current=1), NOW)
    assert store.load_state("web") == full_state()


def test_notify_cursors_are_saved_per_channel_and_read_back_after_reopening(state):
    with open_store(state) as s:
        s.save_notify_cursors({"hook": 3, "mail": 5}, NOW)
        s.save_notify_cursors({"hook": 9}, NOW + minutes(5))
    with open_store(state) as s:
        assert s.notify_cursors() == {"hook": 9, "mail": 5}


def test_anomaly_masks_are_recorded_with_the_decision_and_read_back_after_reopening(state):
    with open_store(state) as s:
        s.record_decision(make_decision(NOW), "observe", "observed", NOW,
                          masks={"web": {T0 - 300: 41.5, T0: 40.0}, "web/memory": {T0: 2.5}})
        # the next cycle's set replaces the series' set; a series not given keeps its own
        s.record_decision(make_decision(NOW + minutes(5)), "observe", "observed", NOW + minutes(5),
                          masks={"web": {T0: 40.0}})
    with open_store(state) as s:
        assert s.anomaly_masks("web") == {T0: 40.0}
        assert s.anomaly_masks("web/memory") == {T0: 2.5}
        assert s.anomaly_masks("other") == {}
        # retention drops a mask with the samples it masked, per series
        s.record_decision(make_decision(NOW + minutes(10)), "observe", "observed", NOW + minutes(10),
                          masks={"web": {T0 - 600: 1.0, T0: 40.0}})
        assert s.prune(samples_before=NOW)["anomaly_masks"] == 1
        assert s.anomaly_masks("web") == {T0: 40.0} and s.anomaly_masks("web/memory") == {T0: 2.5}


def test_a_version_2_file_gains_the_version_3_tables_and_keeps_its_rows(db_path):
    with Store(db_path) as s:
        s.record_decision(make_decision(NOW), "observe", "observed", NOW)
        s.db.execute("DROP TABLE anomaly_masks")
        s.db.execute("DROP TABLE notify_cursors")
        s.db.execute("PRAGMA user_version=2")  # as a file written before version 3
    with Store(db_path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.anomaly_masks("web") == {} and s.notify_cursors() == {} and len(s.decisions("web")) == 1
        from engine.audit import verify

        assert verify(s).ok


def test_a_version_5_file_gains_the_fits_under_way_and_another_process_reads_one_left_behind(db_path):
    with Store(db_path) as s:  # as forescale of schema 5 left it
        s.record_decision(make_decision(NOW), "observe", "observed", NOW)
        s.db.execute("DROP TABLE fits_started")
        s.db.execute("PRAGMA user_version=5")
    with Store(db_path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert s.started_fit("web") is None and len(s.decisions("web")) == 1
        s.fit_started("web", "lstm", "k1", 2, NOW)
        s.fit_started("api", "lstm", "k2", 0, NOW)
        s.fit_started("web", "lstm", "k1", 3, NOW + timedelta(minutes=5))  # the next try replaces it
        s.fit_ended("api")
    with Store(db_path) as s:  # another process: the fit of web was never seen to end
        assert s.started_fit("web") == {"model": "lstm", "key": "k1", "failures": 3,
                                        "started_at": NOW + timedelta(minutes=5), "pid": os.getpid(),
                                        "holder": f"{socket.gethostname()}:{os.getpid()}", "alive": False}
        assert s.started_fit("api") is None


# ------------------------------------------------------------- migration from 1
def test_a_version_1_file_is_migrated_sealing_its_rows_as_found(db_path):
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.executescript(_SCHEMA_V1)  # a file written by forescale 0.1
    d = make_decision(NOW)
    raw.execute("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (d.id, "web", T0, "approve", d.action.value, d.current, d.desired, 0, "rejected", d.to_json(),
                 '{"actor": "bob", "at": "2024-03-01 12:01:00+00:00", "note": "no", "rejected": true}',
                 '{"plan_id": "p1"}', T0))
    raw.execute("INSERT INTO plans VALUES (?,?,?,?,?,?,?)",
                ("p1", "web", d.id, "rejected", json.dumps(plan(status=PlanStatus.REJECTED).to_dict()), T0, T0))
    raw.execute("PRAGMA user_version=1")
    raw.commit()
    raw.close()
    with Store(db_path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        rec = s.decision(d.id)
        assert rec["plan_id"] == "p1" and rec["approval"] is None
        assert rec["approvals"] == [{"decision": "rejected", "identity": None, "channel": None,
                                     "at": "2024-03-01 12:01:00+00:00", "comment": "no", "claimed_actor": "bob",
                                     "plan_id": None, "legacy": True}]
        assert s.plan("p1").status == PlanStatus.REJECTED
        (t,) = s.plan_history("p1")
        assert t.to_status == PlanStatus.REJECTED and "upgraded to schema 2" in t.reason
        from engine.audit import verify

        st = verify(s)
        assert st.ok and st.records == 2, st
    # from now on an edit of the old rows is detected
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE plans SET status='approved'")
    raw.commit()
    raw.close()
    with Store(db_path) as s:
        from engine.audit import verify

        st = verify(s)
        assert not st.ok and "plan p1: row (status approved) differs from audit record 2" in st.reason


def test_calibration_pairs_are_kept_filled_in_and_dropped_past_their_window(db_path):
    from engine.core.types import Series

    with Store(db_path) as s:
        s.record_calibration("web", "mstl", [(300, 1000, 1300, {0.5: 1.0, 0.9: 2.0}),
                                             (600, 1000, 1600, {0.5: 1.5, 0.9: 2.5})])
        s.record_calibration("web", "persistence", [(300, 1000, 1300, {0.5: 9.0})])
        # every model's pair at 1300 gets its actual; a gap leaves 1600 waiting
        assert s.fill_calibration_actuals("web", Series(np.array([1300, 1600]), np.array([3.0, np.nan]), "w")) == 2
        s.record_calibration("web", "mstl", [(300, 1300, 1600, {0.5: 4.0})], drop_before=1400)
    with Store(db_path) as s:
        assert s.calibration_pairs("web", "mstl", since=0) == [(600, 1000, 1600, {0.5: 1.5, 0.9: 2.5}, None),
                                                               (300, 1300, 1600, {0.5: 4.0}, None)]
        assert s.calibration_pairs("web", "persistence", since=0) == [(300, 1000, 1300, {0.5: 9.0}, 3.0)]
        assert s.calibration_pairs("web", "mstl", since=1700) == []


def test_pruning_decisions_keeps_each_targets_newest_whatever_its_age(store):
    """``retention: {decisions: 1m}`` after a daemon was down a while: the
    first pass deleted every target's last decision, which the clock check,
    the fit back-off and a restart read."""
    for k in range(3):
        for t in ("web", "db"):
            store.record_decision(make_decision(NOW + minutes(5 * k), target=t), "dry-run", "dry-run",
                                  NOW + minutes(5 * k))
    gone = store.prune(decisions_before=NOW + timedelta(days=30))
    assert gone["decisions"] == 4
    assert [r["at"] for r in store.decisions("web")] == [isoformat(NOW + minutes(10))]
    assert [r["at"] for r in store.decisions("db")] == [isoformat(NOW + minutes(10))]
