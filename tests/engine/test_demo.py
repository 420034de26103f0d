"""``forescale demo`` as a user reads it: the comparison at the end shows
the policy making no more changes than the HPA, better on at least one
measure and worse on none; a second run starts from a clean state."""

from __future__ import annotations

import json

from engine.demo import run_demo

MEASURES = ("violation_fraction", "unserved_fraction", "cost_vs_oracle", "actions")


def test_demo_policy_is_calmer_than_the_hpa_and_worse_on_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(out=out, days=0.5, verbose=False) == 0
    text = capsys.readouterr().out
    table = text[text.index("backtest over the whole trace"):]
    rows = {ln.split()[0]: ln.split()[1:] for ln in table.splitlines()[2:5]}
    # the comparison lines start with the policy names
    assert list(rows) == ["oracle", "reactive", "predictive"]
    doc = json.loads((out / "backtest.json").read_text())
    p, r = doc["policies"]["predictive"], doc["policies"]["reactive"]
    assert p["actions"] <= r["actions"]
    assert all(p[m] <= r[m] + 1e-12 for m in MEASURES), {m: (p[m], r[m]) for m in MEASURES}
    assert any(p[m] < r[m] - 1e-9 for m in MEASURES)
    assert float(rows["predictive"][3]) == p["actions"] and float(rows["reactive"][3]) == r["actions"]
    assert "predictive against reactive:" in text and "HIGHER" not in text


def test_a_second_demo_run_starts_clean(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "forescale.db.models").mkdir(parents=True)  # checkpoints left by an earlier run
    (out / "forescale.db.models" / "stale.pt").write_text("x")
    (out / "forescale.db").write_text("not a database")
    assert run_demo(out=out, days=0.1, verbose=False) == 0
    assert not (out / "forescale.db.models" / "stale.pt").exists()
    cap = capsys.readouterr()
    assert "live replay:" in cap.out
    # quiet, and stderr not a terminal: no progress line ("\r  replaying...") in it
    assert "replaying" not in cap.err and "\r" not in cap.err


def test_the_demo_takes_a_second_resource_and_says_which_one_set_the_size(tmp_path, capsys):
    import json

    from tests.support import TRACES

    # an EC2 instance's CPU over the same two weeks as the demo's RDS CPU
    other = TRACES / "nab" / "ec2_cpu_utilization_5f5533.csv"
    out = tmp_path / "demo"
    assert run_demo(out=out, days=0.25, verbose=True, resources={"ec2": other}) == 0
    text = capsys.readouterr().out
    assert "resource ec2 (ec2_cpu_utilization_5f5533.csv" in text
    assert "sized for " in text
    assert "predictive by resource: cpu violations" in text and "; ec2 violations" in text
    report = json.loads((out / "backtest.json").read_text())
    assert set(report["policies"]["predictive"]["resources"]) == {"cpu", "ec2"}
    assert "resources" in (out / "demo.yaml").read_text()
