"""JSON log lines carry the target and decision id, also when they are
logged deep inside a cycle (a forecaster, an actuator)."""

from __future__ import annotations

import io
import json
import logging


import pytest

import forecasters
from engine.build import build_targets
from engine.config import parse_config
from engine.logs import JsonFormatter, log_context, set_log_fields
from engine.store import Store
from engine.core.units import from_epoch
from forecasters.naive import Persistence

T0 = 1_700_000_000 - (1_700_000_000 % 300)


class Exploding(Persistence):
    name = "exploding"

    def _predict(self, ahead, quantiles):
        raise RuntimeError("model bug")


@pytest.fixture(autouse=True)
def _registered():
    """Registered for this module's tests only (the contract suite runs over
    the real registry, not over test doubles)."""
    forecasters.registry.register("exploding", Exploding)
    yield
    forecasters.registry.unregister("exploding")


def _capture():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("forescale")
    root.addHandler(h)
    root.setLevel(logging.INFO)
    return buf, h


def test_a_line_logged_inside_a_cycle_carries_target_and_mode(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{T0 + 300 * i},{10 + i % 7}\n" for i in range(100)))
    cfg = parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "web", "mode": "dry-run", "source": {"type": "replay", "path": str(csv)},
        "forecaster": {"name": "exploding"}, "policy": {"capacity_per_replica": 5}}]})
    buf, h = _capture()
    try:
        with Store(cfg.state_path) as store:
            (lt,) = build_targets(cfg, store)
            res = lt.run(from_epoch(T0 + 300 * 99))
    finally:
        logging.getLogger("forescale").removeHandler(h)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    failed = [x for x in lines if "model bug" in x["msg"]]
    assert failed and failed[0]["target"] == "web" and failed[0]["mode"] == "dry-run"
    assert res.decision.fallback  # and the failed forecast fell back


def test_decision_id_joins_once_known_and_the_context_ends_with_the_block():
    buf, h = _capture()
    log = logging.getLogger("forescale.test")
    try:
        with log_context(target="api"):
            log.info("before")
            set_log_fields(decision_id="api@2024-01-01T00:00:00Z")
            log.info("after")
        log.info("outside")
    finally:
        logging.getLogger("forescale").removeHandler(h)
    before, after, outside = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert before["target"] == "api" and "decision_id" not in before
    assert after["decision_id"] == "api@2024-01-01T00:00:00Z"
    assert "target" not in outside
