"""A forecaster for the batched cycle's executor tests: persistence whose
fit kills its worker process or raises for the target its parameters name
(``who``, filled in from a template's label), or whose first fit hangs
(``hang_for``: it writes its pid to ``hang_marker`` and sleeps; a later
fit, the marker there, fits at once). Module-level, so a pool
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


class FitProbe(Persistence):
    name = "fit_probe"
    Params = FitProbeParams

    def _fit(self, history) -> None:
        p = self.params
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
