"""Per-target model selection by rolling-origin backtest, spread over an
executor (``forescale select``).

The scoring is the ``auto`` forecaster's (:mod:`forecasters.auto`): mean
pinball loss over the planner's levels at the policy's horizon steps, scaled
by the mean actual. What this module adds is the split into tasks: for each
target, each candidate and each *fold* (a contiguous block of the backtest's
origins), one task fits the candidate on the history up to the fold's first
origin and rolls it through the fold's origins. A task returns the loss and
actual sums of its fold (:class:`forecasters.auto.BacktestSums`), so a
candidate's score over all folds is exactly the score of one run over all
origins in which the model was refitted at each fold's start. With
``folds: 1`` the score is the ``auto`` forecaster's own, to the last bit.

A task gets one target's history (its arrays, shared once per worker), a
candidate (name and parameters) and its origins; never a store, a source or
a config. A candidate that cannot run (its package is missing, too little
history, a bad parameter) is *skipped* with the reason, as ``auto`` does; a
task that fails for any other reason (it raised every retry, or its worker
died too often) is a :class:`engine.executor.TaskFailure` and the candidate
is skipped with that reason. A target with no scored candidate has no
choice (:attr:`Selection.ok` false) and keeps its configured forecaster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from forecasters.auto import (SKIPPABLE, AutoParams, BacktestSums, Candidate, backtest_origins, backtest_sums,
                              create_candidate, ranked)

from .core.errors import ConfigError, ForecastError
from .core.types import Series
from .executor import Task, TaskFailure


@dataclass(frozen=True)
class FoldScore:
    """What one task returns: a fold's sums, or why the candidate cannot run."""

    target: str
    candidate: str
    fold: int
    sums: BacktestSums | None
    skipped: str | None
    seconds: float


@dataclass(frozen=True)
class Selection:
    """One target's result: the winning candidate (None when none could be
    scored), every candidate's score, and why the others were skipped."""

    target: str
    choice: Candidate | None
    scores: Mapping[str, float]
    skipped: Mapping[str, str]
    folds: int
    origins: int
    #: seconds spent in this target's tasks, summed over workers
    task_seconds: float
    #: set when the target could not be evaluated at all (its history)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.choice is not None

    @property
    def reason(self) -> str:
        """Why there is no choice (for the report and the log)."""
        if self.error:
            return self.error
        return "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "no candidate"

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target,
                "choice": None if self.choice is None else {"name": self.choice.name,
                                                            "params": dict(self.choice.params),
                                                            "key": self.choice.key},
                "scores": {k: round(v, 6) for k, v in self.scores.items()},
                "skipped": dict(self.skipped), "folds": self.folds, "origins": self.origins,
                "task_seconds": round(self.task_seconds, 3),
                **({} if self.ok else {"reason": self.reason})}


@dataclass(frozen=True)
class SelectionJob:
    """One target's selection problem: its history and the auto parameters
    (candidates, horizon, levels, evaluation window)."""

    target: str
    history: Series
    params: AutoParams
    folds: int = 4


def score_fold(target: str, history: Series, cand: Candidate, fold: int, origins: Sequence[int],
               params: AutoParams) -> FoldScore:
    """The task: one candidate's backtest over one fold of origins."""
    t0 = time.perf_counter()
    try:
        sums = backtest_sums(create_candidate(cand), history, origins, params.horizon_steps, params.under_weight,
                             steps=params.scored_steps,
                             levels=params.levels if params.score == "pinball" else None)
        return FoldScore(target, cand.key, fold, sums, None, time.perf_counter() - t0)
    except SKIPPABLE as exc:  # the candidate cannot run here: skip it, as auto does (no retry)
        return FoldScore(target, cand.key, fold, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)


def split_folds(origins: Sequence[int], folds: int) -> list[list[int]]:
    """Contiguous blocks of origins, as even as they divide."""
    k = max(1, min(folds, len(origins)))
    size, extra = divmod(len(origins), k)
    out, i = [], 0
    for j in range(k):
        n = size + (1 if j < extra else 0)
        out.append(list(origins[i:i + n]))
        i += n
    return out


def select_models(jobs: Sequence[SelectionJob], executor: Any,
                  on_done: Callable[[], None] | None = None) -> dict[str, Selection]:
    """Score every job's candidates over its folds on ``executor`` and pick
    each target's winner (lowest score; ties to the earlier candidate)."""
    tasks: list[Task] = []
    plan: dict[str, tuple[SelectionJob, int, int]] = {}  # target -> (job, folds, origins)
    early: dict[str, Selection] = {}
    for job in jobs:
        try:
            origins = backtest_origins(len(job.history), job.params)
        except ForecastError as exc:
            early[job.target] = Selection(job.target, None, {}, {}, 0, 0, 0.0, f"{type(exc).__name__}: {exc}")
            continue
        blocks = split_folds(origins, job.folds)
        plan[job.target] = (job, len(blocks), len(origins))
        shared = executor.share(job.history)
        for cand in job.params.candidates:
            for f, block in enumerate(blocks):
                tasks.append(Task(f"{job.target}/{cand.key}/{f}",
                                  (job.target, shared, cand, f, tuple(block), job.params)))
    outcomes = executor.run(score_fold, tasks, on_done=on_done) if tasks else []
    by_target: dict[str, list[tuple[Task, Any]]] = {}
    for task, res in zip(tasks, outcomes):
        by_target.setdefault(task.args[0], []).append((task, res))
    out: dict[str, Selection] = {}
    for job in jobs:
        if job.target in early:
            out[job.target] = early[job.target]
            continue
        _, n_folds, n_origins = plan[job.target]
        sums: dict[str, BacktestSums] = {}
        skipped: dict[str, str] = {}
        seconds = 0.0
        for task, res in by_target.get(job.target, []):
            key = task.args[2].key
            if isinstance(res, TaskFailure):
                skipped.setdefault(key, f"task {res.key} failed ({res.kind}): {res.reason}")
                continue
            seconds += res.seconds
            if res.skipped is not None:
                skipped.setdefault(key, res.skipped)
            elif key not in skipped:
                sums[key] = sums[key] + res.sums if key in sums else res.sums
        scores: dict[str, float] = {}
        for key, s in sums.items():
            if key in skipped:
                continue
            try:
                scores[key] = s.score
            except ForecastError as exc:
                skipped[key] = f"{type(exc).__name__}: {exc}"
        best = ranked(scores, job.params)  # auto's own rule (its margin)
        choice = next(c for c in job.params.candidates if c.key == best[0]) if best else None
        out[job.target] = Selection(job.target, choice, scores, skipped, n_folds, n_origins, seconds)
    return out


def auto_params_for(target: Any, names: Sequence[str] = ()) -> AutoParams:
    """The selection problem of a configured target: an ``auto`` target's own
    parameters; otherwise the default candidates after the configured
    forecaster (first, so a tie keeps it), at the policy's horizon. ``names``
    replaces the candidates (each with its default parameters)."""
    fc = target.forecaster
    if fc.name == "auto":
        params = target.forecaster_params  # at the policy's horizon unless it states one
        return params.model_copy(update={"candidates": tuple(Candidate(name=n) for n in names)}) if names else params
    if names:
        cands = tuple(Candidate(name=n) for n in names)
    else:
        mine = Candidate(name=fc.name, params=fc.params.model_dump(mode="json", exclude_defaults=True))
        cands = (mine, *(c for c in AutoParams().candidates if c.name != fc.name))
    return AutoParams(candidates=cands, horizon_steps=target.horizon_steps)


def jobs_for(config: Any, fleet: Any, now: datetime, *, folds: int,
             names: Sequence[str] = ()) -> tuple[list[SelectionJob], dict[str, Selection]]:
    """Fetch each target's history (its forecaster's ``history`` window up to
    ``now``, on its interval; ``fleet``: an :class:`engine.fleet.FleetTargets`,
    whose template targets share their template's query) and build its job.
    A target whose history cannot be read comes back as a failed
    :class:`Selection` instead."""
    from .core.errors import ForescaleError

    jobs, failed = [], {}
    for t in fleet.targets:
        try:
            series = fleet.history(t, config, now)
            jobs.append(SelectionJob(t.name, Series.view(series.timestamps, series.values, t.name),
                                     auto_params_for(t, names), folds))
        except ForescaleError as exc:
            failed[t.name] = Selection(t.name, None, {}, {}, 0, 0, 0.0, f"history: {type(exc).__name__}: {exc}")
    return jobs, failed


#: the config fields that hold a path resolved against the config file's folder
_PATH_FIELDS = frozenset({"state", "path", "workspace", "kubeconfig", "checkpoint", "ca_file", "init_from",
                          "password_file", "token_file", "cert_file", "key_file"})


def _relative_paths(doc: Any, where: str = "") -> list[str]:
    """``field: value`` of each relative path in a config document."""
    from .db import is_url

    found: list[str] = []
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            here = f"{where}.{k}" if where else str(k)
            if k in _PATH_FIELDS and isinstance(v, str) and v and not is_url(v) and not Path(v).is_absolute():
                found.append(f"{here}: {v}")
            else:
                found += _relative_paths(v, here)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _relative_paths(v, f"{where}[{i}]")
    return found


def check_write_config(source: Path, out: Path, doc: Any = None) -> None:
    """A ConfigError if the copy at ``out`` of the config at ``source``
    would name other files: written into another folder, its relative paths
    (``state`` above all, ``forescale.db`` when unstated) resolve against
    that folder, and the daemon started on it would begin on a new, empty
    state (no decisions, cooldowns, audit chain or models)."""
    import yaml

    if out.resolve().parent == source.resolve().parent:
        return
    doc = yaml.safe_load(source.read_text(encoding="utf-8")) if doc is None else doc
    relative = _relative_paths(doc)
    if isinstance(doc, Mapping) and "state" not in doc:
        relative.insert(0, "state: forescale.db (the default)")
    if relative:
        raise ConfigError(f"--write-config {out}: in another folder than {source}, its relative paths "
                          f"({', '.join(relative[:3])}{', ...' if len(relative) > 3 else ''}) would name "
                          f"other files; write it in {source.resolve().parent} or make them absolute")


def write_config(source: Path, out: Path, selections: Mapping[str, Selection],
                 template_of: Mapping[str, str] | None = None) -> list[str]:
    """Copy the config file at ``source`` to ``out`` with each chosen
    target's ``forecaster.name`` and ``params`` replaced by its choice (its
    other forecaster settings kept; a target without a choice unchanged). A
    template's target (``template_of``: target name -> template name) gets
    the choice as its entry in the template's ``overrides``, so it stays the
    template's target. The copy is validated before it is written (relative
    paths resolve against ``out``'s folder). Returns the names of the
    targets changed."""
    import yaml

    from .config import parse_config

    def chosen(sel: Selection, section: Mapping[str, Any] | None) -> dict[str, Any]:
        assert sel.choice is not None
        kept = {k: v for k, v in (section or {}).items() if k not in ("name", "params")}
        return {"name": sel.choice.name, **({"params": dict(sel.choice.params)} if sel.choice.params else {}),
                **kept}

    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    changed = []
    for t in doc.get("targets") or ():
        sel = selections.get(t.get("name")) if isinstance(t, dict) else None
        if sel is None or sel.choice is None:
            continue
        t["forecaster"] = chosen(sel, t.get("forecaster"))
        changed.append(t["name"])
    blocks = {tp.get("name"): tp for tp in doc.get("templates") or () if isinstance(tp, dict)}
    for name, tname in (template_of or {}).items():
        sel, tp = selections.get(name), blocks.get(tname)
        if sel is None or sel.choice is None or tp is None:
            continue
        overrides = tp.setdefault("overrides", {})
        mine = overrides.setdefault(name, {})
        mine["forecaster"] = chosen(sel, mine.get("forecaster") or tp.get("forecaster"))
        changed.append(name)
    check_write_config(source, out, doc)
    parse_config(doc, base_dir=out.resolve().parent, source=str(out))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(out)
    return changed


__all__ = ["FoldScore", "Selection", "SelectionJob", "score_fold", "select_models", "split_folds",
           "auto_params_for", "jobs_for", "write_config"]
