"""Several resources per target (policies/resources.py and the pipeline's
per-resource steps): the decision sizes for the resource that needs the
most and names it; one resource without data holds; the planner plans on
the per-step maximum in the first resource's units.

Unless a case says otherwise: cpu has capacity_per_replica 10, memory 4
(GiB per replica), both at target utilization 0.5; lead 10 min, hold 5
min, sizing from q0.9 (= point x 1.2), forecast points every 5 min.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine.core.types import Forecast, Observation, ScalingState
from policies import PolicyConfig, decide
from policies import planner as P
from policies.resources import Signal, equivalent, resource_policy

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
T0 = int(NOW.timestamp())


def forecast(point, *, model="seasonal_naive") -> Forecast:
    pt = np.asarray(point, dtype=float)
    return Forecast(made_at=NOW, timestamps=T0 + 300 * np.arange(1, len(pt) + 1), point=pt,
                    quantiles={0.9: pt * 1.2}, model=model)


CPU = PolicyConfig(capacity_per_replica=10.0, target_utilization=0.5)
MEM = resource_policy(CPU, capacity_per_replica=4.0)


def state(current=10, cpu=50.0) -> ScalingState:
    return ScalingState(current=current, observation=Observation(cpu, NOW))


def mem(point, observed=20.0, **kw) -> Signal:
    return Signal("memory", forecast(point), Observation(observed, NOW), config=MEM, **kw)


def test_the_size_follows_the_resource_that_needs_more_and_the_steps_name_it():
    # cpu window max q0.9 = 70 x 1.2 = 84 -> ceil(84 / 5) = 17; memory
    # 40 x 1.2 = 48 GiB -> ceil(48 / (4 x 0.5)) = 24: memory sets the size
    d = decide(forecast([40, 60, 70, 30]), state(), CPU, NOW, target="web", resource="cpu",
               resources=[mem([30, 35, 40, 20])])
    assert (d.recommendation, d.desired) == (24, 20)  # the HPA up rate limit: max(2 x 10, 10 + 4)
    res = d.step("resources")
    assert (res.value, res.reason, res.resource) == (24, "ResourceMax", "memory")
    assert "sized for memory" in res.message and "cpu 17" in res.message and "memory 24" in res.message
    caps = [s for s in d.steps if s.name == "capacity"]
    assert [(s.resource, s.value) for s in caps] == [("cpu", 17), ("memory", 24)]
    assert all(s.message.startswith(f"{s.resource}: ") for s in caps)
    assert d.extra["resource"] == "memory" and d.extra["resources"] == {"cpu": 17, "memory": 24}
    # the audit record (the serialized decision) carries it too
    rec = json.loads(d.to_json())
    assert {"name": "resources", "resource": "memory"}.items() <= rec["steps"][next(
        i for i, s in enumerate(rec["steps"]) if s["name"] == "resources")].items()

    # memory falls: cpu sets it
    d = decide(forecast([40, 60, 70, 30]), state(), CPU, NOW, resource="cpu", resources=[mem([5, 8, 9, 5])])
    assert d.extra["resource"] == "cpu" and d.recommendation == 17


def test_one_signal_records_no_resource_and_no_resources_step():
    d = decide(forecast([40, 60, 70, 30]), state(), CPU, NOW, target="web")
    assert d.step("resources") is None and "resource" not in d.extra
    assert all(s.resource is None and "resource" not in s.to_dict() for s in d.steps)


@pytest.mark.parametrize("broken, code", [
    (dict(forecast=None, forecast_error="ForecastError: fit failed"), "NoForecast"),
    (dict(observation=None), "MissingObservation"),
])
def test_a_resource_without_data_holds_instead_of_scaling_down(broken, code):
    # cpu alone would scale 10 -> 4 (window 20 x 1.2 = 24 -> ceil(24 / 5) = 5,
    # observed 15 -> 3); memory has no forecast (or no observation): it is
    # sized reactively on its own (20 GiB / 2 = 10) or held, and nothing scales down
    sig = Signal("memory", forecast([5, 5, 5]), Observation(20.0, NOW), config=MEM)
    fields = {"forecast": sig.forecast, "observation": sig.observation, "forecast_error": None, **broken}
    sig = Signal("memory", fields["forecast"], fields["observation"], fields["forecast_error"], config=MEM)
    d = decide(forecast([20, 20, 20, 20]), state(cpu=15.0), CPU, NOW, resource="cpu", resources=[sig])
    assert d.fallback and d.desired == 10
    data = [s for s in d.steps if s.name == "data"]
    assert [(s.resource, s.reason) for s in data] == [("cpu", "DataOK"), ("memory", code)]
    assert data[1].message.startswith("memory: fallback to reactive, no scale-down")
    # cpu still sized from its forecast
    assert [s.resource for s in d.steps if s.name == "capacity"] == ["cpu"]
    assert d.step("partial_data") is not None or d.recommendation >= 10


def test_a_failed_resource_that_observes_a_spike_still_scales_up_reactively():
    sig = Signal("memory", None, Observation(60.0, NOW), "ForecastError: fit failed", config=MEM)
    d = decide(forecast([20, 20, 20, 20]), state(cpu=15.0), CPU, NOW, resource="cpu", resources=[sig])
    # memory's HPA rule: 60 / (10 x 4 x 0.5) = 3.0 -> ceil(60 / 2) = 30
    assert d.extra["resource"] == "memory" and d.recommendation == 30 and d.desired == 20


def test_ladder_resources_size_on_their_own_rung_capacities():
    ladder = PolicyConfig(ladder=[{"name": "s", "capacity": 2}, {"name": "m", "capacity": 4},
                                  {"name": "l", "capacity": 8}], target_utilization=1.0,
                          reactive={"enabled": False})
    memory = resource_policy(ladder, rung_capacity=[4, 8, 16])
    # cpu 3 -> rung 1 (m); memory 9 GiB -> rung 2 (l, 16 GiB)
    d = decide(forecast([2.5, 2.5, 2.5, 2.5]), ScalingState(current=1, observation=Observation(2, NOW)),
               ladder, NOW, resource="cpu",
               resources=[Signal("memory", forecast([7.5] * 4), Observation(7, NOW), config=memory)])
    assert d.extra["resources"] == {"cpu": 1, "memory": 2} and d.desired == 2 and d.capacity_label == "l"
    with pytest.raises(ValueError, match="rung_capacity has 2 values; the ladder has 3"):
        resource_policy(ladder, rung_capacity=[4, 8])
    with pytest.raises(ValueError, match="give rung_capacity"):
        resource_policy(ladder, capacity_per_replica=4)


def test_the_equivalent_map_keeps_which_level_suffices():
    a = resource_policy(PolicyConfig(ladder=[{"name": "s", "capacity": 2}, {"name": "m", "capacity": 4},
                                             {"name": "l", "capacity": 8}]), rung_capacity=[3, 12, 13])
    p = PolicyConfig(ladder=[{"name": "s", "capacity": 2}, {"name": "m", "capacity": 4},
                             {"name": "l", "capacity": 8}])
    v = np.linspace(0, 20, 401)
    eq = equivalent(v, a, p)
    assert np.all(np.diff(eq) >= 0)
    for own, prim in zip([3, 12, 13], [2, 4, 8]):
        assert np.array_equal(v <= own + 1e-12, eq <= prim + 1e-12)
    assert equivalent(np.array([8.0]), MEM, CPU)[0] == pytest.approx(20.0)  # 2 replicas of memory = 2 of cpu


def plan_config(**kw) -> PolicyConfig:
    return PolicyConfig(kind="plan", capacity_per_replica=10.0, lead_time="25m",
                        reactive={"enabled": False},
                        plan={"horizon": "3h", "change_cost": 1.0, "min_change_interval": 0, "min_lifetime": 0,
                              "headroom_cap": None, "calibrate": False, "slo": {"saturated_fraction": 0.005}}, **kw)


def plan_forecast(point) -> Forecast:
    pt = np.asarray(point, dtype=float)
    qs = {0.5: pt, 0.8: pt * 1.1, 0.9: pt * 1.15, 0.95: pt * 1.2, 0.99: pt * 1.3}
    return Forecast(made_at=NOW, timestamps=T0 + 300 * np.arange(1, pt.size + 1), point=pt, quantiles=qs,
                    model="m")


def test_the_planner_plans_on_the_resource_that_needs_more_at_each_step():
    cpu_cfg = plan_config()
    mem_cfg = resource_policy(cpu_cfg, capacity_per_replica=4.0)
    n = 36
    t = np.arange(n)
    cpu = 40 + 80 * (t >= 18)  # cpu rises in the second half
    memory = np.full(n, 24.0)  # memory flat at 24 GiB = 6 replicas' worth
    st = ScalingState(current=6, observation=Observation(40, NOW))
    d = decide(plan_forecast(cpu), st, cpu_cfg, NOW, resource="cpu",
               resources=[Signal("memory", plan_forecast(memory), Observation(24, NOW), config=mem_cfg)])
    # in cpu's units memory is 24 x 10 / 4 = 60: it leads the first half,
    # cpu (120) the second; the schedule follows the larger at every step
    alone = [P.plan(plan_forecast(np.maximum(cpu, 60.0)), st, cpu_cfg, NOW, timedelta(minutes=25))]
    assert [s.capacity for s in d.schedule.steps] == [s.capacity for s in alone[0].schedule.steps]
    assert d.desired == alone[0].desired
    res = d.step("resources")
    assert res.resource == "memory" and "memory leads the first planned step" in res.message
    assert [s.resource for s in d.steps if s.name == "data"] == ["cpu", "memory"]
    caps = [s.capacity for s in d.schedule.planned]
    assert max(caps) > min(caps)  # it planned the rise cpu brings

    # memory's forecast failed: the planner is not used; nothing scales down
    d = decide(plan_forecast(cpu), ScalingState(current=12, observation=Observation(40, NOW)), cpu_cfg, NOW,
               resource="cpu", resources=[Signal("memory", None, Observation(24, NOW), "boom", config=mem_cfg)])
    assert d.fallback and d.schedule is None and d.desired == 12


def test_an_event_step_names_each_resource_once():
    """A declared event raises every resource's window; its step read
    "cpu: cpu: event 'promo' ..." (tagged twice on its way through)."""
    promo = {"events": [{"name": "promo", "start": "2024-03-01T11:00:00Z", "duration": "3h", "uplift": 1.5}]}
    cpu = CPU.model_copy(update={"calendar": PolicyConfig(capacity_per_replica=10.0, calendar=promo).calendar})
    memory = resource_policy(cpu, capacity_per_replica=4.0)
    d = decide(forecast([40, 60, 70, 30]), state(), cpu, NOW, target="web", resource="cpu",
               resources=[Signal("memory", forecast([30, 35, 40, 20]), Observation(20.0, NOW), config=memory)])
    events = [s for s in d.steps if s.name == "event"]
    assert [(s.resource, s.reason) for s in events] == [("cpu", "EventUplift"), ("memory", "EventUplift")]
    for s in events:
        assert s.message.startswith(f"{s.resource}: event 'promo'"), s.message
