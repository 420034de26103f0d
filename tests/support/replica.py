"""A ``forescale`` process with one more actuator: ``file``, a platform
whose every write is observable from outside the process.

``python -m tests.support.replica run --config c.yaml`` is ``forescale run``
with the ``file`` actuator registered. The platform is a folder: its
capacity in ``<dir>/<target>.capacity`` (shared by every replica, like a
real platform), and one JSON line per event appended to ``<dir>/events.log``
(``O_APPEND``, so lines from several processes never interleave):

- ``read``: a cycle read the capacity (the first event of every cycle);
- ``begin`` / ``end``: an apply started / was written; ``apply_delay``
  seconds lie between, so a test can kill a replica in the middle of one.

Each line carries the process id, the time (``time.time()``), the target,
and for applies the decision id and the capacity. :func:`failover_config`
and :func:`start_replica` set up replicas on it (the failover test and
``benchmarks/failover.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import yaml

from actuators.base import ActuatorConfig
from engine.core.types import ActionPlan, ActuationResult, CapacityReading
from tests.support import ROOT
from tests.support.live import target_dict, write_trace


class FileConfig(ActuatorConfig):
    type: str = "file"
    #: the platform's folder
    dir: Path
    initial_capacity: int = 5
    #: seconds between the start of an apply and its write
    apply_delay: float = 0.0


def events(folder: Path) -> list[dict[str, Any]]:
    p = Path(folder) / "events.log"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


class FileActuator:
    name: ClassVar[str] = "file"
    Config = FileConfig

    def __init__(self, config: FileConfig, *, target: str = "", **_: Any) -> None:
        self.config = config
        self.target = target
        self.dir = Path(config.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _log(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), "target": self.target, **fields})
        fd = os.open(self.dir / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    @property
    def _capacity_file(self) -> Path:
        return self.dir / f"{self.target}.capacity"

    def validate(self) -> None:
        return None

    def read(self) -> CapacityReading:
        self._log("read")
        p = self._capacity_file
        return CapacityReading(int(p.read_text()) if p.exists() else self.config.initial_capacity)

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        return ActionPlan(actuator=self.name, target=self.target, from_capacity=current or 0, to_capacity=desired,
                          summary=f"file: set {self.target} to {desired}")

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        self._log("begin", decision_id=decision_id, desired=desired)
        time.sleep(self.config.apply_delay)
        tmp = self._capacity_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(str(desired))
        tmp.replace(self._capacity_file)
        self._log("end", decision_id=decision_id, desired=desired)
        return ActuationResult(requested=desired, observed=desired, verified=True, elapsed=timedelta(0),
                               request_ids=(f"file:{decision_id}",))


def failover_config(folder: Path, url: str, *, lease_s: float, renew_s: float, interval_s: float,
                    apply_delay: float = 1.5, targets: int = 1, shards: int = 4,
                    forecaster: dict[str, Any] | None = None) -> Path:
    """``targets`` targets whose demand changes every interval (so nearly
    every cycle applies), on the ``file`` platform in ``folder/platform``;
    ``forecaster``: their forecaster section (default: persistence, refit
    hourly)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # 5 s blocks: over an interval that is no multiple of 10 s, each cycle sees another mean
    values = [100.0 if (i // 5) % 2 else 240.0 for i in range(3600)]
    trace = write_trace(folder / "load.csv", values, start=now - timedelta(minutes=10), step=timedelta(seconds=1))
    doc = {
        "state": url,
        "ha": {"shards": shards, "lease": f"{lease_s:g}s", "renew": f"{renew_s:g}s"},
        "server": {"enabled": False},
        "targets": [target_dict(
            f"svc-{i}", trace, interval=f"{interval_s:g}s", timeout="20s",
            forecaster=forecaster or {"name": "persistence", "history": "10m", "refit_every": "1h"},
            policy={"lead_time": f"{interval_s:g}s", "hold": f"{interval_s:g}s", "max_staleness": "1m"},
            actuator={"type": "file", "dir": str(folder / "platform"), "apply_delay": apply_delay})
            for i in range(targets)],
    }
    path = folder / "replica.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_replica(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.support.replica", "run", "--config", str(cfg),
                             "--tick", "0.05"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def stop_replicas(procs) -> None:
    """SIGTERM every replica still running, wait for each (killed after 20 s)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_for(cond, timeout: float, what: str, procs=(), logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        for p in procs:
            assert p.poll() is None, f"a replica exited ({p.returncode}) while waiting for {what}: {tails(logs)}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout}s: {tails(logs)}")


def tails(logs) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())


def in_flight(folder: Path, pid: int):
    """A ``begin`` of ``pid`` with no ``end`` yet: an apply in progress."""
    evs = events(folder)
    ended = {e["decision_id"] for e in evs if e["kind"] == "end"}
    return next((e for e in evs if e["kind"] == "begin" and e["pid"] == pid and e["decision_id"] not in ended),
                None)


def main(argv: list[str]) -> int:
    import actuators
    from engine.cli import main as forescale

    actuators.registry.register("file", FileActuator)
    return forescale(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
