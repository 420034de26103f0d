"""A restart reuses the fitted model saved next to the state file instead of
refitting (what makes a restart cheap for the LSTM)."""

from __future__ import annotations

import numpy as np
import pytest

import forecasters
from engine.build import build_targets
from engine.config import parse_config
from engine.store import Store
from engine.core.units import from_epoch
from forecasters.naive import Persistence

T0 = 1_700_000_000 - (1_700_000_000 % 300)


class CountingPersistence(Persistence):
    name = "counting_persistence"
    fits = 0

    def _fit(self, history):
        type(self).fits += 1
        super()._fit(history)


@pytest.fixture(autouse=True)
def _registered():
    """Registered for this module's tests only (the contract suite runs over
    the real registry, not over test doubles)."""
    forecasters.registry.register("counting_persistence", CountingPersistence)
    yield
    forecasters.registry.unregister("counting_persistence")


def _config(tmp_path, name="counting_persistence", params=None, refit_every="1d"):
    n = 2 * 288
    v = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288)
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{T0 + 300 * i},{x}\n" for i, x in enumerate(v)))
    return parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "web", "mode": "observe", "source": {"type": "replay", "path": str(csv)},
        "forecaster": {"name": name, "params": params or {}, "refit_every": refit_every},
        "policy": {"capacity_per_replica": 5}}]})


def _cycles(cfg, start_step: int, count: int):
    out = []
    with Store(cfg.state_path) as store:
        (lt,) = build_targets(cfg, store)
        for i in range(start_step, start_step + count):
            out.append(lt.run(from_epoch(T0 + 300 * i)))
    return out


def test_a_restart_restores_the_model_instead_of_refitting(tmp_path):
    cfg = _config(tmp_path)
    CountingPersistence.fits = 0
    first = _cycles(cfg, 400, 3)
    assert CountingPersistence.fits == 1
    assert (tmp_path / "s.db.models" / "web.model").exists()
    again = _cycles(cfg, 403, 3)  # a new process: new LiveTarget, same state file
    assert CountingPersistence.fits == 1, "the restart refitted instead of restoring"
    assert "restored" in again[0].details["model"]
    assert again[0].decision.model_version == first[-1].decision.model_version


def test_a_changed_forecaster_config_ignores_the_saved_model(tmp_path):
    CountingPersistence.fits = 0
    _cycles(_config(tmp_path), 400, 2)
    again = _cycles(_config(tmp_path, params={"residual_window": "2d"}), 402, 1)
    assert CountingPersistence.fits == 2
    assert "config changed" in again[0].details["model"]


def test_a_corrupt_checkpoint_means_refit_not_failure(tmp_path):
    CountingPersistence.fits = 0
    cfg = _config(tmp_path)
    _cycles(cfg, 400, 1)
    (tmp_path / "s.db.models" / "web.model").write_bytes(b"not a model")
    again = _cycles(cfg, 401, 1)
    assert CountingPersistence.fits == 2
    assert "not usable" in again[0].details["model"] and not again[0].decision.fallback


def test_the_lstm_checkpoint_survives_a_restart(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    cfg = _config(tmp_path, name="lstm", params={"lookback": 12, "horizon": 4, "hidden_size": 8, "epochs": 1})
    first = _cycles(cfg, 400, 1)
    again = _cycles(cfg, 401, 1)
    assert "restored" in again[0].details["model"]
    assert again[0].decision.model_version == first[0].decision.model_version


def test_a_checkpoint_from_the_future_is_refitted_not_a_forecast_error(tmp_path, caplog):
    """The state file deleted, the checkpoint folder kept, and the loop
    started earlier in time: the saved fit lies after this cycle's time."""
    CountingPersistence.fits = 0
    cfg = _config(tmp_path)
    _cycles(cfg, 500, 1)  # saved with last_fit at step 500
    cfg.state_path.unlink()
    again = _cycles(cfg, 300, 3)
    assert "after this cycle's time" in again[0].details["model"] and "refitting" in again[0].details["model"]
    assert "does not fit the state" in caplog.text
    assert CountingPersistence.fits == 2
    for res in again:
        assert res.ok and not res.decision.fallback and res.forecast is not None
        assert "forecast_error" not in res.details


def test_a_replica_that_leads_a_target_again_takes_up_a_newer_model_fitted_meanwhile(tmp_path):
    """A replica that lost a target and gains it back (``rearm``) restores the
    model the other leader fitted since, and keeps its own when none is
    newer."""
    cfg = _config(tmp_path, refit_every="15m")
    CountingPersistence.fits = 0
    with Store(cfg.state_path) as store_a, Store(cfg.state_path) as store_b:
        (a,) = build_targets(cfg, store_a)
        (b,) = build_targets(cfg, store_b)
        first = a.run(from_epoch(T0 + 300 * 400))  # a leads: fits and saves
        took = b.run(from_epoch(T0 + 300 * 401))  # b takes over: restores a's fit
        assert "restored" in took.details["model"] and CountingPersistence.fits == 1
        assert took.decision.model_version == first.decision.model_version
        refit = b.run(from_epoch(T0 + 300 * 403))  # b refits (every 15 min) and saves
        assert CountingPersistence.fits == 2 and refit.decision.model_version != first.decision.model_version
        a.rearm_checkpoints()  # a leads again: b's newer model, not a's own
        back = a.run(from_epoch(T0 + 300 * 404))
        assert "restored" in back.details["model"] and back.decision.model_version == refit.decision.model_version
        a.rearm_checkpoints()  # nothing newer: a keeps the model it has, no note
        same = a.run(from_epoch(T0 + 300 * 405))
        assert "model" not in same.details and same.decision.model_version == refit.decision.model_version
        assert CountingPersistence.fits == 2


def test_a_cycle_abandoned_past_its_timeout_never_overwrites_the_newer_cycles_model(tmp_path):
    """A cycle stuck after gathering (its refit still to come) is abandoned
    and the next interval's cycle runs beside it, refits and saves its
    model; when the stuck one is released and refits on its older history,
    the checkpoint stays the newer cycle's, so a restart restores that one."""
    from engine.checkpoints import shelf_for

    cfg = _config(tmp_path, refit_every="5m")
    with Store(cfg.state_path) as store:
        (old,) = build_targets(cfg, store)
        old.run(from_epoch(T0 + 300 * 400))
        stuck = old.begin(from_epoch(T0 + 300 * 401))  # ... and hangs here, past its timeout
        old.superseded.set()
        with Store(cfg.state_path) as own:  # the cycle beside it, on a store connection of its own
            (new,) = build_targets(cfg, own)
            assert new.run(from_epoch(T0 + 300 * 402)).error is None
        newer = shelf_for(store).read("web")[0]
        assert newer["last_fit"] == T0 + 300 * 402
        old.decide(stuck)  # released at last: it refits on the history of its own time
        late = old.finish(stuck)
        assert late.error is None and old.runner.last_fit == from_epoch(T0 + 300 * 401)
        assert shelf_for(store).read("web")[0] == newer
        (again,) = build_targets(cfg, store)  # a restart
        res = again.run(from_epoch(T0 + 300 * 403))
    assert res.details["model"].startswith("model") and "restored (fitted " in res.details["model"]
    assert from_epoch(T0 + 300 * 402).isoformat()[:16] in res.details["model"]
