"""Why the planner's realized saturation misses its SLO, per tuning trace.

    nice -n 10 python3 -m benchmarks.planner_slo SETTINGS.json [trace,substrings|-] [OUT.json]

Replays each setting of ``SETTINGS.json`` (as ``benchmarks/planner_tuning.py``
takes them) on the frontier's tuning traces (14 days, lead 30 and 10 min,
the seasonal-persistence forecaster) and, for every scored interval, looks
at the decision made one lead time before it (the one whose capacity
served it): the model's P(saturated) at the first planned step for the
capacity that served (``E_real``), for the plan's own first step
(``E_plan``), for the cheapest level within the priced rate (``E_my``; with
the headroom cap: ``E_myc``), the priced rate, how often the reactive floor
overrode the plan (``floor``), a hard constraint held it (``cons``), the plan
held more than the myopic level (``pl>my``), the median capacity over
demand; and for the saturated intervals which of those set the capacity
(``floor``/``plan``), were held (``held``), had demand above the headroom
cap (``>ceil``) or above the calibrated ``1 - SLO`` quantile (``>qhi``).
``E_real`` far above ``v``: the distribution is wider than what happened
(capacity held by the tail, the cap or calmness); ``v`` far below ``E_real``
with ``floor`` high: the reactive floor holds it.
"""
from __future__ import annotations

import json
import math
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import policies.planner as P  # noqa: E402
from benchmarks.frontier import ForecastCache, load_trace  # noqa: E402
from benchmarks.planner_tuning import tuning_traces  # noqa: E402
from engine.backtest import Scenario, build_forecaster, prepare, run_policy  # noqa: E402
from engine.config import ForecasterConfig  # noqa: E402

REC: dict[int, dict] = {}
_orig = P.plan


def wrapped(forecast, state, config, now, lead_time, **kw):
    dec = _orig(forecast, state, config, now, lead_time, **kw)
    pc = config.plan
    ts = forecast.timestamps
    t_lead = now.timestamp() + lead_time.total_seconds()
    j0 = int(np.flatnonzero(ts >= t_lead)[0])
    idx = np.array([j0])
    taus, q = P.demand_knots(forecast, pc.quantiles, idx)
    point = forecast.point[idx]
    if pc.calibrate and pc.calibration in ("spread", "both") and state.headroom is not None:
        q = P.calibrate(taus, q, point, float(state.headroom), config.slo_rate, ref=0)
    levels, caps, price = P.level_values(config)
    p_sat, _ = P.risk_tables(caps, taus, q)
    rate = dec.extra.get("plan_rate") or config.slo_rate
    lo = config.bounds[0]
    ok = np.flatnonzero(p_sat[:, 0] <= rate)
    myopic = int(levels[ok[0]]) if ok.size else int(levels[-1])
    if pc.headroom_cap is not None:
        ceil_lvl = np.flatnonzero(caps >= point[0] * (1 + pc.headroom_cap))
        myopic_c = min(myopic, int(levels[ceil_lvl[0]]) if ceil_lvl.size else myopic)
    else:
        myopic_c = myopic
    planv = int(dec.step("plan").value)
    codes = [s.reason for s in dec.steps if s.changed]
    REC[int(now.timestamp())] = dict(plan=planv, desired=dec.desired, myopic=myopic, myopic_c=myopic_c,
                                     rate=rate, codes=codes, psat=p_sat[:, 0].copy(), lo=lo,
                                     q_hi=float(P.upper_quantile(taus, q, 1 - config.slo_rate)[0]),
                                     ceiling=float(point[0] * (1 + pc.headroom_cap)) if pc.headroom_cap else math.inf)
    return dec


def diag(raw, name, settings, lead, cache):
    REC.clear()
    prep = prepare(raw, Scenario(lead_time=timedelta(minutes=lead)), trace=name)
    fc = ForecasterConfig(name="seasonal_persistence")
    model = cache.wrap(build_forecaster(prep, settings, fc))
    run = run_policy(prep, "policy", json.loads(json.dumps(settings)), fc, model=model)
    d = np.nan_to_num(prep.series.values)
    ts = prep.series.timestamps
    k = prep.lead_steps
    cpr = prep.capacity_per_replica
    s = prep.scored.copy()
    s[:k] = False
    inserv = run.in_service
    sat = d > inserv * cpr + 1e-12
    n = int(s.sum())
    agg = dict(v=float(sat[s].mean()), n=n)
    keys = {"floor": 0, "constraint": 0, "budget": 0, "plan_eq_myopic": 0, "plan_above_myopic": 0,
            "plan_below_myopic": 0}
    e_real = e_plan = e_my = e_myc = rate_sum = 0.0
    viol = {"floor_set": 0, "plan_set": 0, "above_ceiling": 0, "above_qhi": 0, "held": 0, "nodec": 0,
            "plan_below_myopic": 0}
    ratio_cap = []
    for t in np.flatnonzero(s):
        r = REC.get(int(ts[t - k]))
        if r is None:
            if sat[t]:
                viol["nodec"] += 1
            continue
        lo = r["lo"]
        ps = r["psat"]
        cap_in = int(inserv[t])
        e_real += ps[min(max(cap_in - lo, 0), ps.size - 1)]
        e_plan += ps[r["plan"] - lo]
        e_my += ps[r["myopic"] - lo]
        e_myc += ps[r["myopic_c"] - lo]
        rate_sum += r["rate"]
        c = r["codes"]
        if "ReactiveOverride" in c:
            keys["floor"] += 1
        if any(x in c for x in ("MinLifetime", "ChangeSpacing", "ScaleInWindowClosed")):
            keys["constraint"] += 1
        if "ChangeBudget" in c:
            keys["budget"] += 1
        if r["plan"] == r["myopic_c"]:
            keys["plan_eq_myopic"] += 1
        elif r["plan"] > r["myopic_c"]:
            keys["plan_above_myopic"] += 1
        else:
            keys["plan_below_myopic"] += 1
        if d[t] > 0:
            ratio_cap.append(cap_in * cpr / d[t])
        if sat[t]:
            if "ReactiveOverride" in c:
                viol["floor_set"] += 1
            else:
                viol["plan_set"] += 1
            if any(x in c for x in ("MinLifetime", "ChangeSpacing", "ChangeBudget")):
                viol["held"] += 1
            if r["plan"] < r["myopic_c"]:
                viol["plan_below_myopic"] += 1
            if d[t] > r["ceiling"]:
                viol["above_ceiling"] += 1
            if d[t] > r["q_hi"]:
                viol["above_qhi"] += 1
    m = max(1, n)
    agg.update(E_real=e_real / m, E_plan=e_plan / m, E_myopic=e_my / m, E_myopic_cap=e_myc / m,
               rate=rate_sum / m, **{k2: v / m for k2, v in keys.items()},
               viol=viol, cap_over_demand_med=float(np.median(ratio_cap)), cost=run.metrics["cost_vs_oracle"],
               actions=run.metrics["actions"])
    return agg


def main():
    P.plan = wrapped  # the pipeline calls the planner through its module: record every decision
    settings = json.loads(Path(sys.argv[1]).read_text())
    only = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    out = {}
    for p, name in tuning_traces(only):
        raw = load_trace(p, 14)
        cache = ForecastCache()
        for lead in (30, 10):
            for sname, st in settings.items():
                a = diag(raw, name, st, lead, cache)
                out[f"{sname}|{lead}|{name}"] = a
                vi = a["viol"]
                print(f"{sname:<5} L{lead} {name[:34]:<34} v {a['v']:.4f} E_real {a['E_real']:.4f} E_plan "
                      f"{a['E_plan']:.4f} E_my {a['E_myopic']:.4f} E_myc {a['E_myopic_cap']:.4f} rate "
                      f"{a['rate']:.4f} floor {a['floor']:.2f} cons {a['constraint']:.2f} "
                      f"pl>my {a['plan_above_myopic']:.2f} pl<my {a['plan_below_myopic']:.2f} "
                      f"cap/d {a['cap_over_demand_med']:.2f} c {a['cost']:.3f} | viol n={round(a['v']*a['n'])} "
                      f"floor {vi['floor_set']} plan {vi['plan_set']} held {vi['held']} >ceil {vi['above_ceiling']} "
                      f">qhi {vi['above_qhi']} pl<my {vi['plan_below_myopic']}", flush=True)
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
