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
and for applies the decision id and the capacity.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from actuators.base import ActuatorConfig
from engine.core.types import ActionPlan, ActuationResult, CapacityReading


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


def main(argv: list[str]) -> int:
    import actuators
    from engine.cli import main as forescale

    actuators.registry.register("file", FileActuator)
    return forescale(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
