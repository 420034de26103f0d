"""Gaps in a series on a regular grid (NaN where no sample): the two facts
every part that reads such a series shares."""

from __future__ import annotations

import numpy as np


def sample_cadence(values: np.ndarray) -> int:
    """The series' own sampling step in grid steps: the median distance
    between consecutive observations (1 for a series observed at every
    step, or with scattered gaps; 6 for 30-minute samples on a 5-minute
    grid)."""
    idx = np.flatnonzero(~np.isnan(values))
    if idx.size < 3:
        return 1
    return max(1, int(np.median(np.diff(idx))))


def hold_forward(values: np.ndarray, max_steps: int | None = None) -> np.ndarray:
    """Each observation carried forward over the NaNs after it, at most
    ``max_steps`` steps (None: to the next observation; 0: ``values``
    itself). Leading NaNs stay NaN."""
    if max_steps == 0:
        return values
    idx = np.where(np.isnan(values), -1, np.arange(values.size))
    np.maximum.accumulate(idx, out=idx)
    ok = idx >= 0
    if max_steps is not None:
        ok &= np.arange(values.size) - idx <= max_steps
    return np.where(ok, values[np.clip(idx, 0, None)], np.nan)
