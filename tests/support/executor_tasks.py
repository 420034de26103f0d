"""Task functions for the executor tests: module-level, so a worker process
imports them by name."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Squared:
    x: int
    value: int
    pid: int


def square(x: int, delay: float = 0.0) -> Squared:
    if delay:
        time.sleep(delay)
    return Squared(x, x * x, os.getpid())


def die_once(marker: str, x: int) -> Squared:
    """Kill this worker process the first time any worker runs it (the
    marker file says it happened), then succeed."""
    path = Path(marker)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return square(x)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)


def always_die(x: int) -> Squared:
    os._exit(1)


def die_after(seconds: float) -> Squared:
    """Kill this worker process ``seconds`` into the task, every time."""
    time.sleep(seconds)
    os._exit(1)


def always_raise(x: int) -> Squared:
    raise ValueError(f"no square for {x} today")


def raise_until(counter: str, times: int, x: int) -> Squared:
    """Raise the first ``times`` calls (counted in a file), then succeed."""
    path = Path(counter)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < times:
        raise RuntimeError(f"transient failure {n + 1}")
    return square(x)


def total(arr, start: int) -> float:
    return float(arr[start:].sum())


def dispatch(name: str, *args):
    """Run the task function ``name`` (one run mixing several kinds of task)."""
    return globals()[name](*args)


def environ(name: str) -> str | None:
    return os.environ.get(name)


def hang(marker: str, seconds: float) -> Squared:
    """Write this process' pid to ``marker``, then sleep ``seconds`` (a fit
    stuck past any deadline)."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return square(0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid: int, seconds: float = 20.0) -> bool:
    """Whether process ``pid`` ends within ``seconds`` (a pool process being
    terminated, a Dask worker being restarted)."""
    end = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True
