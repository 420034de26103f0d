"""Planner tuning: several policy settings on the frontier's *tuning* traces
(the held-out third is never read), 14 days each, lead times 10 and 30 min,
each trace's forecasts recorded once and replayed for every setting.

    nice -n 10 python benchmarks/planner_tuning.py settings.json [trace,substrings]

``settings.json`` maps a name to policy settings (as ``benchmarks/frontier.py
--policy FILE`` takes them). Prints per trace and setting the violation and
actions ratios against the HPA at equal cost (``benchmarks/frontier.py``),
then per setting the geometric mean, traces no worse, median actions ratio,
traces with violations in 0.25-1 % and the mean cost.
"""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.frontier import ForecastCache, TRACES_DIR, gmean, held_out, load_trace, one_trace, qualifying_traces  # noqa: E402
from engine.config import ForecasterConfig  # noqa: E402

configs = json.load(open(sys.argv[1]))
root = TRACES_DIR.resolve()
paths = qualifying_traces(root)
names = [str(p.relative_to(root)) for p in paths]
hold = held_out(names)
sel = [(p, n) for p, n in zip(paths, names) if n not in hold]
if len(sys.argv) > 2:
    sel = [(p, n) for p, n in sel if any(k in n for k in sys.argv[2].split(","))]
fc = ForecasterConfig(name="seasonal_persistence")
rows = {(c, L): [] for c in configs for L in (10, 30)}
for p, n in sel:
    raw = load_trace(p, 14)
    cache = ForecastCache()
    for cname, settings in configs.items():
        for L in (30, 10):
            t = time.time()
            r = one_trace(raw, n, json.loads(json.dumps(settings)), fc, L, cache)
            rows[(cname, L)].append(r)
            pm = r["policy"]
            print(f"{cname:<6} L{L} {n[:38]:<38} vr {r['violation_ratio']:5.2f} ar {r['actions_ratio']:5.2f} c {pm['cost_vs_oracle']:.3f} v {pm['violation_fraction']:.4f} {r['hpa_at_cost']['outside'] or ''} {time.time()-t:.0f}s", flush=True)
print("SUMMARY")
for (cname, L), rs in rows.items():
    vr = [r["violation_ratio"] for r in rs]; ar = [r["actions_ratio"] for r in rs if r["actions_ratio"] != float("inf")]
    v = [r["policy"]["violation_fraction"] for r in rs]
    print(f"{cname:<6} L{L}: gmean vr {gmean(vr):.3f} noworse {sum(x<=1 for x in vr)}/{len(vr)} med ar {statistics.median(ar):.2f} slo-band {sum(0.0025<=x<=0.01 for x in v)} mean c {statistics.fmean(r['policy']['cost_vs_oracle'] for r in rs):.3f}", flush=True)
