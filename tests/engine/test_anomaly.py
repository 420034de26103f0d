"""Anomalies (engine/anomaly.py): an incident injected into a real trace is
flagged in the decisions, counted on /metrics, shown by ``forescale
decisions --json``, and kept out of training, so the model forecasts the
next day as one trained on the clean trace does."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from engine.config import parse_config
from engine.core.types import ScalingState, Series
from engine.core.units import from_epoch, parse_time
from engine.cycle import TargetRunner
from engine.sources.csv import read_csv
from tests.support import TRACES
from tests.support.replay import incident_trace

def runner(anomalies: dict | None, forecaster: str = "seasonal_persistence") -> TargetRunner:
    t = parse_config({"targets": [{
        "name": "t", "interval": "5m", "source": {"type": "csv", "path": "x.csv"},
        "forecaster": {"name": forecaster, "history": "14d"},
        "policy": {"capacity_per_replica": 10}, **({"anomalies": anomalies} if anomalies is not None else {})}]})
    return TargetRunner(t.targets[0])


def replay(r: TargetRunner, ts, values, start: int, stop: int, refit_last: bool = True):
    """Step ``r`` over ``[start, stop)``; the last cycle refits the model.
    Returns the decisions and the refit model's forecast of the next day."""
    state = ScalingState(current=5)
    decisions = []
    for i in range(start, stop):
        if refit_last and i == stop - 1:
            r.last_fit = None
        out = r.step(Series.view(ts[: i + 1], values[: i + 1]), state, from_epoch(ts[i]))
        decisions.append(out.decision)
    assert r.forecaster is not None
    return decisions, r.forecaster.predict(from_epoch(ts[stop - 1]), 300, (0.5,)) if refit_last else None


def test_an_incident_is_flagged_and_kept_out_of_training():
    ts, clean, hit, inside, day = incident_trace()
    start, stop = int(np.searchsorted(ts, day)), int(np.searchsorted(ts, day + 86400))
    r = runner({})
    decisions, masked_fc = replay(r, ts, hit, start, stop)
    flagged = {int(d.at.timestamp()) for d in decisions if "anomaly" in d.extra}
    incident = set(ts[inside].tolist())
    assert flagged == incident  # every sample of the incident, nothing else that day
    d = next(d for d in decisions if "anomaly" in d.extra)
    step = d.steps[1]
    assert d.steps[0].name == "data" and step.name == "anomaly" and step.reason == "AnomalyFlagged"
    assert "excluded from training" in step.message and d.extra["anomaly"]["score"] > 3
    assert d.extra["anomaly"]["observed"] == pytest.approx(hit[ts == int(d.at.timestamp())][0])
    # the policy still sized from what was observed: the reactive rule saw the spike
    assert f"observation {d.extra['anomaly']['observed']:.4g}" in d.step("reactive").message

    # the next day, forecast by the model refit at the end of the incident
    # day: on the clean trace, on the one with the incident (no detection)
    end = stop - 1
    _, clean_fc = replay(runner({}), ts, clean, end, stop)
    _, taught_fc = replay(runner(None), ts, hit, end, stop)
    assert masked_fc is not None and clean_fc is not None and taught_fc is not None
    nxt = (clean_fc.timestamps >= day + 86400 + 14 * 3600) & (clean_fc.timestamps < day + 86400 + 16 * 3600)
    assert nxt.sum() >= 20  # the forecast reaches the next day's 14:00-16:00
    err_masked = np.mean(np.abs(masked_fc.point - clean_fc.point))
    err_taught = np.mean(np.abs(taught_fc.point - clean_fc.point))
    # trained with the incident, the model expects it again tomorrow at 14:00
    assert np.mean(taught_fc.point[nxt]) > 1.8 * np.mean(clean_fc.point[nxt])
    assert err_masked < 0.05 * err_taught
    assert np.mean(np.abs(masked_fc.point[nxt] - clean_fc.point[nxt])) < 0.05 * np.mean(clean_fc.point[nxt])


def test_the_robust_zscore_method_flags_the_incident_too():
    ts, clean, hit, inside, day = incident_trace()
    start, stop = int(np.searchsorted(ts, day)), int(np.searchsorted(ts, day + 18 * 3600))
    decisions, _ = replay(runner({"method": "zscore", "z": 8}), ts, hit, start, stop, refit_last=False)
    flagged = {int(d.at.timestamp()) for d in decisions if "anomaly" in d.extra}
    incident = set(ts[inside].tolist())
    assert len(flagged & incident) >= 0.9 * len(incident) and len(flagged - incident) <= 3
    assert all(d.extra["anomaly"]["method"] == "zscore" for d in decisions if "anomaly" in d.extra)


def test_a_lasting_change_is_a_level_shift_released_to_the_model():
    ts, clean, _, _, day = incident_trace()
    shifted = clean.copy()
    shifted[ts >= day + 14 * 3600] *= 3  # from 14:00 on, for good
    start, stop = int(np.searchsorted(ts, day + 12 * 3600)), int(np.searchsorted(ts, day + 18 * 3600))
    r = runner({"max_duration": "1h"})
    decisions, _ = replay(r, ts, shifted, start, stop, refit_last=False)
    flags = [d for d in decisions if "anomaly" in d.extra]
    (release,) = [d for d in flags if d.extra["anomaly"].get("level_shift")]
    assert release.steps[1].reason == "AnomalyLevelShift" and "level shift" in release.steps[1].message
    # an hour of flags, then the change is the new normal: nothing masked
    assert len(flags) == 12 + 1 and not r.anomalies.masked
    assert release.at == from_epoch(day + 14 * 3600 + 12 * 300)


def test_the_flag_is_in_decisions_json_and_on_metrics(tmp_path):
    """Through the daemon's own path (tests/support/replay): the decision
    log and /metrics of a run over the trace with the incident."""
    from engine.cli import main
    from tests.support.replay import run_replay, target

    ts, _, hit, inside, day = incident_trace()
    trace = tmp_path / "incident.csv"
    end = int(np.searchsorted(ts, day + 15 * 3600))  # the replay ends inside the incident
    trace.write_text("timestamp,value\n" + "".join(f"{int(t)},{v}\n" for t, v in zip(ts[:end], hit[:end])))
    t = target("ec2", trace, anomalies={})
    rep = run_replay(tmp_path / "run", [t], cycles=24, start_before_end=timedelta(hours=2))
    sample = rep.metrics.registry.get_sample_value
    decided = {int(r.now.timestamp()) for r in rep.results}
    n = len(decided & set(ts[inside].tolist()))
    assert n >= 10
    assert sample("forescale_anomalies_total", {"target": "ec2", "resource": ""}) == n
    assert sample("forescale_anomaly_score", {"target": "ec2", "resource": ""}) > 3
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["decisions", "--config", str(tmp_path / "run" / "replay.yaml"), "--json", "--limit", "100"]) == 0
    recs = json.loads(buf.getvalue())
    flagged = [r for r in recs if "anomaly" in r["extra"]]
    assert len(flagged) == n
    assert all(r["steps"][1]["reason"] == "AnomalyFlagged" for r in flagged)
    assert {r["extra"]["anomaly"]["at"][:16] for r in flagged} <= {
        from_epoch(x).isoformat()[:16] for x in ts[inside]}


def test_a_forecast_without_the_band_flags_nothing():
    from engine.anomaly import AnomalyConfig, AnomalyDetector
    from engine.core.types import Forecast

    det = AnomalyDetector(AnomalyConfig(), timedelta(minutes=5), timedelta(days=1))
    fc = Forecast(from_epoch(0), np.array([300]), np.array([10.0]), {0.9: np.array([12.0])}, "m")
    assert det.observe(Series(np.array([300]), np.array([1000.0])), fc) == (None, None)
    banded = Forecast(from_epoch(0), np.array([600]), np.array([10.0]), {0.99: np.array([12.0])}, "m")
    anomaly, step = det.observe(Series(np.array([300, 600]), np.array([1000.0, 17.0])), banded)
    assert anomaly is not None and anomaly.score == pytest.approx(3.5) and step.reason == "AnomalyFlagged"
    assert det.mask(Series(np.array([300, 600]), np.array([1000.0, 17.0]))).values.tolist() == [1000.0, 10.0]


def test_the_backtest_replays_the_targets_anomalies_section(tmp_path, capsys):
    from engine.cli import main

    ts, _, hit, inside, _ = incident_trace()
    trace = tmp_path / "incident.csv"
    trace.write_text("timestamp,value\n" + "".join(f"{int(t)},{v}\n" for t, v in zip(ts, hit)))

    def backtest(extra: str) -> dict:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("targets:\n  - name: t\n    source: {type: csv, path: x.csv}\n"
                       "    policy: {capacity_per_replica: 5}\n" + extra)
        assert main(["backtest", str(trace), "--quiet", "--json", "--config", str(cfg)]) == 0
        return json.loads(capsys.readouterr().out)["policies"]["predictive"]

    plain, flagged = backtest(""), backtest("    anomalies: {factor: 3}\n")
    assert "anomalies" not in plain
    # the incident's two hours, and at most a few ordinary samples in 12 days
    assert int(inside.sum()) <= flagged["anomalies"] <= int(inside.sum()) + 3
    assert main(["backtest", str(trace), "--quiet", "--config", str(tmp_path / "c.yaml")]) == 0
    assert f"anomalies flagged and kept out of training: {flagged['anomalies']}" in capsys.readouterr().out


def _incident_target(tmp_path, ts, hit, day, forecaster: str):
    """A config of one observe-mode target over the incident trace (to 17:00
    of its day), refitted every cycle, anomalies on; its state in tmp_path."""
    import yaml

    trace = tmp_path / "incident.csv"
    end = int(np.searchsorted(ts, day + 17 * 3600))
    trace.write_text("timestamp,value\n" + "".join(f"{int(t)},{v}\n" for t, v in zip(ts[:end], hit[:end])))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "state.db"), "targets": [{
        "name": "t", "interval": "5m", "mode": "observe", "source": {"type": "csv", "path": str(trace)},
        "forecaster": {"name": forecaster, "history": "14d", "refit_every": "5m"},
        "policy": {"capacity_per_replica": 10}, "anomalies": {}}]}))
    return cfg


def test_the_masks_survive_a_restart_so_the_refit_after_it_still_masks_the_incident(tmp_path):
    """A daemon flags an incident, stops, and a new one starts on the same
    state file: its first cycle refits on the history as fetched again, with
    the incident masked as before; with the masks gone (what a restart did
    before they were stored) the refit learns the incident as tomorrow's."""
    from engine.store import Store
    from tests.support.live import Platform, build_live

    ts, clean, hit, inside, day = incident_trace()
    cfg = _incident_target(tmp_path, ts, hit, day, "seasonal_persistence")
    before = [int(t) for t in ts if day + 13 * 3600 <= t <= day + 16 * 3600 + 1800]
    with Store(tmp_path / "state.db") as store:
        live = build_live(cfg, store, Platform(5))
        flagged = {t for t in before if "anomaly" in live.run(from_epoch(t)).decision.extra}
    assert flagged == set(ts[inside].tolist())

    import shutil

    shutil.copy(tmp_path / "state.db", tmp_path / "forgot.db")
    with Store(tmp_path / "forgot.db") as s:
        s.db.execute("DELETE FROM anomaly_masks")

    def after_restart(forget: bool):
        path = tmp_path / ("forgot.db" if forget else "state.db")
        with Store(path) as store:  # the restarted daemon: a new store and target
            live = build_live(cfg, store, Platform(5))
            now = from_epoch(before[-1] + 300)
            res = live.run(now)
            assert res.error is None and "anomaly" not in res.decision.extra, res.error
            return live.runner.forecaster.predict(now, 300, (0.5,))

    kept, forgot = after_restart(False), after_restart(True)
    nxt = (kept.timestamps >= day + 86400 + 14 * 3600) & (kept.timestamps < day + 86400 + 16 * 3600)
    assert nxt.sum() >= 20
    tomorrow = clean[(ts >= day + 14 * 3600) & (ts < day + 16 * 3600)].mean()  # the clean day's level
    assert np.mean(forgot.point[nxt]) > 1.8 * tomorrow  # the incident taught as a season
    assert np.mean(kept.point[nxt]) < 1.2 * tomorrow


def test_every_resource_has_its_own_detector_and_its_steps_and_metric_name_it(tmp_path):
    """A target sized by two real CPU traces of the same two weeks (NAB),
    the incident injected into the further resource only: that resource's
    detector flags every sample of it, the step after its data step names
    it, the counter counts it under its name and the masks are kept under
    its series; the target's own signal is not blamed for it."""
    from engine.store import Store
    from tests.support.replay import run_replay, target

    ts, _, hit, inside, day = incident_trace()
    end = int(np.searchsorted(ts, day + 16 * 3600 + 1800))
    web = tmp_path / "web.csv"
    web.write_text("timestamp,value\n" + "".join(f"{int(t)},{v}\n" for t, v in zip(ts[:end], hit[:end])))
    own = read_csv(TRACES / "nab" / "ec2_cpu_utilization_53ea38.csv")
    keep = own.timestamps <= ts[end - 1]
    cpu = tmp_path / "cpu.csv"
    cpu.write_text("timestamp,value\n" + "".join(
        f"{int(t)},{v}\n" for t, v in zip(own.timestamps[keep], own.values[keep])))
    t = target("t", cpu, anomalies={}, resource="cpu", forecaster="seasonal_persistence",
               resources={"web": {"source": {"type": "replay", "path": str(web)}, "capacity_per_replica": 10.0}})
    t["forecaster"]["history"] = "14d"
    rep = run_replay(tmp_path / "run", [t], cycles=42, start_before_end=timedelta(hours=3, minutes=30))
    decisions = [r.decision for r in rep.results]
    assert all(r.ok for r in rep.results)
    on_web = [d for d in decisions if "web" in d.extra.get("resource_anomalies", {})]
    incident = {int(x) for x in ts[inside]}
    at = {int(parse_time(d.extra["resource_anomalies"]["web"]["at"]).timestamp()) for d in on_web}
    assert len(on_web) >= 20 and at <= incident  # the incident's samples the replay saw, nothing else
    for d in on_web:
        i = next(i for i, s in enumerate(d.steps) if s.name == "data" and s.resource == "web")
        step = d.steps[i + 1]
        assert (step.name, step.reason, step.resource) == ("anomaly", "AnomalyFlagged", "web")
        assert step.message.startswith("web: observed")
        assert d.extra["resource_anomalies"]["web"]["resource"] == "web"
    # the target's own signal is not blamed for the other resource's incident
    assert sum("anomaly" in d.extra for d in decisions) <= 1
    sample = rep.metrics.registry.get_sample_value
    assert sample("forescale_anomalies_total", {"target": "t", "resource": "web"}) == len(on_web)
    assert sample("forescale_anomalies_total", {"target": "t", "resource": "cpu"}) == sum(
        "anomaly" in d.extra for d in decisions)
    with Store(tmp_path / "run" / "forescale.db") as s:
        assert set(s.anomaly_masks("t/web")) == at


def test_a_cycle_abandoned_past_its_timeout_never_overwrites_the_newer_cycles_masks(tmp_path):
    """A cycle stuck after deciding (its masks computed) is abandoned and the
    next interval's cycle runs beside it on a fresh LiveTarget, flagging more
    samples of the incident; when the stuck one is released it records
    its decision, but the masks in the store stay the newer cycle's, so a
    restart's refit still masks the incident's newest sample."""
    from engine.store import Store
    from tests.support.live import Platform, build_live

    ts, clean, hit, inside, day = incident_trace()
    cfg = _incident_target(tmp_path, ts, hit, day, "seasonal_naive")
    incident = [int(t) for t in ts[inside]]
    with Store(tmp_path / "state.db") as store:
        old = build_live(cfg, store, Platform(5))
        for t in [int(t) for t in ts if day + 13 * 3600 <= t < incident[3]]:
            old.run(from_epoch(t))
        stuck = old.begin(from_epoch(incident[3]))
        old.decide(stuck)  # ... and hangs here, past its timeout
        assert "anomaly" in stuck.out.decision.extra
        old.superseded.set()  # what BatchWorker.renew / TargetWorker.renew do
        with Store(tmp_path / "state.db") as own:  # the cycle beside it: its own connection
            new = build_live(cfg, own, Platform(5))
            new.run(from_epoch(incident[4]))  # (a fresh detector has no forecast to judge by yet)
            res = new.run(from_epoch(incident[5]))  # the next interval's, while the stuck one still hangs
            assert "anomaly" in res.decision.extra
            newer = own.anomaly_masks("t")
        assert incident[5] in newer
        late = old.finish(stuck)  # released at last
        assert late.error is None and store.decision(late.decision.id) is not None  # still recorded
        assert store.anomaly_masks("t") == newer
        # a restart masks the newest flagged sample too
        again = build_live(cfg, store, Platform(5))
        assert incident[5] in again.runner.anomalies.masked
