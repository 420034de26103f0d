"""The ``forescale`` command line.

Every error forescale raises on purpose is printed as one line naming the
problem; tracebacks are for bugs only. Every command that reports takes
``--json`` and then prints one JSON document to stdout (a file to write is a
separate option).

Exit status:

- 0: done;
- 1: a runtime failure: a cycle's fetch, forecast or actuation failed, the
  platform or the state file failed; the audit chain does not verify, or a
  decision row disagrees with it (``audit verify``, ``audit show``,
  ``decisions``); ``select`` where some target got no choice, ``fit`` where some target's
  model could not be fitted or saved;
- 2: a usage or configuration error: bad arguments (argparse's own), an
  invalid config file or input data, a plugin whose extra is not installed,
  the state file locked by a running daemon, a plan the workflow refuses
  (unknown, not approved, stale) — fix the call or the file;
- 130: interrupted (Ctrl-C);
- 141: stdout was closed early (``forescale decisions --json | head``): the
  output stops quietly, as for a tool ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .core.errors import ConfigError, DataError, ForescaleError, PlanError, PluginError, StateLocked
from .core.units import isoformat, parse_duration

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 0, 1, 2, 130, 141
#: errors that mean "fix the call or the file" (exit 2); every other
#: ForescaleError is a runtime failure (exit 1)
USAGE_ERRORS = (ConfigError, DataError, PluginError, StateLocked, PlanError)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: where ``pip install`` puts the deploy/ folder (pyproject's data-files)
def _deploy_dir() -> Path:
    """Where the deployment files are: installed with the package
    (``share/forescale/deploy``), or, in an editable install from a
    checkout, the checkout's ``deploy/``."""
    installed = Path(sys.prefix) / "share" / "forescale" / "deploy"
    checkout = Path(__file__).resolve().parent.parent / "deploy"
    return installed if installed.is_dir() or not checkout.is_dir() else checkout


DEPLOY_DIR = _deploy_dir()

EPILOG = """exit status: 0 done; 1 a runtime failure (a cycle, the platform, the state file);
2 a usage or configuration error (arguments, config file, input data, missing extra,
a refused plan); 130 interrupted; 141 stdout closed early (a pipe into head)."""


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def require_extra(module: str, extra: str, what: str) -> None:
    """A :class:`PluginError` (one line, exit 2) naming the extra to install
    when ``module`` cannot be imported; called before the work starts."""
    try:
        __import__(module)
    except ImportError:
        raise PluginError(f"{what} needs {module}, which is not installed: "
                          f"pip install 'forescale[{extra}]'") from None


# ------------------------------------------------------------------ helpers
def _store(args: argparse.Namespace):
    from .db import is_url
    from .store import Store, open_store

    if getattr(args, "config", None):
        from .config import load_config

        return open_store(load_config(args.config))
    if is_url(args.state):
        return open_store(args.state)
    path = Path(args.state)
    if not path.exists():
        raise ConfigError(f"no state file at {path} (give --state or --config)")
    return Store(path)


def _known_target(args: argparse.Namespace, store: Any) -> None:
    """``--target`` matched nothing: a ConfigError naming the targets there
    are if neither the state nor ``--config`` has heard of it (a typo said
    "no decisions logged yet" and exited 0); a known target with nothing
    to list passes."""
    known = set(store.targets())
    if getattr(args, "config", None):
        from .config import load_config

        cfg = load_config(args.config)
        known |= {t.name for t in cfg.targets}
        known |= {t.resource_series(r) for t in cfg.targets for r in t.resources}
    if args.target not in known:
        where = f"in {args.config} or its state" if getattr(args, "config", None) else f"in {store.path}"
        raise ConfigError(f"no target named {args.target!r} {where}; known: {', '.join(sorted(known)) or 'none'}")


def _print_decision(rec: dict[str, Any], verbose: bool = True) -> None:
    arrow = {"scale_up": "↑", "scale_down": "↓", "hold": "="}.get(rec["action"], "?")
    label = f" [{rec['capacity_label']}]" if rec.get("capacity_label") else ""
    if rec.get("audit"):  # the row disagrees with the audit chain: do not show it as genuine
        print(f"!! NOT GENUINE: {rec['id']}: {rec['audit']}; run: forescale audit show {rec['id']}")
    head = (f"{rec['at']}  {rec['target']:<14} {arrow} {rec['current']:>3} -> {rec['desired']:<3}{label}"
            f"  {rec.get('status', ''):<9} {'FALLBACK ' if rec['fallback'] else ''}"
            f"{', '.join(s['reason'] for s in rec['steps'] if s['changed'])}")
    sized_for = (rec.get("extra") or {}).get("resource")
    if sized_for:  # a target with several resources: the one that set the size
        head += f"  sized for {sized_for}"
    print(head)
    fit = (rec.get("extra") or {}).get("fit")
    if fit:  # the model's fits are failing: say what it forecasts with meanwhile
        uses = (f"forecasting with the model fitted at {fit['fitted_at']}" if fit.get("fitted_at")
                else "no model to forecast with")
        print(f"      ! model {fit['model']}: {fit['failures']} fit(s) failed, the last at {fit['failed_at']} "
              f"({fit['error']}); {uses}; next try {fit['next_try']}")
    if verbose:
        for s in rec["steps"]:
            mark = "*" if s["changed"] else " "
            print(f"      {mark} {s['name']:<14} {s['reason']:<26} {s['message']}")
    if rec.get("schedule"):
        for line in _schedule_lines(rec["schedule"], verbose):
            print(f"      {line}")


def _schedule_lines(sched: dict[str, Any], verbose: bool) -> list[str]:
    """A planned schedule, compactly: runs of equal capacity (HH:MM UTC of
    the interval each starts serving), then the expected cost."""
    from .core.types import Schedule

    s = Schedule.from_dict(sched)
    runs = []
    for first, last in s.segments():
        label = f" [{first.label}]" if first.label else ""
        what = "fixed" if first.fixed else f"ordered {first.order_at:%H:%M}"
        peak = max((st for st in s.steps if first.at <= st.at <= last.at), key=lambda st: st.p_saturated)
        risk = f", P(sat) <= {peak.p_saturated:.1%}" if verbose and not first.fixed else ""
        runs.append(f"{first.at:%H:%M}-{last.at:%H:%M} {first.capacity}{label} ({what}{risk})")
    out = ["schedule (UTC): " + ", ".join(runs)]
    if verbose:
        out.append(f"plan cost {s.total_cost:.4g} = capacity {s.capacity_cost:.4g} + risk {s.risk_cost:.4g} "
                   f"({s.risk}, penalty {s.penalty:.4g}) + changes {s.change_cost:.4g} ({s.changes}); "
                   f"lead time {int(s.lead_time.total_seconds() // 60)} m")
    return out


def _logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from .logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("cmdstanpy", "prophet", "urllib3", "botocore", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------ commands
def _duration(text: str):
    """argparse type: a duration such as ``30m`` (one clear line when bad)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: what matplotlib writes (``--plot``), by file suffix
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "webp", "tif", "tiff", "eps", "ps")


def _output_path(path: str | None, flag: str, *, plot: bool = False) -> None:
    """Check, before any work, that ``path`` can be written (its directory
    exists and is writable; for a plot, a format matplotlib writes): a
    long run that fails on its output loses what it computed."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: no directory {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {parent}")
    if plot and p.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ConfigError(f"{flag} {path}: not an image format; end it in "
                          f"{', '.join('.' + f for f in PLOT_FORMATS[:4])}, ...")


def _folds(text: str) -> int:
    """argparse type: 1 to 64 (``select --folds``; ``choices`` listed all 64)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 64")
    return n


def _window(text: str):
    """argparse type: a duration longer than zero (``--window``)."""
    d = _duration(text)
    if d.total_seconds() <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the window must be longer than zero")
    return d


def _count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def cmd_backtest(args: argparse.Namespace) -> int:
    from .backtest import DEFAULT_FORECASTER, DEFAULT_POLICY, plot, run_backtest, scenario_for, write_json
    from .config import ForecasterConfig, load_config

    target = None
    if args.config:
        cfg = load_config(args.config)
        target = cfg.target(args.target) if args.target else cfg.targets[0]
    series, resources, own = _backtest_resources(args, target)
    scenario = scenario_for(target, interval=args.interval, lead_time=args.lead_time, warmup=args.warmup,
                            target_utilization=args.baseline_utilization, resize_downtime=args.resize_downtime,
                            downtime_capacity=args.downtime_capacity, change_cost=args.change_cost,
                            threshold_window=args.threshold_window)
    # the configured policy object itself, or the default settings
    policy = target.policy if target is not None else DEFAULT_POLICY
    fcfg = target.forecaster if target is not None else DEFAULT_FORECASTER
    if args.forecaster:
        fcfg = fcfg.model_copy(update={"name": args.forecaster,
                                       "params": fcfg.params if args.forecaster == fcfg.name else {}})
        from pydantic import ValidationError

        from .config import format_validation_error

        try:
            ForecasterConfig.model_validate(fcfg.model_dump())
        except ValidationError as exc:
            raise ConfigError("--forecaster: " + "; ".join(format_validation_error(exc))) from None
    _output_path(args.json_out, "--json-out")
    _output_path(args.plot, "--plot", plot=True)
    from .progress import progress

    # one count of replayed intervals over all the policies (quiet off a terminal)
    with progress(total=None, desc="backtest (intervals replayed)", quiet=args.quiet) as bar:
        result = run_backtest(series, scenario=scenario, policy=policy, forecaster=fcfg, trace=str(args.trace),
                              anomalies=target.anomalies if target is not None else None,
                              progress=lambda _name, _t, _n, _dec: bar.update(), resources=resources,
                              resource=own)
    if args.json_out:
        write_json(result, args.json_out)
    if args.plot:
        plot(result, args.plot)
    if args.json:  # the report on stdout, nothing else there
        _print_json(result.to_dict())
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print(result.table())
    if args.json_out:
        print(f"metrics written to {args.json_out}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def _backtest_resources(args: argparse.Namespace, target: Any) -> tuple[Any, list[Any], str]:
    """The trace and the further resources of a backtest: ``--column`` names
    value columns of the trace (the first is the target's own signal),
    ``--resource NAME=PATH`` adds a resource from its own timestamp,value
    file. With ``--config`` the resources must be the target's (their
    capacity model and forecaster come from it); without, each one's
    capacity per replica is derived from its trace."""
    from .backtest import ResourceTrace
    from .sources.csv import read_csv

    columns = args.column or []
    own = columns[0] if columns else (target.resource if target is not None else "demand")
    series = read_csv(args.trace, value_column=columns[0]) if columns else read_csv(args.trace)
    data: dict[str, Any] = {c: read_csv(args.trace, value_column=c, name=c) for c in columns[1:]}
    for spec in args.resource or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--resource {spec!r}: expected NAME=PATH (a timestamp,value CSV)")
        if name in data or name == own:
            raise ConfigError(f"--resource {name}: given twice")
        data[name] = read_csv(path)
    if target is not None and (data or target.resources):
        if own != target.resource:
            raise ConfigError(f"--column {own}: the target's own signal is named {target.resource!r} "
                              "(its 'resource' setting)")
        if set(data) != set(target.resources):
            raise ConfigError(f"the target's resources are {', '.join(target.resources) or 'none'}; "
                              f"the data given is for {', '.join(data) or 'none'} (use --column or --resource "
                              "for each)")
        res = target.resources
        return series, [ResourceTrace(n, data[n], res[n].capacity_per_replica, res[n].target_utilization,
                                      res[n].forecaster, res[n].rung_capacity) for n in res], own
    return series, [ResourceTrace(n, v) for n, v in data.items()], own


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    resources: dict[str, Path] = {}
    for spec in args.resource or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in resources or name == "cpu":
            raise ConfigError(f"--resource {spec!r}: expected NAME=PATH (a timestamp,value CSV), each name once "
                              "and not 'cpu' (the demo trace's)")
        resources[name] = Path(path)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot make the directory ({exc.strerror})") from None
    return run_demo(out=out, days=args.days, verbose=not args.quiet,
                    trace=Path(args.trace) if args.trace else None, resources=resources)


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config

    try:
        cfg = load_config(args.config)
        checks: dict[str, str] = {}
        if args.check_actuators:
            from .build import build_actuator, check_actuator

            for t in cfg.targets:
                warning = check_actuator(t, build_actuator(t, cfg))
                checks[t.name] = f"warning: {warning}" if warning else "ok"
    except ForescaleError as exc:
        if args.json:  # the report on stdout, the one line on stderr as ever
            _print_json({"config": args.config, "valid": False, "error": str(exc)})
        raise
    unset = cfg.unset_env()
    if args.json:
        _print_json({"config": args.config, "valid": True, "state": cfg.state_shown,
                     "unset_env": [{"field": f, "variable": v} for f, v in unset], "targets": [
            {"name": t.name, "mode": t.mode, "interval_s": t.interval.total_seconds(), "source": t.source.type,
             "forecaster": t.forecaster.name, "actuator": t.actuator.type, "capacity": list(t.policy.bounds),
             **({"actuator_check": checks[t.name]} if t.name in checks else {})}
            for t in cfg.targets],
            "templates": [{"name": tp.name, "query": tp.source.query, "labels": list(tp.labels),
                           "discover_every_s": tp.discover_every.total_seconds(),
                           "mode": tp.prototype.mode if tp.prototype else None} for tp in cfg.templates]})
        return 0
    for t in cfg.targets:
        if t.name in checks:
            print(f"{t.name}: actuator {t.actuator.type}: {checks[t.name]}")
    for t in cfg.targets:
        lo, hi = t.policy.bounds
        print(f"{t.name}: mode {t.mode}, every {t.interval}, source {t.source.type}, forecaster "
              f"{t.forecaster.name}, actuator {t.actuator.type}, capacity [{lo}, {hi}]")
    for tp in cfg.templates:
        print(f"template {tp.name}: one target per series of {tp.source.query!r}, every {tp.prototype.interval}, "
              f"rediscovered every {tp.discover_every} (list them: forescale targets --config {args.config})")
    for field, var in unset:
        print(f"warning: {field}: environment variable {var} is not set here; forescale run (and console, "
              "for its own settings) refuse to start without it")
    more = f", {len(cfg.templates)} template(s)" if cfg.templates else ""
    print(f"{args.config}: valid ({len(cfg.targets)} target(s){more}); state {cfg.state_shown}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    """What each template expands to now: one target per series its query
    returns (asked of the source now), with the labels it came from."""
    from .config import _secret_name, load_config
    from .core.clock import SystemClock
    from .fleet import claimed, discover, template_source

    cfg = load_config(args.config)
    chosen = [tp for tp in cfg.templates if not args.template or tp.name == args.template]
    if args.template and not chosen:
        raise ConfigError(f"no template named {args.template!r}; known: "
                          f"{', '.join(tp.name for tp in cfg.templates) or 'none'}")
    now = SystemClock().now()
    doc: dict[str, Any] = {"config": args.config, "at": isoformat(now), "templates": []}
    failed = False
    static, taken = {t.name for t in cfg.targets}, {}
    for tp in cfg.templates:
        found = discover(tp, template_source(tp, cfg), now, cfg.base_dir)
        # a name the file or an earlier template has is not this template's
        runs, clashes = claimed(tp.name, found.targets, static, taken)
        taken.update({n: tp.name for n in runs})
        if tp not in chosen:
            continue
        errors = found.errors + [c.split(": ", 1)[1] for c in clashes]
        failed = failed or bool(errors)
        doc["templates"].append({"name": tp.name, "query": tp.source.query, "errors": errors, "targets": [
            {"name": n, "labels": dict(sorted(found.labels[n])), "mode": found.targets[n].mode,
             # (what the labels filled in; a field that may hold a secret is never printed)
             "actuator": {k: v for k, v in
                          found.targets[n].actuator.model_dump(mode="json", exclude_defaults=True).items()
                          if not _secret_name(k)}}
            for n in runs]})
    if args.json:
        _print_json(doc)
        return EXIT_FAILURE if failed else EXIT_OK
    for entry in doc["templates"]:
        print(f"template {entry['name']}: {len(entry['targets'])} target(s) from {entry['query']!r}")
        for t in entry["targets"]:
            labels = ", ".join(f'{k}="{v}"' for k, v in t["labels"].items())
            print(f"  {t['name']}  {{{labels}}}  mode {t['mode']}, actuator {t['actuator']}")
        for err in entry["errors"]:
            print(f"  error: {err}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_once(args: argparse.Namespace) -> int:
    from .build import build_targets, check_actuator
    from .core.clock import SystemClock
    from .config import load_config
    from .store import open_store

    cfg = load_config(args.config)
    if args.target and not cfg.templates:
        cfg.target(args.target)
    clock = SystemClock()
    rc = EXIT_OK
    report = []

    def results(store: Any) -> Any:
        """Each static target's cycle, then each template's batched cycle."""
        nonlocal rc
        from .fleet import (TemplateFetch, claimed, discover, member_target, run_batch, shared_model_key,
                            template_source)

        static = [t.name for t in cfg.targets]
        groups: dict[Any, list[Any]] = {}
        for lt in build_targets(cfg, store, [args.target] if args.target else None):
            warning = check_actuator(lt.target, lt.actuator)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            groups.setdefault(shared_model_key(lt.target) or lt.target.name, []).append(lt)
        for members in groups.values():
            if len(members) == 1:
                yield members[0], members[0].run(clock.now())
            else:  # the targets on one global model: one batched forecast, as the daemon does
                yield from zip(members, run_batch(members, clock.now(), store).results)
        if args.target in static:
            return

        seen = False
        taken: dict[str, str] = {}
        for tp in cfg.templates:
            now = clock.now()  # read once for the template's batched cycle
            source = template_source(tp, cfg)
            found = discover(tp, source, now, cfg.base_dir)
            runs, clashes = claimed(tp.name, found.targets, static, taken)
            for err in [f"template {tp.name}: {e}" for e in found.errors] + clashes:
                print(err, file=sys.stderr)
                rc = EXIT_FAILURE
            taken.update({n: tp.name for n in runs})
            fetch = TemplateFetch(source)
            members = [member_target(found.targets[n], found.labels[n], fetch, store, cfg) for n in runs
                       if not args.target or n == args.target]
            seen = seen or bool(members)
            yield from zip(members, run_batch(members, now, store, fetch).results)
        if args.target and not seen:
            raise ConfigError(f"no target named {args.target!r}: not in the file, and no template has it now")

    with open_store(cfg) as store:
        store.lock()
        for lt, res in results(store):
            failed = {what: getattr(res, what) for what in ("fetch_error", "actuation_error", "error")
                      if getattr(res, what)}
            if failed:
                rc = EXIT_FAILURE
            rec = None
            if res.decision is not None:
                rec = res.decision.to_dict()
                rec["status"] = res.status
            # dry-run: what the actuator would do (its describe())
            would = res.details.get("plan") if res.status == "dry-run" else None
            if args.json:
                report.append({"target": lt.target.name, "status": res.status, "decision": rec,
                               "plan": res.plan.to_dict() if res.plan is not None else None,
                               **({"would": would} if would else {}),
                               "reconciled": list(res.details.get("reconciled", [])),
                               "plans": list(res.details.get("plans", [])), **failed})
                continue
            for note in res.details.get("reconciled", []):
                print(f"reconcile {lt.target.name}: {note}")
            for note in res.details.get("plans", []):
                print(f"{lt.target.name}: {note}")
            if rec is not None:
                _print_decision(rec, verbose=args.verbose)
            if would and rec is not None and rec["desired"] != rec["current"]:
                print(f"  would: {would.get('summary')}")
            for what, text in failed.items():
                print(f"  {what.replace('_', ' ')}: {text}")
            if res.plan is not None:
                print(f"  plan {res.plan.id} waits for approval: forescale approve {res.plan.id}")
    if args.json:
        _print_json(report)
    return rc


def cmd_console(args: argparse.Namespace) -> int:
    """The web console and approval API for a state file, standalone."""
    if args.hash_token:
        from .server import token_digest

        token = sys.stdin.readline().strip()
        if not token:
            raise ForescaleError("--hash-token reads the token from standard input; got nothing")
        print(token_digest(token))
        return 0
    if not args.config:
        raise ForescaleError("console needs --config FILE")
    from .auth import Security, check_bind, install_redaction
    from .config import load_config
    from .console import create_console

    cfg = load_config(args.config)
    _logging(args.log_level, cfg.log_format)
    security = Security.from_config(cfg)
    install_redaction(security.redactor)
    listen = args.listen or cfg.console.listen
    host, port = check_bind(listen, security.users, "--listen" if args.listen else "console.listen")
    return serve_console(create_console(cfg, security), host, port, cfg.console)


def serve_console(app: Any, host: str, port: int, console: Any) -> int:
    """Serve ``app`` with uvicorn in the foreground until SIGINT/SIGTERM
    (TLS when ``console.tls_cert``/``tls_key`` are set)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ForescaleError(f"console: cannot listen on {host}:{port}: {exc.strerror}") from None
    tls = console.tls_cert is not None
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            ssl_certfile=str(console.tls_cert) if tls else None,
                            ssl_keyfile=str(console.tls_key) if tls else None)
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("forescale").info("forescale console on %s://%s:%d/", "https" if tls else "http", shown,
                                        sock.getsockname()[1])
    print(f"forescale console on {'https' if tls else 'http'}://{shown}:{sock.getsockname()[1]}/", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


class _People:
    """The daemon's side of approvals: notifications after each cycle
    (:class:`engine.notify.PlanNotices` over the plans' transitions, and
    :func:`engine.notify.notify_result`), and the web console mounted at
    ``/console`` on the daemon's server. Secrets are redacted from every log
    line."""

    def __init__(self, cfg: Any) -> None:
        from .auth import Security, install_redaction

        self.cfg = cfg
        self.security = Security.from_config(cfg)
        install_redaction(self.security.redactor)
        self.notifier = self.notices = self.store = None
        if cfg.notify is not None:
            from .core.clock import SystemClock
            from .notify import Notifier, PlanNotices
            from .store import open_store

            self.notifier = Notifier.from_config(cfg.notify, links=self.security.links.maker(SystemClock().now),
                                                 redactor=self.security.redactor)
            self.store = open_store(cfg)
            if not self.store.shared:  # a shared state's replicas tell the shards they lead (lead())
                self.notices = PlanNotices(self.notifier, self.store, catch_up=cfg.notify.catch_up,
                                           save_as_sent=True)  # (its own store: the channels' threads may write)

    def lead(self, leases: Any) -> None:
        """The notices of a replica: only about the shards ``leases`` holds."""
        if self.notifier is not None and self.notices is None:
            from .notify import PlanNotices

            self.notices = PlanNotices(self.notifier, self.store, leases, catch_up=self.cfg.notify.catch_up,
                                       save_as_sent=True)

    def settle(self) -> None:
        """Before the leases are handed back: send what is queued and save
        the cursors, so the next holder starts after what was told."""
        if self.notices is not None:
            self.notifier.flush(5.0)
            self.notices.save(self.store)

    def on_result(self, then: Any) -> Any:
        if self.notifier is None:
            return then

        def hook(res: Any) -> None:
            from .notify import notify_result

            try:
                notify_result(self.notifier, res)
                if self.notices is not None:
                    self.notices.poll(self.store)
            except Exception:  # noqa: BLE001 - telling people must never stop the loop
                logging.getLogger("forescale.notify").exception("notifications after a cycle failed")
            if then is not None:
                then(res)
        return hook

    def console_routes(self, config: Any) -> list:
        """``/console`` on the daemon's server. Behind the server's bearer
        auth (``server.auth``, which a browser cannot send) the console is
        mounted only when it has users of its own (``console.users``): it
        then authenticates every request itself (login, session, CSRF) and
        is left out of the bearer check (:meth:`own_auth`)."""
        if self.cfg.server.auth is not None and not self.security.users:
            logging.getLogger("forescale").info(
                "server.auth is set and console.users is empty: the web console is not mounted on the "
                "daemon's server; configure console.users, or run forescale console")
            return []
        from starlette.routing import Mount

        from .console import create_console

        return [Mount("/console", app=create_console(config, self.security))]

    def own_auth(self) -> tuple[str, ...]:
        """Mounted prefixes that authenticate themselves (see console_routes)."""
        return ("/console",) if self.cfg.server.auth is not None and self.security.users else ()

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()  # sends what is queued first
            try:
                if self.notices is not None:
                    self.notices.save(self.store)  # so the next start resumes after it
            finally:
                self.store.close()


def cmd_run(args: argparse.Namespace) -> int:
    from .api import TargetsView
    from .config import load_config
    from .daemon import Daemon
    from .metrics import EngineMetrics
    from .server import check_listen, serve_config

    cfg = load_config(args.config)
    _logging(args.log_level, cfg.log_format)
    if cfg.server.enabled:
        check_listen(cfg.server)  # a port in use: one line before the state is opened or created
    metrics = EngineMetrics()
    from .remote_write import FollowingWriter

    if cfg.server.remote_write is not None:
        require_extra("cramjam", "remote-write", "server.remote_write")
    running: list[Daemon] = []
    # fed by the daemon's per-result callback, sends from its own thread, and
    # follows server.remote_write across reloads (the daemon's running config)
    writer = FollowingWriter(lambda: (running[0].config if running else cfg).server.remote_write, metrics)
    people = _People(cfg)  # notifications and the console's security
    if people.notifier is not None:
        metrics.watch_notifier(people.notifier)
    try:
        daemon = Daemon(args.config, metrics=metrics,  # takes the state lock (one daemon per state file)
                        on_result=people.on_result(writer.on_result))
    except BaseException:
        writer.close(0)
        people.close()
        raise
    running.append(daemon)
    if daemon.leases is not None:
        people.lead(daemon.leases)  # each replica tells about the shards it leads
        daemon.before_release.append(people.settle)
    server = None
    try:
        if cfg.server.enabled:
            # one server: /metrics, the probes, the forecast API and the web
            # console (over the running config, so a reload is seen)
            server = serve_config(cfg.server, metrics, readiness=daemon.ready,
                                  view=TargetsView(lambda: daemon.config, daemon.discovered_targets),
                                  routes=people.console_routes(lambda: daemon.config),
                                  own_auth=people.own_auth())
        daemon.install_signals()
    except BaseException:
        daemon.shutdown(0)
        writer.close(0)
        people.close()
        raise
    logging.getLogger("forescale").info(
        "forescale running %d target(s)%s, state %s%s", len(cfg.targets),
        f" and {len(cfg.templates)} template(s) (targets from label sets)" if cfg.templates else "", cfg.state_shown,
        f", HTTP on {server.url} (/metrics, /api/v1)" if server is not None else "")
    try:
        daemon.run(tick=args.tick)  # returns after SIGTERM/SIGINT, running cycles finished or abandoned
    finally:
        if server is not None:
            server.close()
        people.close()
        writer.close()
    logging.getLogger("forescale").info("forescale stopped")
    return 0


def cmd_decisions(args: argparse.Namespace) -> int:
    from .audit import check_rows

    with _store(args) as store:
        recs = store.decisions(args.target, limit=args.limit)
        if args.target and not recs:
            _known_target(args, store)
        marks = check_rows(store, recs)
    for rec in recs:
        rec["audit"] = marks.get(rec["id"])  # None: the row matches its audit record
    bad = sum(1 for r in recs if r["audit"])
    if args.json:
        _print_json(recs)
        return EXIT_FAILURE if bad else EXIT_OK
    if not recs:
        print("no decisions logged yet")
    for rec in reversed(recs):
        _print_decision(rec, verbose=args.verbose)
    if bad:
        print(f"{bad} decision row(s) disagree with the audit chain; run: forescale audit verify", file=sys.stderr)
    return EXIT_FAILURE if bad else EXIT_OK


def cmd_plans(args: argparse.Namespace) -> int:
    """List plans. A listing writes nothing: a plan past its expiry shows as
    expired (left out of what waits), and the daemon's next cycle of its
    target records the transition (:mod:`engine.plans`, "querying")."""
    from .audit import history_problems, plan_problems
    from .core.clock import SystemClock
    from .plans import as_of, past_expiry, pending

    now = SystemClock().now()
    with _store(args) as store:
        stored = store.plans(args.target) if args.all else [v.plan for v in pending(store, args.target, now=now)]
        if args.target and not stored:
            _known_target(args, store)
        # each row shown is checked against the audit chain, as decisions does
        forged = {pid: why for pid, (_, why) in plan_problems(store, [p.id for p in stored]).items()}
        if args.history:
            history = {p.id: store.plan_history(p.id) for p in stored}
            edited = history_problems(store, [p.id for p in stored])
    unrecorded = {p.id for p in stored if past_expiry(p, now)}
    plans = [as_of(p, now) for p in stored]
    bad = len(forged) + (len(edited) if args.history else 0)
    if args.json:
        out = [p.to_dict() for p in plans]
        for d in out:
            if d["id"] in unrecorded:
                d["expiry_recorded"] = False
            d["audit"] = forged.get(d["id"])  # None: the row matches its audit record
        if args.history:
            for d in out:
                d["history"] = [{**t.to_dict(), "audit": edited.get(t.seq)} for t in history[d["id"]]]
        _print_json(out)
        return EXIT_FAILURE if bad else EXIT_OK
    if not plans:
        print("no plans waiting" if not args.all else "no plans")
    for p in plans:
        who = f" by {p.actor} via {p.channel}" if p.actor else ""
        late = " (its expiry is recorded at the target's next cycle)" if p.id in unrecorded else ""
        print(f"{p.id}  {p.target:<14} {p.from_capacity} -> {p.to_capacity}  {p.status.value:<10}{who} "
              f"made {isoformat(p.created_at)} expires {isoformat(p.expires_at)}{late}  {p.description}")
        if p.id in forged:
            print(f"  !! NOT GENUINE: plan {p.id}: {forged[p.id]}")
        for t in history.get(p.id, []) if args.history else []:
            print(f"      {isoformat(t.at)}  {t.from_status.value if t.from_status else '-':>10} -> "
                  f"{t.to_status.value:<10} {t.identity or '':<22} {t.channel or '':<7} {t.comment or t.reason}")
            if t.seq in edited:
                print(f"      !! NOT GENUINE: {edited[t.seq]}")
        if args.history:
            for seq in sorted(k for k, why in edited.items() if k not in {t.seq for t in history[p.id]}
                              and why.startswith(f"plan {p.id}:")):
                print(f"      !! NOT GENUINE: {edited[seq]}")
    if bad:
        print(f"{bad} plan row(s) disagree with the audit chain; run: forescale audit verify", file=sys.stderr)
    return EXIT_FAILURE if bad else EXIT_OK


def _comment(args: argparse.Namespace) -> str:
    """The comment recorded with a decision on a plan. ``--actor`` is free
    text and authenticates nothing: it is kept only as part of the comment."""
    text = args.comment or ""
    if getattr(args, "actor", None):
        text = f"[on behalf of {args.actor}] {text}".strip()
    return text


def _target_for_plan(args: argparse.Namespace, store, plan_id: str):
    """The plan's target as configured *now*, and its actuator."""
    from .build import build_actuator
    from .config import load_config

    if not args.config:
        raise ConfigError("applying a plan needs --config (the target's configuration in force and its actuator)")
    cfg = load_config(args.config)
    target = cfg.target(store.plan(plan_id).target)
    return target, build_actuator(target, cfg)


def cmd_approve(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan, approve, cli_identity

    with _store(args) as store:
        now = SystemClock().now()
        who = cli_identity()
        # what --apply needs is checked before the approval is recorded: a
        # call that fails must not have approved anything
        target, act = _target_for_plan(args, store, args.id) if args.apply else (None, None)
        p = approve(store, args.id, now, identity=who, channel="cli", comment=_comment(args))
        if not args.json:
            print(f"plan {p.id} approved by {p.actor}: {p.target} {p.from_capacity} -> {p.to_capacity}")
        if args.apply and not _take_turn(store):
            if not args.json:
                print("a daemon runs on this state file: it applies the plan at the target's next cycle")
        elif args.apply:
            p = apply_plan(store, act, args.id, now, target, identity=who, channel="cli")
            if not args.json:
                print(f"plan {p.id} applied")
        elif not args.json:
            print(f"the daemon applies it at the target's next cycle (or run: forescale apply {p.id} "
                  f"--config {args.config or 'FILE'})")
    if args.json:
        _print_json(p.to_dict())
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import cli_identity, reject

    with _store(args) as store:
        p = reject(store, args.id, SystemClock().now(), identity=cli_identity(), channel="cli",
                   comment=_comment(args))
    if args.json:
        _print_json(p.to_dict())
    else:
        print(f"plan {p.id} rejected by {p.actor}")
    return 0


def _take_turn(store: Any) -> bool:
    """Take the state file's lock for an apply from the command line, so it
    never acts beside a running daemon (which holds the lock and applies
    approved plans itself). False when a daemon holds it."""
    from .core.errors import StateLocked

    try:
        store.lock()
    except StateLocked:
        return False
    return True


def cmd_apply(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan, cli_identity

    with _store(args) as store:
        if not _take_turn(store):
            from .core.errors import StateLocked

            raise StateLocked(f"a daemon runs on {store.path}: it applies approved plans itself at the "
                                 "target's next cycle (one process acts on a target at a time)")
        target, act = _target_for_plan(args, store, args.id)
        p = apply_plan(store, act, args.id, SystemClock().now(), target, identity=cli_identity(), channel="cli")
    if args.json:
        _print_json(p.to_dict())
    else:
        print(f"plan {p.id} applied: {p.target} -> {p.to_capacity}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .audit import verify, verify_tail

    with _store(args) as store:
        status = verify_tail(store, args.tail) if args.tail is not None else verify(store)
    if args.json:
        _print_json(status.to_dict())
    else:
        print(status.summary())
    return EXIT_OK if status.ok else EXIT_FAILURE


def cmd_audit_export(args: argparse.Namespace) -> int:
    from .audit import export
    from .core.units import parse_time

    def when(flag: str, value: str | None):
        try:
            return parse_time(value) if value else None
        except ValueError:
            raise DataError(f"{flag} {value!r} is not a time; give ISO 8601, e.g. 2024-03-01T00:00:00Z") from None

    since, until = when("--since", args.since), when("--until", args.until)
    with _store(args) as store:
        if args.out:
            try:
                f = open(args.out, "w", encoding="utf-8", newline="")
            except OSError as exc:
                raise DataError(f"--out {args.out}: cannot write it ({exc.strerror})") from None
            with f:
                n = export(store, f, args.format, since=since, until=until)
            print(f"{n} audit record(s) written to {args.out}", file=sys.stderr)
        else:
            export(store, sys.stdout, args.format, since=since, until=until)
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    from .audit import check_rows, reconstruct

    with _store(args) as store:
        story = reconstruct(store, args.id)
        row = store.decision(args.id)
        mark = check_rows(store, [row])[args.id] if row is not None else None
    if story is None:
        raise DataError(f"the audit log holds nothing about decision {args.id!r}")
    if args.json:
        _print_json({**story, "row_check": mark})
        return EXIT_OK if story["verified"] and not mark else EXIT_FAILURE
    d = story["decision"] or {}
    verdict = ("SOME RECORDS DO NOT VERIFY" if not story["verified"] else
               "every record verifies; THE ROW DOES NOT" if mark else "every record verifies")
    print(f"decision {args.id}  ({verdict})")
    if mark:
        print(f"  !! the decisions row disagrees with the chain: {mark}")
    if d:
        ctx = d.get("context", {})
        print(f"  {d['target']} {d['current']} -> {d['desired']} ({d['action']}), mode {d.get('mode')}, "
              f"model {d.get('model') or '-'} {d.get('model_version') or ''}".rstrip())
        print(f"  config sha256 {ctx.get('config_sha256', '-')}")
        if ctx.get("inputs"):
            i = ctx["inputs"]
            print(f"  inputs sha256 {i['sha256']} ({i['valid']}/{i['points']} points, {i['first']} .. {i['last']})")
        if ctx.get("forecast"):
            f = ctx["forecast"]
            print(f"  forecast {f['model']} {f['model_version']}: {f['horizon']} steps, max point "
                  f"{f['point_max']}, max quantiles {f['quantiles_max']}")
        for s in d.get("steps", []):
            print(f"      {'*' if s['changed'] else ' '} {s['name']:<14} {s['reason']:<26} {s['message']}")
    for r in story["records"]:
        p = r["payload"]
        if r["kind"] in ("plan_transition", "approval"):
            what = f"plan {p.get('plan_id')} {p.get('from') or '-'} -> {p.get('to')}"
            who = f" by {p['identity']} via {p['channel']}" if p.get("identity") else ""
            why = f": {p.get('comment') or p.get('reason')}" if (p.get("comment") or p.get("reason")) else ""
            line = f"{what}{who}{why}"
        elif r["kind"] == "actuation":
            line = (f"actuation: requested {p['requested']}, observed {p['observed']}, "
                    f"verified {p['verified']}, request ids {', '.join(p['request_ids']) or '-'}")
        else:
            line = f"{r['kind']}: status {p.get('status')}"
        print(f"  #{r['seq']:<5} {r['at']}  {'ok ' if r['verified'] else 'BAD'}  {line}")
    return EXIT_OK if story["verified"] and not mark else EXIT_FAILURE


def cmd_accuracy(args: argparse.Namespace) -> int:
    from .accuracy import accuracy_table, plot_accuracy
    from .feedback import mape_meaningless, mape_warning

    if args.plot:
        require_extra("matplotlib", "plot", "accuracy --plot")
        _output_path(args.plot, "--plot", plot=True)
    with _store(args) as store:
        rows = accuracy_table(store, args.target, window=args.window)
        if args.target and not rows:
            _known_target(args, store)
        if args.json:
            _print_json(rows)
        else:
            if not rows:
                print("no forecasts with observed values yet")
            hdr = (f"{'target':<14}{'horizon':>9}{'n':>7}{'mae':>11}{'mape%':>9}{'smape%':>9}{'mase':>8}"
                   f"{'bias':>11}{'coverage':>10}")
            print(hdr)
            meaningless = []
            for r in rows:
                pct = {k: 100 * r.get(k, float("nan")) for k in ("mape", "smape")}
                mark = "~" if mape_meaningless(r) else ""
                if mark:
                    meaningless.append(f"{r['target']} {r['horizon']}")
                print(f"{r['target']:<14}{r['horizon']:>9}{int(r['n']):>7}{r.get('mae', float('nan')):>11.4g}"
                      f"{mark + format(pct['mape'], '.2f'):>9}{pct['smape']:>9.2f}{r.get('mase', float('nan')):>8.3f}"
                      f"{r.get('bias', float('nan')):>11.4g}{r.get('coverage', float('nan')):>10.3f}")
            if meaningless:
                print(f"~ MAPE is meaningless for {', '.join(meaningless)}: {mape_warning()}; "
                      "read sMAPE or MASE there", file=sys.stderr)
        if args.plot:
            plot_accuracy(store, args.target, args.plot, window=args.window)
            print(f"plot written to {args.plot}")
    return 0


def cmd_train_global(args: argparse.Namespace) -> int:
    """Train one network across the history of several targets and save it:
    the level-free ``lstm_global`` (``--model lstm_global``, the default: a
    target uses it with ``forecaster: {name: lstm_global, params:
    {checkpoint: MODEL}}``), or the older multi-series ``lstm`` network for
    ``forecaster.init_from`` (``--model lstm``, the cold-start path)."""
    from pydantic import ValidationError

    from .build import build_source
    from .core.clock import SystemClock
    from .config import load_config
    from .progress import progress

    try:
        from forecasters.lstm import GlobalLSTM, LevelFreeLSTM
    except ImportError as exc:
        raise PluginError(f"train-global needs torch: pip install 'forescale[lstm]' ({exc})") from None
    _output_path(args.out, "--out")  # before the training, not after it
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from None
    cls = LevelFreeLSTM if args.model == "lstm_global" else GlobalLSTM
    try:
        model = cls(params)
    except ValidationError as exc:
        from .config import format_validation_error

        raise ConfigError(f"--params for {args.model}: " + "; ".join(format_validation_error(exc))) from None
    cfg = load_config(args.config)
    targets = [cfg.target(n) for n in args.target] if args.target else list(cfg.targets)
    now = SystemClock().now()
    histories = {}
    for t in targets:
        series = build_source(t, cfg).fetch(now - t.forecaster.history, now).regular(t.interval)
        if not args.json:
            print(f"{t.name}: {series.n_valid} samples every {t.interval}", flush=True)
        histories[t.name] = series
    # each network of an ensemble trains its own epochs (early stopping may end each sooner)
    epochs = model.params.epochs * getattr(model.params, "ensemble", 1)
    with progress(epochs, "train-global: epochs", args.quiet) as bar:
        if cls is LevelFreeLSTM:
            model.fit(histories, on_epoch=lambda epoch, epochs: bar.update())
        else:
            model.on_epoch = lambda epoch, epochs: bar.update()
            model.fit(histories)
    model.save(args.out)
    use = (f"forecaster: {{name: lstm_global, params: {{checkpoint: {args.out}}}}}" if cls is LevelFreeLSTM
           else f"forecaster: {{name: lstm, init_from: {args.out}}}")
    if args.json:
        _print_json({"model": model.version, "kind": args.model, "out": args.out, "use": use,
                     "targets": {n: {"samples": s.n_valid} for n, s in histories.items()}})
        return 0
    print(f"global model {model.version} trained on {len(histories)} target(s), saved to {args.out}")
    print(f"use it: {use}")
    return 0


def _executor_config(cfg: Any, args: argparse.Namespace) -> Any:
    """The config's ``executor:`` section with the command line's overrides."""
    from .config import ExecutorConfig
    from pydantic import ValidationError

    over: dict[str, Any] = {}
    if args.address is not None and args.executor == "local":
        raise ConfigError("--address is a Dask scheduler's: give it with --executor dask (or alone)")
    if args.executor:
        over["kind"] = args.executor
        if args.executor != cfg.executor.kind:  # a different kind: none of the file's placement applies
            over.update(address=None, local_cluster=False, workers=None)
    if args.address is not None:
        over.update(address=args.address, local_cluster=False, kind="dask")
    if args.workers is not None:
        over["workers"] = args.workers
    merged = {**cfg.executor.model_dump(), **over}
    if merged["kind"] == "dask" and merged["address"] is None:
        merged["local_cluster"] = True  # --executor dask with no address: a LocalCluster here
    try:
        return ExecutorConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["executor", *map(str, first["loc"])])
        raise ConfigError(f"{field} (the config with --executor/--workers/--address): "
                          f"{first['msg'].removeprefix('Value error, ')}") from None


def _on_executor(ex_cfg: Any, total: int, desc: str, quiet: bool, work: Any) -> tuple[Any, Any, int]:
    """``work(executor, on_done)`` on the executor ``ex_cfg`` names, with a
    progress bar of ``total`` tasks; with nothing to do, no executor is
    started. Returns the work's result, the run's stats and the worker count."""
    from .executor import LocalExecutor, RunStats, open_executor
    from .progress import progress

    if total == 0:
        return work(LocalExecutor(workers=1), None), RunStats(), 0
    with open_executor(ex_cfg) as ex, progress(total, desc, quiet) as bar:
        return work(ex, bar.update), ex.stats, ex.workers


def _executor_json(ex_cfg: Any, workers: int, stats: Any) -> dict[str, Any]:
    return {"kind": ex_cfg.kind, "workers": workers, "tasks": stats.tasks, "failed_tasks": stats.failed,
            "seconds": round(stats.seconds, 3)}


def _when(args: argparse.Namespace):
    from .core.clock import SystemClock
    from .core.units import parse_time

    try:
        return parse_time(args.at) if args.at else SystemClock().now()
    except ValueError as exc:
        raise ConfigError(f"--at: {exc}") from None


def _fleet(cfg: Any, args: argparse.Namespace, now: Any) -> Any:
    """The targets ``select`` and ``fit`` work on: the file's and those the
    templates expand to now (``--target``: only those); what a template
    could not discover is printed to stderr (the status is then 1)."""
    from .fleet import fleet_targets

    fleet = fleet_targets(cfg, now, args.target or ())
    for err in fleet.errors:
        print(f"error: {err}", file=sys.stderr)
    return fleet


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit every target's configured forecaster on the executor and save the
    models as checkpoints, so the daemon starts from them."""
    from .config import load_config
    from .fits import FittedModel, fit_jobs_for, fit_models, save_checkpoint

    cfg = load_config(args.config)
    now = _when(args)
    fleet = _fleet(cfg, args, now)
    targets = fleet.targets
    jobs, skipped = fit_jobs_for(cfg, fleet, now)
    ex_cfg = _executor_config(cfg, args)
    fitted, stats, workers = _on_executor(ex_cfg, len(jobs), "fit: series", args.quiet or args.json,
                                          lambda ex, done: fit_models(jobs, ex, on_done=done))
    # where the daemon looks for them: beside the state file, or a
    # PostgreSQL state's shared models table (every replica reads it)
    from contextlib import nullcontext

    from .checkpoints import FileShelf, shelf_for
    from .store import open_store

    rows: dict[str, dict[str, Any]] = {}
    with (open_store(cfg) if cfg.state_url is not None else nullcontext()) as store:
        if store is None:
            shelf = FileShelf(str(cfg.state_path))
            state = str(shelf.folder)  # the folder beside the state file, where the daemon reads them
        else:
            state, shelf = f"{store.path} (its models table)", shelf_for(store)
        for t in targets:
            res = fitted.get(t.name)
            if isinstance(res, FittedModel):
                if save_checkpoint(t, shelf, res, now):
                    rows[t.name] = {"fitted": res.version, "seconds": round(res.seconds, 3)}
                else:
                    rows[t.name] = {"error": "the checkpoint could not be written (see the log line)"}
            elif res is not None:
                rows[t.name] = {"error": f"{res.reason}" + (f" ({res.kind})" if res.kind == "lost" else "")}
            else:
                rows[t.name] = {"skipped": skipped[t.name]}
    failed = bool(fleet.errors) or any("error" in r for r in rows.values())
    if args.json:
        _print_json({"executor": _executor_json(ex_cfg, workers, stats),
                     "state": state, "targets": rows, "errors": fleet.errors})
        return EXIT_FAILURE if failed else 0
    for name, r in rows.items():
        what = (f"fitted {r['fitted']} in {r['seconds']:.2f} s" if "fitted" in r
                else f"not fitted: {r.get('error') or r['skipped']}")
        print(f"{name:<24} {what}")
    print(f"executor {ex_cfg.kind} ({workers} worker(s)): {stats.tasks} fits in {stats.seconds:.1f} s; "
          f"checkpoints in {state}")
    return EXIT_FAILURE if failed else 0


def cmd_select(args: argparse.Namespace) -> int:
    """Choose each target's forecaster by rolling-origin backtest, the tasks
    spread over the executor; print the choices, optionally write a config
    that uses them."""
    from .config import load_config
    from .selection import check_write_config, jobs_for, select_models, write_config

    cfg = load_config(args.config)
    if args.write_config:
        _output_path(args.write_config, "--write-config")
        check_write_config(Path(args.config), Path(args.write_config))  # before the backtests, not after
    now = _when(args)
    fleet = _fleet(cfg, args, now)
    targets = fleet.targets
    jobs, results = jobs_for(cfg, fleet, now, folds=args.folds, names=args.candidate or ())
    ex_cfg = _executor_config(cfg, args)
    total = sum(len(j.params.candidates) * args.folds for j in jobs)
    chosen, stats, workers = _on_executor(ex_cfg, total, "select: backtest tasks", args.quiet or args.json,
                                          lambda ex, done: select_models(jobs, ex, on_done=done))
    results.update(chosen)
    selections = {t.name: results[t.name] for t in targets}
    changed = (write_config(Path(args.config), Path(args.write_config), selections, fleet.template_of)
               if args.write_config else [])
    failed = [s for s in selections.values() if not s.ok] or fleet.errors
    if args.json:
        _print_json({"executor": _executor_json(ex_cfg, workers, stats),
                     "targets": [s.to_json() for s in selections.values()], "errors": fleet.errors,
                     **({"written": {"path": args.write_config, "targets": changed}} if args.write_config else {})})
        return EXIT_FAILURE if failed else 0
    print(f"{'target':<24} {'choice':<22} {'score':>8}  others")
    for s in selections.values():
        if not s.ok:
            print(f"{s.target:<24} {'-':<22} {'-':>8}  no choice, keeps its forecaster: {s.reason}")
            continue
        others = ", ".join(f"{k} {v:.4f}" for k, v in sorted(s.scores.items(), key=lambda kv: kv[1])
                           if k != s.choice.key)
        skipped = "; ".join(f"{k} skipped ({v})" for k, v in s.skipped.items())
        print(f"{s.target:<24} {s.choice.key:<22} {s.scores[s.choice.key]:>8.4f}  "
              f"{'; '.join(x for x in (others, skipped) if x)}")
    print(f"executor {ex_cfg.kind} ({workers} worker(s)): {stats.tasks} tasks in {stats.seconds:.1f} s, "
          f"{stats.failed} failed")
    if args.write_config:
        print(f"config with the chosen forecasters of {len(changed)} target(s) written to {args.write_config}")
    return EXIT_FAILURE if failed else 0


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forescale", description="Predictive autoscaling decision engine.",
                                epilog=f"{EPILOG}\n\ndeployment files (systemd unit, Grafana dashboard, alert rules, "
                                       f"Kubernetes RBAC): {DEPLOY_DIR}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="forescale 0.1.0", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print the report as JSON to stdout")

    d = sub.add_parser("demo", help="replay a bundled real trace through the full loop (no cloud, no Prometheus)")
    d.add_argument("--out", default="forescale-demo", help="folder for the state file, decision log and plot")
    d.add_argument("--days", type=float, default=5.0, help="days of the trace to replay live (after warm-up)")
    d.add_argument("--trace", default=None, help=argparse.SUPPRESS)
    d.add_argument("--resource", action="append", metavar="NAME=PATH",
                   help="a further demand signal of the demo's target over the same days (repeat): the size is "
                   "the larger of what the CPU and it need")
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("backtest", help="compare the oracle, a baseline and the policy on a trace")
    b.add_argument("trace", help="CSV with timestamp,value (or the columns --column names)")
    b.add_argument("--column", action="append", metavar="NAME",
                   help="a value column of the trace, one per resource (repeat; the first is the target's own "
                   "signal): the policy sizes for the resource that needs the most")
    b.add_argument("--resource", action="append", metavar="NAME=PATH",
                   help="a further resource from its own timestamp,value CSV (repeat)")
    b.add_argument("--forecaster", help="forecaster name (default: the policy's)")
    b.add_argument("--config", help="replay this config's policy and forecaster (and its backtest: section)")
    b.add_argument("--target", help="which target of --config (default: the first)")
    b.add_argument("--interval", type=_duration, help="resample the trace to this step (default: the "
                   "target's interval, else 5m)")
    b.add_argument("--lead-time", type=_duration, help="time until a change serves (default: the policy's "
                   "lead_time, else 10m)")
    b.add_argument("--warmup", type=_duration, help="run but do not score this long at the start (default 2d)")
    b.add_argument("--baseline-utilization", type=float, help="target utilization of the reactive HPA "
                   "baseline and the oracle (default: the policy's, else 0.7)")
    b.add_argument("--resize-downtime", type=_duration, help="after a change lands, this long the capacity "
                   "is down (a VPS resize; default 0)")
    b.add_argument("--downtime-capacity", choices=("unavailable", "old"), help="what serves during a resize "
                   "downtime: nothing (default) or the old size")
    b.add_argument("--change-cost", type=float, help="money per capacity change, reported beside cost")
    b.add_argument("--threshold-window", type=_duration, help="vertical baseline: utilization above 80 %% "
                   "(below 20 %%) this long moves a rung (default 10m)")
    b.add_argument("--json", action="store_true", help="print the metrics as JSON to stdout (instead of the table)")
    b.add_argument("--json-out", metavar="PATH", help="also write the metrics as JSON to this file")
    b.add_argument("--plot", help="write a PNG here")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_backtest)

    v = sub.add_parser("validate", help="check a config file")
    v.add_argument("--config", required=True, help="the YAML config file to check")
    v.add_argument("--check-actuators", action="store_true",
                   help="also check each actuator's credentials and target on its platform")
    json_flag(v)
    v.set_defaults(func=cmd_validate)

    tg = sub.add_parser("targets", help="list the targets each template expands to now (asks its query)")
    tg.add_argument("--config", required=True, help="the YAML config file")
    tg.add_argument("--template", help="only this template (default: every template)")
    json_flag(tg)
    tg.set_defaults(func=cmd_targets)

    r = sub.add_parser("run", help="the daemon: every target's cycle on its interval")
    r.add_argument("--config", required=True, help="the YAML config file (reloaded on SIGHUP or change)")
    r.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="the least severe log records written to stderr (default: INFO)")
    r.add_argument("--tick", type=float, default=0.5, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    o = sub.add_parser("once", help="one cycle of every (or one) target, then exit (cron, debugging)")
    o.add_argument("--config", required=True, help="the YAML config file")
    o.add_argument("--target", help="run only this target (default: every target)")
    o.add_argument("-v", "--verbose", action="store_true", help="print every policy step")
    json_flag(o)
    o.set_defaults(func=cmd_once)

    def state_args(sp: argparse.ArgumentParser, target: bool = True) -> None:
        sp.add_argument("--config", help="config file (its state file is used)")
        sp.add_argument("--state", default="forescale.db", help="state file (default: forescale.db)")
        if target:
            sp.add_argument("--target", help="only this target (default: every target)")

    dl = sub.add_parser("decisions", help="list logged decisions with their steps and reasons")
    state_args(dl)
    json_flag(dl)
    dl.add_argument("--limit", type=_count, default=50, help="the most recent decisions to list (N >= 1; "
                                                            "default: 50)")
    dl.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="one line per decision")
    dl.set_defaults(func=cmd_decisions)

    pl = sub.add_parser("plans", help="plans waiting for approval")
    state_args(pl)
    pl.add_argument("--all", action="store_true", help="all plans, whatever their state")
    pl.add_argument("--history", action="store_true", help="each plan's transitions: who, when, how, why")
    json_flag(pl)
    pl.set_defaults(func=cmd_plans)

    for name, fn, hlp in (("approve", cmd_approve, "approve a plan (recorded as your OS account, unix:NAME)"),
                          ("reject", cmd_reject, "reject a plan, or withdraw its approval before it is applied"),
                          ("apply", cmd_apply, "apply an approved plan now (re-checked against the config)")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("id", help="the plan's id (from forescale plans)")
        state_args(sp)
        if name != "apply":
            sp.add_argument("--comment", "--note", "--reason", dest="comment", help="recorded with the decision")
            sp.add_argument("--actor", help="free text kept in the comment (the identity recorded is the OS "
                                            "account running this command)")
        if name == "approve":
            sp.add_argument("--apply", action="store_true", help="apply right away (needs --config)")
        json_flag(sp)
        sp.set_defaults(func=fn)

    au = sub.add_parser("audit", help="the tamper-evident audit log: verify, export, show")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    # the chain is one for the whole state: its commands take no --target
    av = ausub.add_parser("verify", help="check the hash chain; names the first bad record (exit 1)")
    state_args(av, target=False)
    av.add_argument("--tail", type=_count, help="check only the newest N records (N >= 1)")
    json_flag(av)
    av.set_defaults(func=cmd_audit_verify)
    ae = ausub.add_parser("export", help="write the records for auditors")
    state_args(ae, target=False)
    ae.add_argument("--since", help="from this time (ISO 8601, e.g. 2024-03-01T00:00:00Z)")
    ae.add_argument("--until", help="before this time")
    ae.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ae.add_argument("--out", help="file to write (default: standard output)")
    ae.set_defaults(func=cmd_audit_export)
    ash = ausub.add_parser("show", help="one decision end to end: inputs, steps, plan history, approver, actuation")
    ash.add_argument("id", help="decision id (target@time, as forescale decisions shows)")
    state_args(ash, target=False)
    json_flag(ash)
    ash.set_defaults(func=cmd_audit_show)

    g = sub.add_parser("train-global", help="train one global LSTM across targets (lstm_global's checkpoint, "
                                            "or lstm's init_from)")
    g.add_argument("--config", required=True, help="the YAML config file whose targets' history is read")
    g.add_argument("--target", action="append", help="a target to train on (repeat; default: all)")
    g.add_argument("--out", required=True, help="where to save the model")
    g.add_argument("--model", choices=("lstm_global", "lstm"), default="lstm_global",
                   help="lstm_global: the level-free global model (params.checkpoint of forecaster lstm_global); "
                        "lstm: the multi-series lstm network (forecaster.init_from of lstm)")
    g.add_argument("--params", help='the model\'s parameters as JSON, e.g. \'{"epochs": 8}\'')
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar (none is drawn unless stderr "
                                                             "is a terminal)")
    json_flag(g)
    g.set_defaults(func=cmd_train_global)

    def executor_options(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--config", required=True, help="the YAML config file whose targets' history is read")
        sp.add_argument("--target", action="append",
                        help=f"a target to {what}, the file's or a template's (repeat; default: all)")
        sp.add_argument("--at", help="use the history up to this time (ISO 8601; default: now)")
        sp.add_argument("--executor", choices=("local", "dask"), help="where the tasks run (default: the config's "
                                                                      "executor: section; dask with no address "
                                                                      "starts a LocalCluster here)")
        sp.add_argument("--workers", type=int, help="local pool processes, or LocalCluster workers")
        sp.add_argument("--address", help="a Dask scheduler, tcp://host:port (implies --executor dask)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    sel = sub.add_parser("select", help="choose each target's forecaster by rolling-origin backtest "
                                        "(on the executor: a process pool or a Dask cluster)")
    executor_options(sel, "evaluate")
    sel.add_argument("--candidate", action="append", metavar="NAME",
                     help="a forecaster to try, with its default parameters (repeat; default: an auto target's "
                          "candidates, otherwise the configured forecaster and the auto defaults)")
    sel.add_argument("--folds", type=_folds, default=4, metavar="N",
                     help="blocks of backtest origins, each refitted and run as its own task (default 4; "
                          "1 scores exactly as the auto forecaster does)")
    sel.add_argument("--write-config", metavar="PATH",
                     help="write a copy of the config that uses each target's choice (validated first)")
    sel.add_argument("--json", action="store_true", help="print the choices and scores as JSON to stdout")
    sel.set_defaults(func=cmd_select)

    fit = sub.add_parser("fit", help="fit every target's forecaster on the executor and save the models as "
                                     "checkpoints the daemon starts from")
    executor_options(fit, "fit")
    fit.add_argument("--json", action="store_true", help="print each target's fitted model or reason as JSON")
    fit.set_defaults(func=cmd_fit)

    c = sub.add_parser("console", help="serve the web console and approval API for a config's state file")
    c.add_argument("--config", help="config file (its state file, console: and notify: sections)")
    c.add_argument("--listen", help="host:port (default: console.listen, 127.0.0.1:9465)")
    c.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="log level of the console server (default: INFO)")
    c.add_argument("--hash-token", action="store_true",
                   help="read a token on standard input, print its sha256 for console.users[].token_sha256")
    c.set_defaults(func=cmd_console)

    a = sub.add_parser("accuracy", help="rolling forecast accuracy per target and horizon")
    state_args(a)
    a.add_argument("--window", type=_window, default="7d", help="how far back to score forecasts (default: 7d)")
    json_flag(a)
    a.add_argument("--plot", help="draw predicted band vs actual to this PNG")
    a.set_defaults(func=cmd_accuracy)
    for command in sub.choices.values():  # every command's --help ends with the exit codes
        command.epilog = EPILOG
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def _warning_line(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """A warning as one line on stderr (``warning: ...``), as the CLI's own
    warnings read; Python's form printed the file, line number and source
    line of the warning call (pydantic's main.py for a config setting)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status as the module docstring lists it."""
    import warnings

    warnings.showwarning = _warning_line
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "console"):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("cmdstanpy", "prophet"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here when the output was buffered
        return rc
    except BrokenPipeError:
        # the reader went away (| head): stop quietly. Python would flush
        # stdout again at exit and print the same error, so point the file
        # descriptor at devnull (the recipe of the signal module's docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except USAGE_ERRORS as exc:
        print(f"forescale: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ForescaleError as exc:
        print(f"forescale: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        # (an action under way is in the decision log as its intent: the
        # next cycle reconciles it with what the platform shows)
        acts = args.command in ("once", "apply", "approve")
        print(f"forescale: interrupted ({args.command})" + (
            "; an action it had begun is in the decision log as its intent, and the target's next cycle "
            "reconciles it with what the platform shows (forescale decisions)" if acts else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
