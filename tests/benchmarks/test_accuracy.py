"""The accuracy benchmark's choices and tables, on a stored run made up here."""
from __future__ import annotations

from benchmarks import accuracy as A


def _horizons(pinball: float, miss: float) -> dict:
    """Every horizon scored alike: ``pinball``, MASE 1, each level covered
    ``miss`` below nominal."""
    return {str(m): {"mase": 1.0, "pinball": pinball, "coverage": {str(q): q - miss for q in A.LEVELS}}
            for m in A.HORIZONS_MIN}


def _doc() -> dict:
    models = {
        "holt_winters": (1.0, 0.0), "mstl": (1.2, 0.0), "seasonal_naive": (1.5, 0.0),
        "lstm_global": (0.800, 0.06),        # the lowest pinball, levels 0.06 off
        "lstm_global+cal7d": (0.805, 0.02),  # within 1 %, the best levels of those: the choice
        "lstm_global+cal": (0.830, 0.00),    # perfect levels, but 3.75 % worse
        "lstm_global_pooled": (0.900, 0.05),
    }
    results = {name: {m: {"horizons": _horizons(p, miss), "origins": 73} for m, (p, miss) in models.items()}
               for name in ("a.csv", "b.csv", "held.csv")}
    # the held-out trace would choose otherwise: it must not count
    results["held.csv"]["lstm_global+cal"]["horizons"] = _horizons(0.1, 0.0)
    return {"results": results, "held_out": ["held.csv"], "command": "python -m benchmarks.accuracy x",
            "args": {"origins_every_min": 60}}


def test_the_calibration_variant_is_chosen_on_the_tuning_traces_by_pinball_then_levels():
    choice, pinball = A.calibration_choice(_doc())
    assert choice == "lstm_global+cal7d"
    assert pinball["lstm_global"] < pinball["lstm_global+cal7d"] < pinball["lstm_global+cal"]
    notes = A.calibration_notes(_doc())
    assert "`lstm_global+cal7d`" in notes and "| held* |" in notes and "| a |" in notes


def test_the_docs_tables_pair_the_model_with_the_best_baseline_per_part():
    out = A.docs_tables(_doc(), "lstm_global")
    held, tuning = out.split("tuning (2 traces)")
    assert held.startswith("held-out (1 traces), `lstm_global`:")
    row = next(line for line in tuning.splitlines() if line.startswith("| 10 min |"))
    # pinball 0.8 against Holt-Winters' 1.0 (the lowest baseline), every level 0.06 under nominal
    assert "| 0.800 | 1.000 (holt_winters) | 0.800 |" in row
    assert row.endswith("| 0.44 / 0.74 / 0.84 / 0.89 / 0.93 |")


def test_auto_lead_bands_end_at_the_scored_horizons_and_the_global_model_comes_first():
    from types import SimpleNamespace

    import forecasters

    args = SimpleNamespace(model="m.pt", auto_eval_days=3.0, auto_margin=0.0)
    five = SimpleNamespace(H=288, S=288, hsteps=[2, 6, 12, 72, 288])   # 5-minute steps
    thirty = SimpleNamespace(H=48, S=48, hsteps=[1, 1, 2, 12, 48])     # nyc_taxi's 30-minute steps
    p = A.auto_params("auto_lead", five, args)
    assert p["lead_bands"] == [2, 6, 12, 72] and p["horizon_steps"] == 288 and p["eval_window"] == 3 * 288
    assert p["candidates"][0] == {"name": "lstm_global", "params": {"checkpoint": "m.pt", "device": "cpu"}}
    assert A.auto_params("auto_lead", thirty, args)["lead_bands"] == [1, 2, 12]
    assert "lead_bands" not in A.auto_params("auto", five, args)
    bands = forecasters.registry.get("auto").Params.model_validate(p).bands
    assert bands == ((1, 2), (3, 6), (7, 12), (13, 72), (73, 288))


def test_adaptive_calibration_variants_are_named_per_window_and_gamma():
    from types import SimpleNamespace

    args = SimpleNamespace(cal_window_days="3,7", cal_adaptive="0.005,0.02", cal_adaptive_lead="0.05",
                           cal_min_samples=24)
    assert A.cal_suffixes(args) == {
        "+cal": (3.0, 0.0, False), "+cal-aci0.005": (3.0, 0.005, False), "+cal-aci0.02": (3.0, 0.02, False),
        "+cal-acil0.05": (3.0, 0.05, True), "+cal7d": (7.0, 0.0, False), "+cal7d-aci0.005": (7.0, 0.005, False),
        "+cal7d-aci0.02": (7.0, 0.02, False), "+cal7d-acil0.05": (7.0, 0.05, True)}
    cbs = A.calibrators(SimpleNamespace(step=300), args)
    c = cbs["+cal7d-aci0.02"]
    assert (c.window_s, c.adaptive, c.in_flight) == (7 * 86400, 0.02, False)
    assert cbs["+cal"].adaptive == 0.0 and cbs["+cal-acil0.05"].in_flight
    results = {"a.csv": {x: {"horizons": {}} for x in ("mstl", "holt_winters+cal7d-aci0.02", "holt_winters")}}
    assert A.model_names(results) == ["holt_winters", "holt_winters+cal7d-aci0.02", "mstl"]
    # the choice among a model's variants: within 1 % of the lowest pinball, the best levels
    doc = _doc()
    for r in doc["results"].values():
        r["lstm_global+cal7d-aci0.02"] = {"horizons": _horizons(0.806, 0.01), "origins": 73}
    variants = ["lstm_global", "lstm_global+cal7d", "lstm_global+cal7d-aci0.02"]
    assert A.calibration_choice(doc, variants)[0] == "lstm_global+cal7d-aci0.02"
    assert A.calibration_choice(doc)[0] == "lstm_global+cal7d"  # the default variants as they were


def test_the_planners_default_forecaster_is_scored_as_blend_sp_hw():
    from engine.config import PLAN_FORECASTER

    m = A.make("blend_sp_hw")
    assert m.name == PLAN_FORECASTER["name"]
    assert [c.model_dump(exclude_defaults=True) for c in m.params.members] == PLAN_FORECASTER["params"]["members"]
    assert list(m.params.weights.values()) == [0.5]
    assert "blend_sp_hw" in A.MODELS
