"""A forecaster for the batched cycle's executor tests: persistence whose
fit kills its worker process or raises for the target its parameters name
(``who``, filled in from a template's label). Module-level, so a pool
process or a Dask worker imports it by name when a task carries the class."""

from __future__ import annotations

import multiprocessing
import os

from forecasters.naive import Persistence, PersistenceParams


class FitProbeParams(PersistenceParams):
    who: str = ""
    die_for: str = ""
    raise_for: str = ""


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
        super()._fit(history)
