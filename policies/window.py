"""The lead window: the span of the forecast the new capacity must cover.

A decision made at ``now`` takes effect after the lead time, and must then
serve for ``hold``: the policy sizes from the forecast over
``[now + lead_time, now + lead_time + hold]``. With ``learn_lead_time`` the
lead time is the longer of the configured one and the delay the engine
measured (a high percentile of observed actuation delays).

This is one value derived once per cycle (STYLE principle 16): the engine
computes it with :func:`lead_window` and hands the same object to the
forecast horizon, the predicted-versus-actual horizons (conformal headroom,
accuracy, quality gate) and :func:`policies.decide`, so they cannot
disagree. (They did: a learned 12-minute delay widened ``decide``'s window
while the forecast still ended at the configured 5 m + 5 m, and every cycle
fell back with ``ForecastTooShort``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from .config import PolicyConfig


@dataclass(frozen=True)
class LeadWindow:
    """``[lead_time, lead_time + hold]`` after the decision; ``learned``:
    the lead time is the measured delay (longer than the configured one)."""

    lead_time: timedelta
    hold: timedelta
    learned: bool = False

    @property
    def end(self) -> timedelta:
        """How far ahead the forecast must reach."""
        return self.lead_time + self.hold

    @property
    def horizons_s(self) -> tuple[int, int]:
        """The window as an inclusive range of forecast horizons in seconds
        (what the predicted-versus-actual records are filtered by)."""
        return int(self.lead_time.total_seconds()), int(self.end.total_seconds())


def lead_window(config: PolicyConfig, learned_lead_time: timedelta | None) -> LeadWindow:
    """The window for one cycle: the configured lead time, or the learned
    one where ``learn_lead_time`` is on and the measured delay is longer
    (never shorter: a fast action once must not shrink the safety window)."""
    if config.learn_lead_time and learned_lead_time is not None and learned_lead_time > config.lead_time:
        return LeadWindow(learned_lead_time, config.hold, learned=True)
    return LeadWindow(config.lead_time, config.hold)


__all__ = ["LeadWindow", "lead_window"]
