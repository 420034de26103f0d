"""The storage-quota case: how far ahead forescale's predictive alert
(``forescale_forecast_time_to_threshold_seconds < 6h`` at the 0.9 level,
Holt-Winters) and PromQL's ``predict_linear(used[W], 6h) > 95`` first say "the
volume crosses 95 % within 6 hours", against when it really does.

The volume is the synthetic filling volume of the observability tests
(:func:`tests.support.replay.volume_fill_trace`: 11.5 % a day with a daily
write cycle), the run the engine's real replay over its last 12 hours.
``predict_linear`` is computed as Prometheus does: the least-squares line
over the window, evaluated 6 h ahead.

    python3 benchmarks/predictive_alert.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.sources.csv import read_csv  # noqa: E402
from tests.support.replay import storage_replay, volume_fill_trace  # noqa: E402

AHEAD = 6 * 3600


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rep = storage_replay(work, cycles=144)
        seen = read_csv(work / "data.csv")
        # the same volume one day further on (same seed: the first days match)
        full = read_csv(volume_fill_trace(work / "full.csv", days=6, start=36.0, per_day=11.5,
                                          end_epoch=int(seen.timestamps[-1]) + 86400))
    assert np.allclose(full.values[:seen.values.size], seen.values)
    cross = int(full.timestamps[np.argmax(full.values >= 95.0)])
    nows = [r.now.timestamp() for r in rep.results if r.target == "data"]
    ttt = rep.series("forescale_forecast_time_to_threshold_seconds", target="data", alert="storage-full")

    def predict_linear(now: float, window: int) -> float:
        m = (full.timestamps > now - window) & (full.timestamps <= now)
        slope, intercept = np.polyfit(full.timestamps[m] - now, full.values[m], 1)
        return intercept + slope * AHEAD

    def first(flags) -> str:
        i = next((i for i, f in enumerate(flags) if f), None)
        return "never in the run" if i is None else f"{(cross - nows[i]) / 3600:.1f} h before the crossing"

    print("first 'crosses 95 % within 6 h' (the run covers the 12 h before the end of the trace; "
          f"the volume crosses 95 % {(cross - seen.timestamps[-1]) / 3600:.1f} h after it):")
    print(f"  forescale (holt_winters, level 0.9): {first(x is not None and x < AHEAD for x in ttt)}")
    for hours in (1, 6, 24):
        flags = [predict_linear(n, hours * 3600) > 95.0 for n in nows]
        print(f"  predict_linear(used[{hours}h], 6h) > 95: {first(flags)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
