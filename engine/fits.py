"""Per-series fits spread over an executor (``forescale fit``): each
target's configured forecaster fitted on its own history, one task per
target, the fitted model saved as the target's checkpoint (next to the state
file, or in a PostgreSQL state's shared table), so the daemon (``forescale run``, ``once``) restores it at its first
cycle instead of fitting (:mod:`engine.checkpoints`).

A task gets the target's history (arrays), the forecaster's registry name
and its parameters, and returns a :class:`FittedModel` (the model's own
``save()`` bytes, its version and what it was fitted on). A model that
cannot be fitted on that history (too little of it, a bad parameter, its
extra missing) comes back at once as a :class:`TaskFailure` with the reason
(no retry: the same data fails the same way); any other failure is retried
by the executor and then comes back the same way. A target without a fitted
model is simply fitted by the daemon on its first cycle, as without this
command; a failed fit there falls back to reactive with the reason, as
always.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

from forecasters.auto import SKIPPABLE

from .core.errors import InsufficientHistory
from .core.types import Series
from .core.units import from_epoch
from .executor import Task, TaskFailure


@dataclass(frozen=True)
class FitJob:
    """One target's fit: its history and its forecaster (name, parameters)."""

    target: str
    history: Series
    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class FittedModel:
    """A fitted model as it comes back from a worker."""

    target: str
    name: str
    version: str
    #: the model's own ``save()`` bytes (a pickle, or the LSTM's checkpoint)
    blob: bytes
    #: epoch seconds of the last sample it was fitted on
    history_end: int
    seconds: float
    #: the process that fitted it (a pool process, a Dask worker)
    pid: int = 0

    def load(self, model_class: type | None = None) -> Any:
        """The fitted forecaster (``model_class``: its class, else the registry's)."""
        from forecasters import registry

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model"
            path.write_bytes(self.blob)
            return (model_class or registry.get(self.name)).load(path)


def fit_series(target: str, history: Series, name: str, params: Mapping[str, Any],
               model_class: type | None = None) -> FittedModel | TaskFailure:
    """The task: fit one series' model and return it as bytes. ``model_class``:
    the forecaster's class itself (sent by reference: the worker imports its
    module), for a model the caller already built, e.g. one registered in
    that process only; else the registry's ``name``."""
    from forecasters import registry

    t0 = time.perf_counter()
    try:
        model = (model_class or registry.get(name))(dict(params))
        model.fit(history)
    except SKIPPABLE as exc:  # this history cannot fit this model: no retry
        short = (exc.have, exc.need) if isinstance(exc, InsufficientHistory) else None
        return TaskFailure(target, "error", f"{type(exc).__name__}: {exc}", history=short)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model"
        model.save(path)
        blob = path.read_bytes()
    return FittedModel(target, name, model.version, blob, int(history.timestamps[-1]), time.perf_counter() - t0,
                       os.getpid())


def fit_params(target: Any) -> dict[str, Any]:
    """A target's forecaster parameters as a task carries them (plain data)."""
    return target.forecaster_params.model_dump(mode="json", exclude_defaults=True)


def fit_models(jobs: Sequence[FitJob], executor: Any,
               on_done: Callable[[], None] | None = None) -> dict[str, FittedModel | TaskFailure]:
    """One task per job on ``executor``; every target gets a model or a failure."""
    # each history goes with its one task, not scattered (``share``): data
    # scattered to a worker that dies is lost, and its task with it
    tasks = [Task(j.target, (j.target, j.history, j.name, dict(j.params))) for j in jobs]
    outcomes = executor.run(fit_series, tasks, on_done=on_done) if tasks else []
    return {t.key: r for t, r in zip(tasks, outcomes)}


def fit_jobs_for(config: Any, fleet: Any, now: datetime) -> tuple[list[FitJob], dict[str, str]]:
    """Each target's history (its ``forecaster.history`` up to ``now``, on its
    interval, as the cycle fits it; ``fleet``: an
    :class:`engine.fleet.FleetTargets`) and forecaster. Targets that cannot
    be fitted here come back with the reason: those that start from a saved
    model (``init_from``), those whose policy uses no forecast, and those
    whose history cannot be read."""
    from .core.errors import ForescaleError

    jobs, skipped = [], {}
    for t in fleet.targets:
        if t.forecaster.init_from is not None:
            skipped[t.name] = "starts from a saved model (init_from); the daemon fine-tunes it"
            continue
        if not t.policy.uses_forecast:
            skipped[t.name] = "its policy uses no forecast"
            continue
        try:
            series = fleet.history(t, config, now)
        except ForescaleError as exc:
            skipped[t.name] = f"history: {type(exc).__name__}: {exc}"
            continue
        jobs.append(FitJob(t.name, series, t.forecaster.name, fit_params(t)))
    return jobs, skipped


def save_checkpoint(target: Any, shelf: Any, fitted: FittedModel, now: datetime) -> bool:
    """Write ``fitted`` as ``target``'s checkpoint on ``shelf``
    (:func:`engine.checkpoints.shelf_for`: files beside a SQLite state, the
    shared table of a PostgreSQL one), fitted at ``now`` (what the daemon's
    refit schedule counts from). False when it could not be written (the
    reason is logged)."""
    from .checkpoints import ModelCheckpoint

    runner = SimpleNamespace(forecaster=fitted.load(), last_fit=now)
    checkpoint = ModelCheckpoint(target, shelf)
    checkpoint.save(runner, from_epoch(fitted.history_end))
    return checkpoint.saved_fit == now


__all__ = ["FitJob", "FittedModel", "fit_jobs_for", "fit_params", "fit_models", "fit_series", "save_checkpoint"]
