"""A forecaster for the batched cycle's executor tests: persistence whose
fit kills its worker process or raises for the target its parameters name
(``who``, filled in from a template's label), or whose first fit hangs
(``hang_for``: it writes its pid to ``hang_marker`` and sleeps; a later
fit, the marker there, fits at once), or that raises while the file
``raise_marker`` exists (a model that fitted, then stops fitting), or that
needs ``need`` valid observations (``InsufficientHistory`` with fewer), or
that ends the very process fitting it (``exit_for``, as the kernel's OOM
killer would: only where ``FORESCALE_TEST_MAY_EXIT`` is set, a process a
test started for it). Every fit appends its target's name to ``fit_log``
when that is set, and with ``started_log`` also what another connection
reads of the state file ``state`` meanwhile (the fits recorded as under way);
with ``hold`` (a folder) the n-th fit creates ``hold/n.fitting`` and waits
for ``hold/n.go``, so a test acts while a fit is under way.
Module-level, so a pool
process or a Dask worker imports it by name when a task carries the class."""

from __future__ import annotations

import multiprocessing
import os
import time

from forecasters.naive import Persistence, PersistenceParams


class FitProbeParams(PersistenceParams):
    who: str = ""
    die_for: str = ""
    raise_for: str = ""
    hang_for: str = ""
    hang_marker: str = ""
    raise_marker: str = ""
    need: int = 0
    fit_log: str = ""
    exit_for: str = ""
    state: str = ""
    started_log: str = ""
    hold: str = ""


class FitProbe(Persistence):
    name = "fit_probe"
    Params = FitProbeParams

    def _fit(self, history) -> None:
        p = self.params
        if p.fit_log:
            with open(p.fit_log, "a") as f:
                f.write(f"{p.who}\n")
        if p.started_log:
            import json
            import sqlite3

            db = sqlite3.connect(p.state)  # another connection: sees only what was committed
            try:
                rows = db.execute("SELECT target, model, failures FROM fits_started ORDER BY target").fetchall()
            finally:
                db.close()
            with open(p.started_log, "a") as f:
                f.write(json.dumps({"who": p.who, "started": rows}) + "\n")
        if p.hold:  # the n-th fit announces itself as hold/n.fitting and waits for hold/n.go
            n = 1 + sum(1 for f in os.listdir(p.hold) if f.endswith(".fitting"))
            open(os.path.join(p.hold, f"{n}.fitting"), "w").close()
            t0 = time.monotonic()
            while not os.path.exists(os.path.join(p.hold, f"{n}.go")):
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"fit {n} of {p.who} was held for 60 s")
                time.sleep(0.02)
        if p.who and p.who == p.exit_for:
            if not os.environ.get("FORESCALE_TEST_MAY_EXIT"):
                raise RuntimeError(f"would end the process fitting {p.who}")
            os._exit(137)
        if history.n_valid < p.need:
            from engine.core.errors import InsufficientHistory

            raise InsufficientHistory(history.n_valid, p.need, "fit_probe")
        if p.raise_marker and os.path.exists(p.raise_marker):
            raise RuntimeError(f"the fit of {p.who} fails while {os.path.basename(p.raise_marker)} exists")
        if p.who and p.who == p.die_for:
            if multiprocessing.parent_process() is None:  # never the process running the tests
                raise RuntimeError(f"would kill the process fitting {p.who}; run it on an executor")
            os._exit(1)
        if p.who and p.who == p.raise_for:
            raise RuntimeError(f"the fit of {p.who} fails")
        if p.who and p.who == p.hang_for and not os.path.exists(p.hang_marker):
            if multiprocessing.parent_process() is None:
                raise RuntimeError(f"would hang the process fitting {p.who}; run it on an executor")
            with open(p.hang_marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(300)
        super()._fit(history)
