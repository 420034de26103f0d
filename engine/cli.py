"""The ``forescale`` command line.

Every error forescale raises on purpose is printed as one line naming the
problem (exit status 2); tracebacks are for bugs only.
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

from .core.errors import ForescaleError
from .core.units import isoformat, parse_duration



# ------------------------------------------------------------------ helpers
def _store(args: argparse.Namespace):
    from .store import Store

    if getattr(args, "config", None):
        from .config import load_config

        return Store(load_config(args.config).state_path)
    path = Path(args.state)
    if not path.exists():
        raise ForescaleError(f"no state file at {path} (give --state or --config)")
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


def cmd_backtest(args: argparse.Namespace) -> int:
    from .backtest import DEFAULT_FORECASTER, DEFAULT_POLICY, plot, run_backtest, scenario_for, write_json
    from .config import ForecasterConfig, load_config
    from .sources.csv import read_csv

    series = read_csv(args.trace)
    target = None
    if args.config:
        cfg = load_config(args.config)
        target = cfg.target(args.target) if args.target else cfg.targets[0]
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
        ForecasterConfig.model_validate(fcfg.model_dump())
    progress = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bars: dict[str, Any] = {}

        def progress(name: str, t: int, n: int, _dec: Any) -> None:
            bar = bars.get(name) or bars.setdefault(name, tqdm(total=n, desc=name, unit="interval", leave=False))
            bar.update(1)
            if t == n - 1:
                bar.close()
    result = run_backtest(series, scenario=scenario, policy=policy, forecaster=fcfg, trace=str(args.trace),
                          progress=progress)
    for note in result.notes:
        print(f"note: {note}")
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

    cfg = load_config(args.config)
    if args.check_actuators:
        from .build import build_actuator, check_actuator

        for t in cfg.targets:
            warning = check_actuator(t, build_actuator(t, cfg))
            print(f"{t.name}: actuator {t.actuator.type}: " + (f"warning: {warning}" if warning else "ok"))
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
    rc = 0
    with Store(cfg.state_path) as store:
        store.lock()
        for lt in build_targets(cfg, store, [args.target] if args.target else None):
            warning = check_actuator(lt.target, lt.actuator)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            res = lt.run(clock.now())
            for note in res.details.get("reconciled", []):
                print(f"reconcile {lt.target.name}: {note}")
            if res.decision is not None:
                rec = res.decision.to_dict()
                rec["status"] = res.status
                _print_decision(rec, verbose=args.verbose)
            for what in ("fetch_error", "actuation_error", "error"):
                if getattr(res, what):
                    print(f"  {what.replace('_', ' ')}: {getattr(res, what)}")
                    rc = 1
            if res.plan is not None:
                print(f"  plan {res.plan.id} waits for approval: forescale approve {res.plan.id}")
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
        print(json.dumps(recs, indent=2, default=str))
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
        print(json.dumps([p.to_dict() for p in plans], indent=2))
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
        raise ForescaleError("applying a plan needs --config (to reach the target's actuator)")
    cfg = load_config(args.config)
    plan = store.plan(plan_id)
    return build_actuator(cfg.target(plan.target), cfg)


def cmd_approve(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan, approve

    with _store(args) as store:
        now = SystemClock().now()
        p = approve(store, args.id, now, _actor(args), args.note or "")
        print(f"plan {p.id} approved by {p.actor}: {p.target} {p.from_capacity} -> {p.to_capacity}")
        if args.apply:
            act = _actuator_for_plan(args, store, args.id)
            p = apply_plan(store, act, args.id, now)
            print(f"plan {p.id} applied")
        else:
            print("the daemon applies it at the target's next cycle (or run: forescale apply ID --config FILE)")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import reject

    with _store(args) as store:
        p = reject(store, args.id, SystemClock().now(), _actor(args), args.note or "")
    print(f"plan {p.id} rejected by {p.actor}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .core.clock import SystemClock
    from .plans import apply_plan

    with _store(args) as store:
        act = _actuator_for_plan(args, store, args.id)
        p = apply_plan(store, act, args.id, SystemClock().now())
    print(f"plan {p.id} applied: {p.target} -> {p.to_capacity}")
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    from .accuracy import accuracy_table, plot_accuracy

    with _store(args) as store:
        rows = accuracy_table(store, args.target, window=parse_duration(args.window))
        if args.json:
            print(json.dumps(rows, indent=2))
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

    try:
        from forecasters.lstm import GlobalLSTM
    except ImportError as exc:
        raise ForescaleError(f"train-global needs torch: pip install 'forescale[lstm]' ({exc})") from None
    cfg = load_config(args.config)
    targets = [cfg.target(n) for n in args.target] if args.target else list(cfg.targets)
    now = SystemClock().now()
    histories = {}
    for t in targets:
        series = build_source(t, cfg).fetch(now - t.forecaster.history, now).regular(t.interval)
        print(f"{t.name}: {series.n_valid} samples every {t.interval}")
        histories[t.name] = series
    params = json.loads(args.params) if args.params else {}
    model = GlobalLSTM(params)
    model.fit(histories)
    model.save(args.out)
    print(f"global model {model.version} trained on {len(histories)} target(s), saved to {args.out}")
    print(f"use it: forecaster: {{name: lstm, init_from: {args.out}}}")
    return 0


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forescale", description="Predictive autoscaling decision engine.")
    p.add_argument("--version", action="version", version="forescale 0.1.0")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="replay a bundled real trace through the full loop (no cloud, no Prometheus)")
    d.add_argument("--out", default="forescale-demo", help="folder for the state file, decision log and plot")
    d.add_argument("--days", type=float, default=5.0, help="days of the trace to replay live (after warm-up)")
    d.add_argument("--trace", default=None, help=argparse.SUPPRESS)
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("backtest", help="compare the oracle, a baseline and the policy on a trace")
    b.add_argument("trace", help="CSV with timestamp,value")
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
    b.add_argument("--json", help="write the metrics as JSON here")
    b.add_argument("--plot", help="write a PNG here")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_backtest)

    v = sub.add_parser("validate", help="check a config file")
    v.add_argument("--config", required=True)
    v.add_argument("--check-actuators", action="store_true",
                   help="also check each actuator's credentials and target on its platform")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="the daemon: every target's cycle on its interval")
    r.add_argument("--config", required=True)
    r.add_argument("--log-level", default="INFO")
    r.add_argument("--tick", type=float, default=0.5, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    o = sub.add_parser("once", help="one cycle of every (or one) target, then exit (cron, debugging)")
    o.add_argument("--config", required=True)
    o.add_argument("--target")
    o.add_argument("-v", "--verbose", action="store_true", help="print every policy step")
    o.set_defaults(func=cmd_once)

    def state_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config file (its state file is used)")
        sp.add_argument("--state", default="forescale.db", help="state file (default: forescale.db)")
        sp.add_argument("--target")

    dl = sub.add_parser("decisions", help="list logged decisions with their steps and reasons")
    state_args(dl)
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="one line per decision")
    dl.set_defaults(func=cmd_decisions)

    pl = sub.add_parser("plans", help="plans waiting for approval")
    state_args(pl)
    pl.add_argument("--all", action="store_true", help="all plans, whatever their state")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plans)

    for name, fn, hlp in (("approve", cmd_approve, "approve a plan"), ("reject", cmd_reject, "reject a plan"),
                          ("apply", cmd_apply, "apply an approved plan now")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("id")
        state_args(sp)
        if name != "apply":
            sp.add_argument("--actor", help="who (default: $FORESCALE_ACTOR or the login name)")
            sp.add_argument("--note")
        if name == "approve":
            sp.add_argument("--apply", action="store_true", help="apply right away (needs --config)")
        sp.set_defaults(func=fn)

    g = sub.add_parser("train-global", help="train one LSTM across targets (for init_from / cold start)")
    g.add_argument("--config", required=True)
    g.add_argument("--target", action="append", help="a target to train on (repeat; default: all)")
    g.add_argument("--out", required=True, help="where to save the model")
    g.add_argument("--params", help='LSTM parameters as JSON, e.g. \'{"epochs": 8}\'')
    g.set_defaults(func=cmd_train_global)

    a = sub.add_parser("accuracy", help="rolling forecast accuracy per target and horizon")
    state_args(a)
    a.add_argument("--window", default="7d")
    a.add_argument("--json", action="store_true")
    a.add_argument("--plot", help="draw predicted band vs actual to this PNG")
    a.set_defaults(func=cmd_accuracy)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("run",):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("cmdstanpy", "prophet"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ForescaleError as exc:
        print(f"forescale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
