"""Policies: turn a forecast into a capacity decision, purely.

``decide(forecast, state, config, now) -> Decision``. No I/O, no clock, no
SDK imports; see :mod:`policies.pipeline` for the order of the steps.
"""

from .config import PolicyConfig
from .pipeline import decide, history_to_keep

__all__ = ["PolicyConfig", "decide", "history_to_keep"]
