"""A state file with a pending plan made by a real approve-mode cycle, and
a config with console users, for the console, auth and browser tests."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.live import STEP, target_dict, write_config, write_trace

ALICE_TOKEN = "alice-token-3f9a1c77e2"
BOB_TOKEN = "bob-token-88d1e0c4b5"
SECRET = "server-secret-5be1d2a9c0f4"


@dataclass
class Console:
    cfg_path: Path
    now: datetime
    plan_id: str
    trace: Path


def make_console_state(tmp_path: Path, now: datetime, *, users: bool = True, values: list[float] | None = None,
                       extra: dict[str, Any] | None = None, public_url: str = "http://console.test",
                       target: dict[str, Any] | None = None) -> Console:
    """Run one approve-mode cycle at ``now`` over a flat trace (demand 100,
    5 replicas in service -> plan 5 -> 20) with the dry-run actuator."""
    from engine.build import build_targets
    from engine.config import load_config
    from engine.store import Store

    trace = write_trace(tmp_path / "load.csv", values or [100.0] * 30, start=now - 29 * STEP)
    t = target or target_dict("web", trace, mode="approve", plan_ttl="2h",
                              actuator={"type": "dry-run", "initial_capacity": 5})
    console: dict[str, Any] = {"secret": SECRET, "public_url": public_url}
    if users:
        console["users"] = [{"name": "alice", "token_sha256": hashlib.sha256(ALICE_TOKEN.encode()).hexdigest()},
                            {"name": "bob", "token_env": "FORESCALE_TEST_BOB"}]
    cfg_path = write_config(tmp_path / "forescale.yaml", [t], **{"console": console, **(extra or {})})
    cfg = load_config(cfg_path)
    with Store(cfg.state_path) as store:
        (live,) = build_targets(cfg, store)
        res = live.run(now)
        assert res.status == "planned", res
        return Console(cfg_path, now, res.plan.id, trace)


def run_cycle(cfg_path: Path, now: datetime) -> Any:
    """One more cycle of every target at ``now`` (a fresh process would do the same)."""
    from engine.build import build_targets
    from engine.config import load_config
    from engine.store import Store

    cfg = load_config(cfg_path)
    with Store(cfg.state_path) as store:
        (live,) = build_targets(cfg, store)
        return live.run(now)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


__all__ = ["ALICE_TOKEN", "BOB_TOKEN", "SECRET", "STEP", "make_console_state", "run_cycle", "csrf_of",
           "timedelta"]
