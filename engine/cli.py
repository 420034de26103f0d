"""The ``forescale`` command line.

Every error forescale raises on purpose is printed as one line naming the
problem; tracebacks are for bugs only. Every command that reports takes
``--json`` and then prints one JSON document to stdout (a file to write is a
separate option).

Exit status:

- 0: done;
- 1: a runtime failure: a cycle's fetch, forecast or actuation failed, the
  platform or the state file failed;
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
import getpass
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
DEPLOY_DIR = Path(sys.prefix) / "share" / "forescale" / "deploy"

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
    from .store import Store

    if getattr(args, "config", None):
        from .config import load_config

        return Store(load_config(args.config).state_path)
    path = Path(args.state)
    if not path.exists():
        raise ConfigError(f"no state file at {path} (give --state or --config)")
    return Store(path)


def _print_decision(rec: dict[str, Any], verbose: bool = True) -> None:
    arrow = {"scale_up": "↑", "scale_down": "↓", "hold": "="}.get(rec["action"], "?")
    label = f" [{rec['capacity_label']}]" if rec.get("capacity_label") else ""
    head = (f"{rec['at']}  {rec['target']:<14} {arrow} {rec['current']:>3} -> {rec['desired']:<3}{label}"
            f"  {rec.get('status', ''):<9} {'FALLBACK ' if rec['fallback'] else ''}"
            f"{', '.join(s['reason'] for s in rec['steps'] if s['changed'])}")
    print(head)
    if verbose:
        for s in rec["steps"]:
            mark = "*" if s["changed"] else " "
            print(f"      {mark} {s['name']:<14} {s['reason']:<26} {s['message']}")


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
def cmd_backtest(args: argparse.Namespace) -> int:
    from .backtest import DEFAULT_POLICY, Scenario, plot, run_backtest, write_json
    from .config import ForecasterConfig, load_config
    from .sources.csv import read_csv

    series = read_csv(args.trace)
    policy, fcfg = DEFAULT_POLICY, None
    scenario = Scenario()
    if args.config:
        cfg = load_config(args.config)
        t = cfg.target(args.target) if args.target else cfg.targets[0]
        policy = t.policy.model_dump(exclude={"capacity_per_replica", "min_replicas", "max_replicas",
                                              "lead_time", "hold"})
        fcfg = t.forecaster
        scenario = Scenario(interval=t.interval, lead_time=t.policy.lead_time,
                            capacity_per_replica=t.policy.capacity_per_replica,
                            target_utilization=t.policy.target_utilization if t.policy.kind == "reactive"
                            else Scenario().target_utilization,
                            min_replicas=t.policy.bounds[0], max_replicas=t.policy.bounds[1])
    if args.forecaster:
        from .backtest import DEFAULT_FORECASTER

        base = fcfg or DEFAULT_FORECASTER
        fcfg = ForecasterConfig(**{**base.model_dump(), "name": args.forecaster,
                                   "params": {} if args.forecaster != base.name else base.params})
    result = run_backtest(series, scenario=scenario, policy=policy, forecaster=fcfg, trace=str(args.trace))
    print(result.table())
    if args.json:
        write_json(result, args.json)
        print(f"metrics written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=Path(args.out), days=args.days, verbose=not args.quiet, trace=Path(args.trace) if args.trace else None)


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
    if args.json:
        _print_json({"config": args.config, "valid": True, "state": str(cfg.state_path), "targets": [
            {"name": t.name, "mode": t.mode, "interval_s": t.interval.total_seconds(), "source": t.source.type,
             "forecaster": t.forecaster.name, "actuator": t.actuator.type, "capacity": list(t.policy.bounds),
             **({"actuator_check": checks[t.name]} if t.name in checks else {})}
            for t in cfg.targets]})
        return 0
    for t in cfg.targets:
        if t.name in checks:
            print(f"{t.name}: actuator {t.actuator.type}: {checks[t.name]}")
    for t in cfg.targets:
        lo, hi = t.policy.bounds
        print(f"{t.name}: mode {t.mode}, every {t.interval}, source {t.source.type}, forecaster "
              f"{t.forecaster.name}, actuator {t.actuator.type}, capacity [{lo}, {hi}]")
    print(f"{args.config}: valid ({len(cfg.targets)} target(s)); state file {cfg.state_path}")
    return 0


def cmd_once(args: argparse.Namespace) -> int:
    from .build import build_targets, check_actuator
    from .core.clock import SystemClock
    from .config import load_config
    from .store import Store

    cfg = load_config(args.config)
    if args.target:
        cfg.target(args.target)
    clock = SystemClock()
    rc = EXIT_OK
    report = []
    with Store(cfg.state_path) as store:
        store.lock()
        for lt in build_targets(cfg, store, [args.target] if args.target else None):
            warning = check_actuator(lt.target, lt.actuator)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            res = lt.run(clock.now())
            failed = {what: getattr(res, what) for what in ("fetch_error", "actuation_error", "error")
                      if getattr(res, what)}
            if failed:
                rc = EXIT_FAILURE
            rec = None
            if res.decision is not None:
                rec = res.decision.to_dict()
                rec["status"] = res.status
            if args.json:
                report.append({"target": lt.target.name, "status": res.status, "decision": rec,
                               "plan": res.plan.to_dict() if res.plan is not None else None,
                               "reconciled": list(res.details.get("reconciled", [])), **failed})
                continue
            for note in res.details.get("reconciled", []):
                print(f"reconcile {lt.target.name}: {note}")
            if rec is not None:
                _print_decision(rec, verbose=args.verbose)
            for what, text in failed.items():
                print(f"  {what.replace('_', ' ')}: {text}")
            if res.plan is not None:
                print(f"  plan {res.plan.id} waits for approval: forescale approve {res.plan.id}")
    if args.json:
        _print_json(report)
    return rc


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import Daemon
    from .metrics import EngineMetrics

    cfg = load_config(args.config)
    _logging(args.log_level, cfg.log_format)
    metrics = EngineMetrics()
    daemon = Daemon(args.config, metrics=metrics)  # takes the state lock (one daemon per state file)
    server = None
    try:
        if cfg.server.enabled:
            host, _, port = cfg.server.listen.rpartition(":")
            try:
                server = metrics.serve(host or "127.0.0.1", int(port), readiness=daemon.ready)
            except OSError as exc:
                raise ForescaleError(f"server.listen {cfg.server.listen}: cannot listen: {exc.strerror}") from None
        daemon.install_signals()
    except BaseException:
        daemon.shutdown(0)
        raise
    logging.getLogger("forescale").info(
        "forescale running %d target(s), state %s%s", len(cfg.targets), cfg.state_path,
        f", metrics on http://{cfg.server.listen}/metrics" if server is not None else "")
    try:
        daemon.run(tick=args.tick)  # returns after SIGTERM/SIGINT, running cycles finished or abandoned
    finally:
        if server is not None:
            server.close()
    logging.getLogger("forescale").info("forescale stopped")
    return 0


def cmd_decisions(args: argparse.Namespace) -> int:
    with _store(args) as store:
        recs = store.decisions(args.target, limit=args.limit)
    if args.json:
        _print_json(recs)
        return 0
    if not recs:
        print("no decisions logged yet")
    for rec in reversed(recs):
        _print_decision(rec, verbose=args.verbose)
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    from .plans import expire_plans
    from .core.clock import SystemClock
    from .core.types import PlanStatus

    with _store(args) as store:
        expire_plans(store, args.target, SystemClock().now())
        plans = store.plans(args.target, None if args.all else PlanStatus.PENDING)
        if args.all is False:
            plans += store.plans(args.target, PlanStatus.APPROVED)
    if args.json:
        _print_json([p.to_dict() for p in plans])
        return 0
    if not plans:
        print("no plans waiting" if not args.all else "no plans")
    for p in plans:
        print(f"{p.id}  {p.target:<14} {p.from_capacity} -> {p.to_capacity}  {p.status.value:<9} "
              f"made {isoformat(p.created_at)} expires {isoformat(p.expires_at)}  {p.description}")
    return 0


def _actor(args: argparse.Namespace) -> str:
    return args.actor or os.environ.get("FORESCALE_ACTOR") or getpass.getuser()


def _actuator_for_plan(args: argparse.Namespace, store, plan_id: str):
    from .build import build_actuator
    from .config import load_config

    if not args.config:
        raise ConfigError("applying a plan needs --config (to reach the target's actuator)")
    cfg = load_config(args.config)
    plan = store.plan(plan_id)
    return build_actuator(cfg.target(plan.target), cfg)


def cmd_approve(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan, approve

    with _store(args) as store:
        now = SystemClock().now()
        p = approve(store, args.id, now, _actor(args), args.note or "")
        if not args.json:
            print(f"plan {p.id} approved by {p.actor}: {p.target} {p.from_capacity} -> {p.to_capacity}")
        if args.apply:
            act = _actuator_for_plan(args, store, args.id)
            p = apply_plan(store, act, args.id, now)
            if not args.json:
                print(f"plan {p.id} applied")
        elif not args.json:
            print("the daemon applies it at the target's next cycle (or run: forescale apply ID --config FILE)")
    if args.json:
        _print_json(p.to_dict())
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import reject

    with _store(args) as store:
        p = reject(store, args.id, SystemClock().now(), _actor(args), args.note or "")
    if args.json:
        _print_json(p.to_dict())
    else:
        print(f"plan {p.id} rejected by {p.actor}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan

    with _store(args) as store:
        act = _actuator_for_plan(args, store, args.id)
        p = apply_plan(store, act, args.id, SystemClock().now())
    if args.json:
        _print_json(p.to_dict())
    else:
        print(f"plan {p.id} applied: {p.target} -> {p.to_capacity}")
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    from .accuracy import accuracy_table, plot_accuracy

    if args.plot:
        require_extra("matplotlib", "plot", "accuracy --plot")
    with _store(args) as store:
        rows = accuracy_table(store, args.target, window=parse_duration(args.window))
        if args.json:
            _print_json(rows)
        else:
            if not rows:
                print("no forecasts with observed values yet")
            hdr = f"{'target':<14}{'horizon':>9}{'n':>7}{'mae':>11}{'mape%':>9}{'mase':>8}{'bias':>11}{'coverage':>10}"
            print(hdr)
            for r in rows:
                print(f"{r['target']:<14}{r['horizon']:>9}{int(r['n']):>7}{r.get('mae', float('nan')):>11.4g}"
                      f"{r.get('mape', float('nan')):>9.2f}{r.get('mase', float('nan')):>8.3f}"
                      f"{r.get('bias', float('nan')):>11.4g}{r.get('coverage', float('nan')):>10.3f}")
        if args.plot:
            plot_accuracy(store, args.target, args.plot, window=parse_duration(args.window))
            print(f"plot written to {args.plot}")
    return 0


def cmd_train_global(args: argparse.Namespace) -> int:
    """Train one LSTM across the history of several targets and save it, for
    ``forecaster.init_from`` (cold start) and for batched forecasting."""
    from .build import build_source
    from .core.clock import SystemClock
    from .config import load_config
    from .progress import progress

    try:
        from forecasters.lstm import GlobalLSTM
    except ImportError as exc:
        raise PluginError(f"train-global needs torch: pip install 'forescale[lstm]' ({exc})") from None
    cfg = load_config(args.config)
    targets = [cfg.target(n) for n in args.target] if args.target else list(cfg.targets)
    now = SystemClock().now()
    histories = {}
    for t in targets:
        series = build_source(t, cfg).fetch(now - t.forecaster.history, now).regular(t.interval)
        if not args.json:
            print(f"{t.name}: {series.n_valid} samples every {t.interval}", flush=True)
        histories[t.name] = series
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from None
    model = GlobalLSTM(params)
    with progress(model.params.epochs, "train-global: epochs", args.quiet) as bar:
        model.on_epoch = lambda epoch, epochs: bar.update()
        model.fit(histories)
    model.save(args.out)
    if args.json:
        _print_json({"model": model.version, "out": args.out,
                     "targets": {n: {"samples": s.n_valid} for n, s in histories.items()}})
        return 0
    print(f"global model {model.version} trained on {len(histories)} target(s), saved to {args.out}")
    print(f"use it: forecaster: {{name: lstm, init_from: {args.out}}}")
    return 0


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
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("backtest", help="compare oracle, reactive and predictive on a trace")
    b.add_argument("trace", help="CSV with timestamp,value")
    b.add_argument("--forecaster", help="forecaster name (default: the policy's)")
    b.add_argument("--config", help="take the policy and forecaster from this config")
    b.add_argument("--target", help="which target of --config")
    b.add_argument("--json", help="write the metrics as JSON here")
    b.add_argument("--plot", help="write a PNG here")
    b.set_defaults(func=cmd_backtest)

    v = sub.add_parser("validate", help="check a config file")
    v.add_argument("--config", required=True, help="the YAML config file to check")
    v.add_argument("--check-actuators", action="store_true",
                   help="also check each actuator's credentials and target on its platform")
    json_flag(v)
    v.set_defaults(func=cmd_validate)

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

    def state_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config file (its state file is used)")
        sp.add_argument("--state", default="forescale.db", help="state file (default: forescale.db)")
        sp.add_argument("--target", help="only this target (default: every target)")

    dl = sub.add_parser("decisions", help="list logged decisions with their steps and reasons")
    state_args(dl)
    json_flag(dl)
    dl.add_argument("--limit", type=int, default=50, help="the most recent decisions to list (default: 50)")
    dl.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="one line per decision")
    dl.set_defaults(func=cmd_decisions)

    pl = sub.add_parser("plans", help="plans waiting for approval")
    state_args(pl)
    pl.add_argument("--all", action="store_true", help="all plans, whatever their state")
    json_flag(pl)
    pl.set_defaults(func=cmd_plans)

    for name, fn, hlp in (("approve", cmd_approve, "approve a plan"), ("reject", cmd_reject, "reject a plan"),
                          ("apply", cmd_apply, "apply an approved plan now")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("id", help="the plan's id (from forescale plans)")
        state_args(sp)
        if name != "apply":
            sp.add_argument("--actor", help="who (default: $FORESCALE_ACTOR or the login name)")
            sp.add_argument("--note", help="a note kept with the plan in the audit record")
        if name == "approve":
            sp.add_argument("--apply", action="store_true", help="apply right away (needs --config)")
        json_flag(sp)
        sp.set_defaults(func=fn)

    g = sub.add_parser("train-global", help="train one LSTM across targets (for init_from / cold start)")
    g.add_argument("--config", required=True, help="the YAML config file whose targets' history is read")
    g.add_argument("--target", action="append", help="a target to train on (repeat; default: all)")
    g.add_argument("--out", required=True, help="where to save the model")
    g.add_argument("--params", help='LSTM parameters as JSON, e.g. \'{"epochs": 8}\'')
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar (none is drawn unless stderr "
                                                             "is a terminal)")
    json_flag(g)
    g.set_defaults(func=cmd_train_global)

    a = sub.add_parser("accuracy", help="rolling forecast accuracy per target and horizon")
    state_args(a)
    a.add_argument("--window", default="7d", help="how far back to score forecasts (default: 7d)")
    json_flag(a)
    a.add_argument("--plot", help="draw predicted band vs actual to this PNG")
    a.set_defaults(func=cmd_accuracy)
    for command in sub.choices.values():  # every command's --help ends with the exit codes
        command.epilog = EPILOG
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status as the module docstring lists it."""
    args = build_parser().parse_args(argv)
    if args.command not in ("run",):
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
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
