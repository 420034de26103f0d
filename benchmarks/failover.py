"""Failover: how long a target goes without a leader when the replica that
leads it dies, and how many cycles' writes the PostgreSQL state takes.

    python benchmarks/failover.py                         # leases 4s, 10s and 30s, 5 kills each
    python benchmarks/failover.py --leases 30 --repeats 3 # the default lease
    python benchmarks/failover.py --leases 10 --no-writes --name failover-lstm \
        --forecaster '{"name": "lstm", "history": "10m", "refit_every": "1h", "params": {...}}'

Each run starts a PostgreSQL server (``initdb``/``pg_ctl``, as in the
tests, but with ``fsync`` on), then per repeat two ``forescale run`` replicas (each with its own copy of
the config in its own folder, as on two machines) on a fresh database
with one target (3 s interval, a platform whose applies take 1.5 s and log
every read and write), waits for the leader to act, SIGKILLs it in the
middle of an apply and measures the time to the standby's first cycle (its
first read of the platform) and to its first apply (its first cycle's end
when that cycle changes the capacity: after its fit, or after restoring the
model the dead leader saved). The renew interval is a quarter of the lease.

Then the round trips of a real cycle (statements and transactions counted
at the connection), and the state's write throughput: the writes of one dry-run cycle (the
sample cache, the forecast, the actuals, the decision with its state and
audit record: 4 transactions) repeated by 1 and by 4 concurrent writers, on
PostgreSQL and, for comparison, SQLite. Every write transaction takes the
one write lock, so this is the ceiling on cycles per second for the whole
fleet, however many replicas run.

Writes ``benchmarks/results/failover.json`` and ``failover.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.types import Forecast, Observation, ScalingState, Series  # noqa: E402
from engine.store import open_store  # noqa: E402
from policies import PolicyConfig, decide  # noqa: E402
from tests.support import postgres  # noqa: E402
from tests.support.replica import events, failover_config, in_flight, start_replica, stop_replicas, wait_for  # noqa: E402

INTERVAL_S = 3.0


def one_failover(srv: postgres.PgServer, lease_s: float, forecaster: dict | None = None) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="forescale-failover-"))
    url = srv.fresh_database()
    cfg = failover_config(folder, url, lease_s=lease_s, renew_s=lease_s / 4, interval_s=INTERVAL_S,
                          forecaster=forecaster)
    # each replica its own copy of the config in its own folder, as on two
    # machines (nothing beside the config is shared but the database)
    cfgs = []
    for name in ("a", "b"):
        (folder / name).mkdir()
        cfgs.append(folder / name / cfg.name)
        cfgs[-1].write_text(cfg.read_text())
    plat = folder / "platform"
    logs = (folder / "a.log", folder / "b.log")
    procs = [start_replica(cfgs[0], logs[0]), start_replica(cfgs[1], logs[1])]
    try:
        wait_for(lambda: any(e["kind"] == "end" for e in events(plat)), 120, "an apply", procs, logs)
        leader = next(e["pid"] for e in events(plat) if e["kind"] == "begin")
        standby = next(p for p in procs if p.pid != leader)
        wait_for(lambda: in_flight(plat, leader), 60, "an apply in flight", procs, logs)
        os.kill(leader, signal.SIGKILL)
        killed = time.time()
        first = wait_for(lambda: next((e for e in events(plat) if e["pid"] == standby.pid), None),
                         lease_s + 60, "a cycle by the standby", [standby], logs)
        applied = wait_for(lambda: next((e for e in events(plat) if e["pid"] == standby.pid and e["kind"] == "end"),
                                        None), 60, "an apply by the standby", [standby], logs)
        return {"first_cycle_s": first["t"] - killed, "first_apply_s": applied["t"] - killed}
    finally:
        stop_replicas(procs)


# ------------------------------------------------------------ write throughput
def cycle_writes(store, target: str, i: int, t0: datetime) -> None:
    """What one dry-run cycle writes: 4 transactions."""
    now = t0 + timedelta(minutes=5 * i)
    ts = int(now.timestamp())
    store.cache_samples(target, Series(np.array([ts]), np.array([100.0 + i % 7]), target))
    pt = np.full(3, 100.0)
    store.record_forecast(target, Forecast(now, ts + 300 * np.arange(1, 4), pt, {0.9: pt * 1.2},
                                           "persistence", "v1"))
    store.fill_actuals(target, Series(np.array([ts]), np.array([101.0]), target))
    cfg = PolicyConfig(capacity_per_replica=10.0, target_utilization=0.5)
    state = ScalingState(current=10, observation=Observation(100.0, now))
    d = decide(None, state, cfg, now, target=target)
    store.record_decision(d, "dry-run", "dry-run", now, state=state)


def throughput(ref: str, writers: int, cycles: int) -> dict[str, float]:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    stores = [open_store(ref) for _ in range(writers)]
    barrier = threading.Barrier(writers)

    def run(k: int) -> None:
        barrier.wait()
        for i in range(cycles):
            cycle_writes(stores[k], f"svc-{k}", i, t0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for s in stores:
        s.close()
    n = writers * cycles
    return {"writers": writers, "cycles": n, "wall_s": round(wall, 3), "cycles_per_s": round(n / wall, 1),
            "transactions_per_s": round(4 * n / wall, 1), "ms_per_cycle": round(1000 * wall / n, 2)}


def round_trips(srv: postgres.PgServer, cycles: int = 4) -> dict[str, float]:
    """Statements and transactions of real cycles (auto mode, the file
    platform, every cycle applying) on PostgreSQL, counted at the
    connection: the round trips a cycle costs. The first cycle (full fetch,
    fit) is left out."""
    import actuators
    from engine import db as dbmod
    from engine.build import build_targets
    from engine.config import load_config
    from tests.support.replica import FileActuator

    actuators.registry.register("file", FileActuator)
    folder = Path(tempfile.mkdtemp(prefix="forescale-rt-"))
    cfg = load_config(failover_config(folder, srv.fresh_database(), lease_s=30, renew_s=10, interval_s=INTERVAL_S,
                                      apply_delay=0.0))
    counts = {"statements": 0, "transactions": 0}
    run, begin = dbmod.PgConnection._run, dbmod.PgConnection.begin

    def counted_run(self, *a, **k):
        counts["statements"] += 1
        return run(self, *a, **k)

    def counted_begin(self, *a, **k):
        counts["transactions"] += 1
        return begin(self, *a, **k)

    per: list[dict[str, int]] = []
    with open_store(cfg) as store:
        (lt,) = build_targets(cfg, store)
        now = datetime.now(timezone.utc)
        dbmod.PgConnection._run, dbmod.PgConnection.begin = counted_run, counted_begin
        try:
            for i in range(cycles + 1):
                before = dict(counts)
                res = lt.run(now + timedelta(seconds=INTERVAL_S * i))
                assert res.error is None, res.error
                per.append({k: counts[k] - before[k] for k in counts} | {"status": res.status})
        finally:
            dbmod.PgConnection._run, dbmod.PgConnection.begin = run, begin
    later = per[1:]
    return {"cycles": len(later), "statuses": sorted({p["status"] for p in later}),
            "statements_per_cycle": statistics.median(p["statements"] for p in later),
            "transactions_per_cycle": statistics.median(p["transactions"] for p in later)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leases", default="4,10,30", help="lease lengths in seconds, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=300, help="cycles per writer in the throughput part")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--forecaster", type=json.loads, default=None, metavar="JSON",
                    help="the target's forecaster section (default: persistence, refit hourly), e.g. a "
                         "per-series LSTM whose fit makes the new leader's first cycle slow unless it restores")
    ap.add_argument("--name", default="failover", help="the results' file names (default: failover)")
    ap.add_argument("--no-writes", action="store_true", help="only the failover runs (no round trips, no "
                                                             "write throughput)")
    args = ap.parse_args()
    srv = postgres.start(durable=True)  # fsync on, as in production
    try:
        failover = []
        for lease in [float(x) for x in args.leases.split(",")]:
            runs = []
            for r in range(args.repeats):
                got = one_failover(srv, lease, args.forecaster)
                runs.append(got)
                print(f"lease {lease:g}s, run {r + 1}: first cycle after {got['first_cycle_s']:.2f}s, "
                      f"first apply after {got['first_apply_s']:.2f}s", flush=True)
            cyc = [x["first_cycle_s"] for x in runs]
            app = [x["first_apply_s"] for x in runs]
            failover.append({"lease_s": lease, "renew_s": lease / 4, "interval_s": INTERVAL_S, "runs": runs,
                             "first_cycle_median_s": round(statistics.median(cyc), 2),
                             "first_cycle_max_s": round(max(cyc), 2),
                             "first_apply_median_s": round(statistics.median(app), 2),
                             "first_apply_max_s": round(max(app), 2)})
        trips: dict = {}
        writes: list = []
        if not args.no_writes:
            trips = round_trips(srv)
            print(f"a real cycle: {trips['statements_per_cycle']:g} statements, "
                  f"{trips['transactions_per_cycle']:g} transactions ({', '.join(trips['statuses'])})", flush=True)
        for backend in () if args.no_writes else ("postgres", "sqlite"):
            for writers in (1, 4):
                ref = srv.fresh_database() if backend == "postgres" else str(
                    Path(tempfile.mkdtemp(prefix="forescale-tput-")) / "state.db")
                got = {"backend": backend, **throughput(ref, writers, args.cycles)}
                writes.append(got)
                print(f"{backend}, {writers} writer(s): {got['cycles_per_s']} cycles/s "
                      f"({got['transactions_per_s']} transactions/s, {got['ms_per_cycle']} ms per cycle)", flush=True)
    finally:
        srv.stop()
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host.platform(),
              "cpus": os.cpu_count(), "postgres_bin": str(postgres.bin_dir()), "argv": sys.argv[1:],
              "forecaster": args.forecaster, "failover": failover, "round_trips": trips, "writes": writes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Failover and state write throughput", "", f"`python benchmarks/failover.py {' '.join(sys.argv[1:])}` "
             f"on {host.platform()}, {os.cpu_count()} CPUs, {result['when']}; forecaster "
             f"{json.dumps(args.forecaster) if args.forecaster else 'persistence'}.", "",
             "| lease | renew | interval | first cycle by the new leader, median / max | first apply, median / max |",
             "|---|---|---|---|---|"]
    for f in failover:
        lines.append(f"| {f['lease_s']:g} s | {f['renew_s']:g} s | {f['interval_s']:g} s | "
                     f"{f['first_cycle_median_s']} / {f['first_cycle_max_s']} s | "
                     f"{f['first_apply_median_s']} / {f['first_apply_max_s']} s |")
    if trips:
        lines += ["", f"A real cycle (auto mode, applying): {trips['statements_per_cycle']:g} statements, each a "
                  f"round trip, {trips['transactions_per_cycle']:g} write transactions among them.", ""]
    if writes:
        lines += ["| backend | writers | cycles/s | transactions/s | ms per cycle |", "|---|---|---|---|---|"]
    for w in writes:
        lines.append(f"| {w['backend']} | {w['writers']} | {w['cycles_per_s']} | {w['transactions_per_s']} | "
                     f"{w['ms_per_cycle']} |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
