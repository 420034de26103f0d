"""Fleets: targets from label sets, and one batched cycle for them.

A *template* (``templates[]`` in the config, :class:`engine.config.TargetTemplate`)
turns every series of one PromQL query into a target, one per label set.
:func:`discover` asks the query which series exist now and expands the
template for each (:meth:`TargetTemplate.expand`); the daemon calls it every
``discover_every`` and adds and retires targets as series come and go;
:func:`fleet_targets` does the same for the commands that work on every
target (``forescale select``, ``fit``). A
target's state is stored under its name, so a series that comes back finds
its state, cooldowns and all.

The targets of a template run their cycle together, once per interval, in
:func:`run_batch`. Each target still runs the steps of
:meth:`engine.cycle.LiveTarget.run` and decides alone; what is shared is the
work around the decisions:

1. **fetch**     one range query for the whole template
                 (:meth:`PrometheusSource.fetch_all`); each target's source
                 (:class:`SeriesSlice`) hands out its own series from it.
2. **gather**    every target's ``begin`` (steps 1-4), its reads and sample
                 cache writes in one transaction (:meth:`Store.batch`).
3. **forecast**  targets whose forecaster ``predicts_in_batches`` are fitted
                 or updated one by one, then forecast in one call per model
                 (:func:`batched_forecasts`: all the targets on one global
                 LSTM checkpoint in one forward pass, on the GPU when there is
                 one); per-series models forecast per target in step 4,
                 and their due refits run first on the config's executor
                 when it has one (:func:`refits_elsewhere`: one task per
                 target, a failed, lost or late one is that target's
                 fallback). The file's own targets that run alone send
                 theirs the same way (:func:`run_refitting_elsewhere`).
4. **decide**    every target's ``decide`` (step 5), the forecast records in
                 one transaction; a target whose per-series model is fitted
                 here this cycle decides outside it, so that the record of
                 its fit's start is on disk first (a fit the process does
                 not outlive is then a failure after a restart, backed off,
                 not tried again at once).
5. **record**    every target that does not act (observe, dry-run, hold):
                 ``finish`` (steps 6-8) in one transaction; then each target
                 that acts (approve, auto with a change), one by one, outside
                 it: its intent must be on disk before its platform is touched.

A transaction holds the writes of at most ``WRITES_PER_TRANSACTION`` (500)
targets, so the state file's write lock is never held for long.

Independence: a target's fetch failure, a history of NaNs, a model that
fails, an actuator that raises, is that target's error (the policy falls
back to reactive for it, never scaling down, with the reason recorded);
the others decide as if it were not there. A batched call that fails as a
whole falls back to reactive for each of its targets with the reason.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .config import Config, TargetConfig, TargetTemplate
from .core.errors import ConfigError, MetricSourceError, StateError
from .core.plugins import capabilities_of
from .core.types import Forecast, Series
from .cycle import CycleResult, LiveTarget, PendingCycle

log = logging.getLogger("forescale.fleet")

LabelSet = frozenset  # frozenset of (label, value) pairs


# ---------------------------------------------------------------- discovery
@dataclass
class Discovery:
    """What a template expands to now: targets by name (with their label
    sets), and the series that could not become targets, with why."""

    template: str
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    labels: dict[str, LabelSet] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def expand(template: TargetTemplate, label_sets: Sequence[LabelSet], base_dir: Any = None) -> Discovery:
    """The template's target for each label set (pure). A series lacking a
    label the template refers to, or whose name another series already
    took, is left out with an error naming the template field."""
    out = Discovery(template.name)
    for key in sorted(label_sets, key=sorted):
        labels = dict(key)
        try:
            t = template.expand(labels, base_dir)
        except ConfigError as exc:
            out.errors.append(str(exc))
            continue
        if t.name in out.targets:
            out.errors.append(f"templates[{template.name}].target_name: series {_labelset(labels)} and "
                              f"{_labelset(dict(out.labels[t.name]))} both make the target name {t.name!r}; "
                              "put a label that tells them apart in target_name")
            continue
        out.targets[t.name] = t
        out.labels[t.name] = key
    return out


def discover(template: TargetTemplate, source: Any, now: datetime, base_dir: Any = None) -> Discovery:
    """Ask the template's query which series exist now (a sample within the
    last two intervals) and expand the template for each. A failed query
    raises (the caller keeps the targets it has)."""
    interval = (template.prototype.interval if template.prototype is not None
                else TargetConfig.model_fields["interval"].default)
    found = source.fetch_all(now - 2 * interval, now)
    return expand(template, [k for k, s in found.items() if s.n_valid], base_dir)


def template_source(template: TargetTemplate, config: Config) -> Any:
    """The template's query as a source answering for every label set."""
    from .build import build_source

    assert template.prototype is not None
    return build_source(template.prototype.model_copy(update={"source": template.source}), config)


@dataclass
class FleetTargets:
    """The targets a command works on (:func:`fleet_targets`): the file's
    and those the templates expand to now, each template's with its source
    out of one range query; the template each came from; and what could not
    be discovered."""

    targets: list[TargetConfig]
    sources: dict[str, Any] = field(default_factory=dict)
    template_of: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def history(self, target: TargetConfig, config: Config, now: datetime) -> Series:
        """The target's forecaster ``history`` up to ``now`` on its interval,
        as its cycle fits it (a template's target: its series out of the
        template's one query)."""
        from .build import build_source

        source = self.sources.get(target.name) or build_source(target, config)
        return source.fetch(now - target.forecaster.history, now).regular(target.interval)


def claimed(template: str, names: Iterable[str], static: Collection[str],
            taken: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Which of ``template``'s discovered target ``names`` it runs: not a
    target of the file (``static``: the file's is kept) nor of another
    template (``taken``: name -> the template that has it, which keeps it);
    and one error line per name it leaves out. Two runners of one name
    would both decide and apply it every cycle, each with its own policy."""
    runs, errors = [], []
    for n in names:
        if n in static:
            errors.append(f"template {template}: target {n} is also a target of the file; the file's is kept")
        elif n in taken and taken[n] != template:
            errors.append(f"template {template}: target {n} is also a target of template {taken[n]}; "
                          f"template {taken[n]}'s is kept")
        else:
            runs.append(n)
    return runs, errors


def fleet_targets(config: Config, now: datetime, names: Sequence[str] = ()) -> FleetTargets:
    """The file's targets and, discovered as the daemon discovers them (the
    template's query, asked now), each template's, under the same names; a
    name that is also the file's stays the file's. ``names``: only these
    (a name neither the file nor a template has now is a ConfigError). The
    targets of a template share one range query over their history windows
    (a template with one target asked: that target's own query)."""
    from .build import build_source

    wanted = set(names)
    out = FleetTargets([t for t in config.targets if not wanted or t.name in wanted])
    static = {t.name for t in config.targets}
    for tp in config.templates:
        if wanted <= static and wanted:
            break
        source = template_source(tp, config)
        try:
            found = discover(tp, source, now, config.base_dir)
        except Exception as exc:  # noqa: BLE001 - the other templates and the file's targets go on
            out.errors.append(f"template {tp.name}: discovery failed: {type(exc).__name__}: {exc}")
            continue
        out.errors += [f"template {tp.name}: {e}" for e in found.errors]
        runs, clashes = claimed(tp.name, found.targets, static, out.template_of)
        out.errors += clashes
        members = [(n, found.targets[n]) for n in runs if not wanted or n in wanted]
        fetch = TemplateFetch(source)
        if len(members) > 1:
            fetch.load(min(now - t.forecaster.history for _, t in members), now)
        for n, t in members:
            out.targets.append(t)
            out.sources[n] = SeriesSlice(fetch, found.labels[n], _Lazy(lambda t=t: build_source(t, config)))
            out.template_of[n] = tp.name
    missing = sorted(wanted - {t.name for t in out.targets})
    if missing and not config.templates:
        config.target(missing[0])  # the file's own error, listing the known names
    if missing:
        raise ConfigError(f"no target named {missing[0]!r}: not in the file, and no template has it now"
                          + ("".join(f" ({e})" for e in out.errors[:1])))
    return out


# ------------------------------------------------------------------- fetch
class TemplateFetch:
    """One cycle's answer to the template's query, for all its targets."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.loaded = False
        self.answer: dict[LabelSet, Series] = {}
        self.error: str | None = None

    def load(self, since: datetime, now: datetime) -> None:
        try:
            self.answer, self.error = self.source.fetch_all(since, now), None
        except Exception as exc:  # noqa: BLE001 - every target of the template then falls back
            self.answer, self.error = {}, f"{type(exc).__name__}: {exc}"
        self.loaded = True

    def clear(self) -> None:
        self.loaded, self.answer, self.error = False, {}, None


class SeriesSlice:
    """The source of one target of a template: its series out of the
    cycle's :class:`TemplateFetch`; outside a batched cycle (``forescale
    once``), its own query (the template's, keeping its label set)."""

    def __init__(self, batch: TemplateFetch, labels: LabelSet, own: Any) -> None:
        self.batch, self.labels, self.own = batch, labels, own

    def fetch(self, since: datetime | None, now: datetime) -> Series:
        if not self.batch.loaded:
            return self.own.fetch(since, now)
        if self.batch.error is not None:
            raise MetricSourceError(f"the template's query failed: {self.batch.error}", transient=True)
        got = self.batch.answer.get(self.labels)
        if got is None:
            return Series(np.empty(0, np.int64), np.empty(0), _labelset(dict(self.labels)))
        return got.since(since).until(now) if since is not None else got.until(now)


class _Lazy:
    """A source built on its first fetch (a template's target fetches from
    the batch; its own connection is only made if it is ever asked alone)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build, self._source = build, None

    def fetch(self, since: datetime | None, now: datetime) -> Any:
        if self._source is None:
            self._source = self._build()
        return self._source.fetch(since, now)


def member_target(target: TargetConfig, labels: LabelSet, fetch: TemplateFetch, store: Any, config: Config, *,
                  build_source: Callable[..., Any] | None = None,
                  build_actuator: Callable[..., Any] | None = None, acting: Any = None) -> LiveTarget:
    """A template's target in the live loop: its series from the template's
    fetch (:class:`SeriesSlice`), the template's store connection;
    ``acting``: the lock its LiveTargets share (one started beside an
    abandoned cycle)."""
    from .build import build_actuator as default_actuator, build_source as default_source

    bs, ba = build_source or default_source, build_actuator or default_actuator
    return LiveTarget(target, source=SeriesSlice(fetch, labels, _Lazy(lambda: bs(target, config))), store=store,
                      actuator=ba(target, config), acting=acting)


def shared_model_key(target: TargetConfig) -> tuple[Any, ...] | None:
    """What the file's targets that are forecast in one batched call share:
    a forecaster that predicts in batches, zero-shot on one checkpoint (its
    ``checkpoint`` parameter set, no ``finetune_epochs``: one in-memory
    network for all), no quality gate, no covariates, and one interval and
    timeout (they run as one cycle). None: the target runs alone."""
    from forecasters import registry

    fc = target.forecaster
    if not target.policy.uses_forecast or fc.quality_gate is not None or fc.init_from is not None \
            or target.covariates or not capabilities_of(registry.get(fc.name)).predicts_in_batches:
        return None
    params = fc.params.model_dump()
    if not params.get("checkpoint") or params.get("finetune_epochs"):
        return None
    return (target.interval, target.timeout, fc.name, str(params["checkpoint"]))


# ---------------------------------------------------------------- forecast
def _trim(fc: Forecast, steps: int, levels: Sequence[float]) -> tuple[Forecast | None, str | None]:
    """A forecast of the batch's (longest) horizon and levels, cut to one
    target's; a non-finite value is that target's forecast error."""
    point = fc.point[:steps]
    qs = {q: fc.quantiles[q][:steps] for q in levels if q in fc.quantiles}
    if not np.all(np.isfinite(point)) or not all(np.all(np.isfinite(a)) for a in qs.values()):
        return None, "ForecastError: the batched forecast is not finite for this target"
    return Forecast(made_at=fc.made_at, timestamps=fc.timestamps[:steps], point=point, quantiles=qs,
                    model=fc.model, model_version=fc.model_version), None


def batched_forecasts(members: Sequence[LiveTarget], cycles: Sequence[PendingCycle],
                      now: datetime) -> tuple[dict[int, tuple[Forecast | None, str | None]], int]:
    """Forecasts for the members whose forecaster class ``predicts_in_batches``
    (and no quality gate, which runs its shadows per target): each is
    fitted or updated, then one ``predict_batch`` per class, at the longest
    horizon and every level asked, cut to each target's. Returns (index ->
    (forecast, error)) and the number of batched calls. A call that fails as
    a whole is every member's forecast error (reactive fallback)."""
    out: dict[int, tuple[Forecast | None, str | None]] = {}
    groups: dict[type, list[int]] = {}
    for i, (m, c) in enumerate(zip(members, cycles)):
        f = m.runner.forecaster
        if (f is None or c.error is not None or c.inputs is None or c.inputs.fetch_error
                or m.target.forecaster.quality_gate is not None or not capabilities_of(f).predicts_in_batches):
            continue
        why = m.prepare_forecast(c)
        if why is not None:
            out[i] = (None, why)
        else:
            groups.setdefault(type(f), []).append(i)
    calls = 0
    for cls, idx in groups.items():
        steps = {i: members[i].target.forecast_steps(cycles[i].inputs.window, now)  # type: ignore[union-attr]
                 for i in idx}
        levels = sorted({q for i in idx for q in members[i].target.forecast_quantiles})
        try:
            calls += 1
            fcs = cls.predict_batch([members[i].runner.forecaster for i in idx], now, max(steps.values()), levels)
        except Exception as exc:  # noqa: BLE001 - the batch's targets fall back, each with the reason
            log.warning("batched forecast of %d targets failed: %s: %s", len(idx), type(exc).__name__, exc)
            for i in idx:
                out[i] = (None, f"batched forecast failed: {type(exc).__name__}: {exc}")
            continue
        for i, fc in zip(idx, fcs):
            if isinstance(fc, Exception):
                out[i] = (None, f"{type(fc).__name__}: {fc}")
            else:
                out[i] = _trim(fc, steps[i], members[i].target.forecast_quantiles)
    return out, calls


def refits_elsewhere(members: Sequence[LiveTarget], cycles: Sequence[PendingCycle], now: datetime,
                     executor: Any, deadline: float | None = None
                     ) -> tuple[dict[int, tuple[Forecast | None, str | None]], int, int, int]:
    """Send the due refits of the members' per-series models (not a batched
    model, no quality gate, no ``init_from`` fine-tuning, no covariates) to
    ``executor`` (or the one a zero-argument callable returns, asked only
    when a refit is due), one task per target carrying only the history it fits on,
    the forecaster's class, name and parameters; each fitted model comes back
    as bytes and becomes that target's model, which then predicts in the
    decide step as always. A task that failed or whose worker was lost is
    a failed fit of that target (:meth:`LiveTarget.take_refit`): the model
    fitted before, if any, forecasts meanwhile; with none it is that
    target's forecast error (index -> (None, reason): reactive fallback,
    never a scale-down); the others are untouched. ``deadline``: seconds the
    run may take (``executor.deadline``); a refit unfinished by then is a
    ``timeout`` failure, handled the same. A failed refit is tried again
    one interval later, then backing off (:meth:`TargetRunner.fit_failed`).
    Returns those errors, the number of refits sent, how many of them
    failed (those errors and the failures a kept model covers) and how
    many of those were past the deadline."""
    jobs = refit_jobs(members, cycles)
    if not jobs:
        return {}, 0, 0, 0
    if callable(executor) and not hasattr(executor, "run"):
        # opened only now that a refit is due (a Dask LocalCluster started
        # at every daemon start, models restored and nothing to fit)
        executor = executor()
        if executor is None:
            return {}, 0, 0, 0  # none to be had: the refits run in the cycle, as without one
    return send_refits(members, cycles, jobs, executor, deadline)


def refit_jobs(members: Sequence[LiveTarget], cycles: Sequence[PendingCycle]) -> list[tuple[int, Series]]:
    """The members whose per-series model's refit is due this cycle and may
    be made on an executor, each with the history it fits on (index,
    window); the saved model is restored first (:meth:`LiveTarget.refit_job`)."""
    jobs: list[tuple[int, Series]] = []
    for i, (m, c) in enumerate(zip(members, cycles)):
        f, fc = m.runner.forecaster, m.target.forecaster
        caps = capabilities_of(f)
        if (f is None or caps.predicts_in_batches or fc.quality_gate is not None or fc.init_from is not None
                or (caps.takes_covariates and m.covariate_sources)):
            continue
        window = m.refit_job(c)
        if window is not None:
            jobs.append((i, window))
    return jobs


def send_refits(members: Sequence[LiveTarget], cycles: Sequence[PendingCycle], jobs: Sequence[tuple[int, Series]],
                executor: Any, deadline: float | None = None
                ) -> tuple[dict[int, tuple[Forecast | None, str | None]], int, int, int]:
    """:func:`refits_elsewhere` for the jobs of :func:`refit_jobs`."""
    from .executor import Task
    from .fits import FittedModel, fit_params, fit_series

    # the history goes with its one task, not scattered (``share``): data
    # scattered to a worker that dies is lost, and the task with it
    tasks = [Task(m.target.name, (m.target.name, w, m.target.forecaster.name, fit_params(m.target),
                                  type(m.runner.forecaster)))
             for m, w in ((members[i], w) for i, w in jobs)]
    try:
        outcomes = executor.run(fit_series, tasks, deadline=deadline)
    except Exception as exc:  # noqa: BLE001 - the executor itself failed: each target's refit failed
        log.warning("refits of %d targets on the %s executor failed: %s: %s", len(tasks), executor.kind,
                    type(exc).__name__, exc)
        from .executor import TaskFailure

        outcomes = [TaskFailure(t.key, "error", f"the executor failed: {type(exc).__name__}: {exc}")
                    for t in tasks]
    out: dict[int, tuple[Forecast | None, str | None]] = {}
    failures = timeouts = 0
    for (i, window), fitted in zip(jobs, outcomes):
        why = members[i].take_refit(cycles[i], window, fitted, executor.kind)
        if why is not None:
            log.warning("target %s: %s", members[i].target.name, why, extra={"target": members[i].target.name})
            out[i] = (None, why)
        now_i = cycles[i].inputs.now  # type: ignore[union-attr]
        if not isinstance(fitted, FittedModel) or members[i].runner.primary.failed_at == now_i:
            failures += 1  # (a fitted model that does not load too)
            timeouts += getattr(fitted, "kind", None) == "timeout"
    return out, len(jobs), failures, timeouts


def run_refitting_elsewhere(live: LiveTarget, now: datetime, executor: Callable[[], Any],
                            deadline: float | None = None) -> CycleResult:
    """One cycle of a target of the file that runs alone
    (:meth:`LiveTarget.run`'s steps), its per-series model's due refit made
    on the executor ``executor()`` returns, asked only when a refit is due
    (None: it could not be opened; the refit is made here, as without one).
    The same refits, results and failures as a template's
    (:func:`refits_elsewhere`): a failed, lost or late refit leaves the
    model fitted before forecasting (with none: this target's forecast
    error, reactive fallback) and is tried again, backing off."""
    cycle = live.begin(now)
    forecast = None
    jobs = refit_jobs([live], [cycle])
    if jobs:
        ex = executor()
        if ex is not None:
            failed, _, _, _ = send_refits([live], [cycle], jobs, ex, deadline)
            forecast = failed.get(0)
    live.decide(cycle, forecast)
    return live.finish(cycle)


# ------------------------------------------------------------------- cycle
@dataclass
class BatchReport:
    """What one batched cycle did: each target's result (in the members'
    order), seconds per part (fetch, gather, forecast, decide, record, act),
    how many targets were forecast in how many batched calls, and how many
    refits were sent to the executor (and how many of them failed)."""

    results: list[CycleResult]
    seconds: dict[str, float]
    batched: int = 0
    calls: int = 0
    refits: int = 0
    refit_failures: int = 0
    #: of the failures, the refits still unfinished at the deadline
    refit_timeouts: int = 0


def _together(store: Any, cycles: Sequence[PendingCycle]) -> "_Together":
    return _Together(store, cycles)


class _Together:
    """``store.batch()`` around one part of the batched cycle; a failed
    commit becomes the error of every cycle in it (nothing of theirs was
    written), never an exception."""

    def __init__(self, store: Any, cycles: Sequence[PendingCycle]) -> None:
        self.store, self.cycles = store, cycles

    def __enter__(self) -> None:
        self._cm: Iterator[None] = self.store.batch()
        self._cm.__enter__()  # type: ignore[attr-defined]

    def __exit__(self, *exc: Any) -> bool:
        try:
            self._cm.__exit__(*exc)  # type: ignore[attr-defined]
        except StateError as err:
            for c in self.cycles:
                c.error = c.error or f"state: the batch's transaction failed: {err}"
            return exc[0] is None or isinstance(exc[1], StateError)
        return False


#: targets whose writes share one transaction: a batch's write lock is held
#: for a second or so at most (others writing to the state file, a person
#: approving a plan, wait that long, never their busy timeout)
WRITES_PER_TRANSACTION = 500


def _chunks(items: Sequence[int]) -> list[Sequence[int]]:
    return [items[k:k + WRITES_PER_TRANSACTION] for k in range(0, len(items), WRITES_PER_TRANSACTION)]


def _side_by_side(members: Sequence[LiveTarget], fn: Callable[[int], Any], idx: Sequence[int]) -> list[Any]:
    """``fn(i)`` for each index, in threads (at most ``SIDE_BY_SIDE`` at once):
    members with stores and sources of their own, so that one that waits
    on its source or its platform holds up none of the others."""
    if not idx:
        return []
    with ThreadPoolExecutor(min(len(idx), SIDE_BY_SIDE), thread_name_prefix="batch-member") as pool:
        return list(pool.map(fn, idx))


#: members of a batch without a shared store (static targets) whose begin
#: and finish run at once (each waits on its own source and platform)
SIDE_BY_SIDE = 16


def run_batch(members: Sequence[LiveTarget], now: datetime, store: Any, fetch: TemplateFetch | None = None,
              *, executor: Any = None, deadline: float | None = None,
              clock: Callable[[], float] = time.perf_counter) -> BatchReport:
    """One cycle of every member at ``now`` (the steps in the module doc).
    ``store``: the one store every member records in (a template's), its
    parts in transactions; None: each member records in its own store (the
    file's static targets on one global model), and the members' begin
    and finish run side by side (:func:`_side_by_side`), so only the
    forecast is shared. ``fetch``: the template's query, loaded once for all
    (None: each member fetches from its own source); ``executor``: where
    the per-series models' due refits run (:func:`refits_elsewhere`; None:
    in the decide step, here), within ``deadline`` seconds."""
    if store is None:
        return _run_apart(members, now, executor, deadline, clock)
    seconds: dict[str, float] = {}
    mark = clock()

    def lap(part: str) -> None:
        nonlocal mark
        t = clock()
        seconds[part] = seconds.get(part, 0.0) + t - mark
        mark = t

    try:
        if fetch is not None and members:
            fetch.load(min(m.fetch_start(now) for m in members), now)
        lap("fetch")
        cycles: list[PendingCycle | None] = [None] * len(members)
        for part in _chunks(range(len(members))):
            try:
                with store.batch():
                    for i in part:
                        if members[i].target.mode != "approve":  # approve applies approved plans in begin
                            cycles[i] = members[i].begin(now)
            except StateError as exc:  # the sample cache was not written; the cycles go on from memory
                log.error("batched cycle: a gather transaction failed: %s", exc)
        for i, m in enumerate(members):
            if cycles[i] is None:
                cycles[i] = m.begin(now)
        ready: list[PendingCycle] = cycles  # type: ignore[assignment]
        lap("gather")
        forecasts, calls = batched_forecasts(members, ready, now)
        lap("forecast")
        refits, failed, fails, late = 0, {}, 0, 0
        if executor is not None:
            failed, refits, fails, late = refits_elsewhere(members, ready, now, executor, deadline)
            forecasts.update(failed)
            lap("refit")
        for part in _chunks(range(len(members))):
            # a fit made here records its start first, durably: not inside the batch
            apart = {i for i in part if forecasts.get(i) is None and members[i].fits_here(ready[i])}
            together = [i for i in part if i not in apart]
            with _together(store, [ready[i] for i in together]):
                for i in together:
                    members[i].decide(ready[i], forecasts.get(i))
            for i in sorted(apart):
                members[i].decide(ready[i], forecasts.get(i))
        lap("decide")
        acting = set()
        for i, (m, c) in enumerate(zip(members, ready)):
            try:
                if m.acts(c):
                    acting.add(i)
            except Exception:  # noqa: BLE001 - unsure: finish it on its own
                acting.add(i)
        results: list[CycleResult | None] = [None] * len(members)
        for part in _chunks([i for i in range(len(members)) if i not in acting]):
            with _together(store, [ready[i] for i in part]):
                for i in part:
                    results[i] = members[i].finish(ready[i])
        for i, c in enumerate(ready):
            r = results[i]
            if i not in acting and r is not None and c.error is not None and r.error is None:
                r.error, r.status = c.error, "error"  # the batch's commit failed: nothing of it was written
        lap("record")
        for i in sorted(acting):
            results[i] = members[i].finish(ready[i])
        lap("act")
    finally:
        if fetch is not None:
            fetch.clear()
    batched = sum(1 for i, (fc, _) in forecasts.items() if fc is not None)
    return BatchReport(results, seconds, batched, calls, refits, fails, late)  # type: ignore[arg-type]


def _run_apart(members: Sequence[LiveTarget], now: datetime, executor: Any, deadline: float | None,
               clock: Callable[[], float]) -> BatchReport:
    """:func:`run_batch` for members with stores of their own."""
    seconds: dict[str, float] = {}
    mark = clock()

    def lap(part: str) -> None:
        nonlocal mark
        t = clock()
        seconds[part] = t - mark
        mark = t

    every = range(len(members))
    ready: list[PendingCycle] = _side_by_side(members, lambda i: members[i].begin(now), every)
    lap("gather")
    forecasts, calls = batched_forecasts(members, ready, now)
    lap("forecast")
    failed: dict[int, Any] = {}
    refits = fails = late = 0
    if executor is not None:
        failed, refits, fails, late = refits_elsewhere(members, ready, now, executor, deadline)
        forecasts.update(failed)
        lap("refit")
    for i in every:
        members[i].decide(ready[i], forecasts.get(i))
    lap("decide")
    results = _side_by_side(members, lambda i: members[i].finish(ready[i]), every)
    lap("record")
    batched = sum(1 for fc, _ in forecasts.values() if fc is not None)
    return BatchReport(results, seconds, batched, calls, refits, fails, late)


def _labelset(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


__all__ = ["BatchReport", "Discovery", "FleetTargets", "SeriesSlice", "TemplateFetch", "batched_forecasts",
           "discover", "expand", "fleet_targets", "member_target", "refit_jobs", "refits_elsewhere", "run_batch",
           "run_refitting_elsewhere", "send_refits",
           "shared_model_key", "template_source"]
