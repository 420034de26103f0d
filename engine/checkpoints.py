"""Model checkpoints: the fitted forecaster of a target, saved next to the
state file (``<state>.models/<target>.model`` plus a ``.json`` of what it
was fitted on), so a restart does not retrain (what makes a restart cheap
for the LSTM).

A checkpoint is reused only if it fits: the same forecaster section and
interval (its *key*), and a fit that lies in the past of this cycle and of
the history it will be fed. A checkpoint from the future (the state file
was deleted and the clock or the data start earlier; the checkpoint folder
was kept) made every forecast fail; such a model is refitted instead, with a
log line and a note in the cycle's details.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import TargetConfig
from .core.units import from_epoch, isoformat, to_epoch

log = logging.getLogger("forescale.checkpoints")


def model_key(target: TargetConfig) -> str:
    """What a saved model must match to be reused: the forecaster section of
    the config and the interval."""
    return hashlib.sha256((target.forecaster.model_dump_json() + str(target.interval)).encode()).hexdigest()[:16]


class ModelCheckpoint:
    """Restore (once per process) and save (after each refit) the configured
    model of one target. ``state_path``: the store's file (``:memory:`` or
    empty: no checkpoints)."""

    def __init__(self, target: TargetConfig, state_path: str | None) -> None:
        self.target = target
        self.key = model_key(target)
        self.paths: tuple[Path, Path] | None = None
        if state_path and state_path != ":memory:":
            folder = Path(state_path).parent / (Path(state_path).name + ".models")
            self.paths = folder / f"{target.name}.model", folder / f"{target.name}.json"
        #: the fit time last saved or restored (nothing to save while unchanged)
        self.saved_fit: datetime | None = None
        self._restore_tried = False

    def restore(self, runner: Any, now: datetime, history_end: datetime | None) -> str | None:
        """Before the first forecast of this process: load the saved model
        into ``runner`` if it fits. Returns a note for the cycle's details."""
        if self._restore_tried:
            return None
        self._restore_tried = True
        if self.paths is None or runner.forecaster is None or not self.paths[1].exists():
            return None
        model_path, meta_path = self.paths
        name = self.target.name
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != self.key:
                return "saved model ignored: the forecaster config changed since it was saved"
            fitted = from_epoch(meta["last_fit"])
            seen_until = from_epoch(meta["history_end"]) if meta.get("history_end") is not None else fitted
            why = None
            if fitted > now:
                why = f"it was fitted at {isoformat(fitted)}, after this cycle's time {isoformat(now)}"
            elif history_end is not None and seen_until > history_end:
                why = (f"it has seen data up to {isoformat(seen_until)}, after the end of the history "
                       f"({isoformat(history_end)})")
            if why is not None:
                log.warning("target %s: saved model does not fit the state (%s); refitting", name, why,
                            extra={"target": name})
                return f"saved model ignored: {why}; refitting"
            runner.forecaster = type(runner.forecaster).load(model_path)
            runner.last_fit = fitted
            self.saved_fit = fitted
            return f"model {meta.get('version')} restored (fitted {isoformat(fitted)})"
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint means: fit again
            log.warning("target %s: saved model not usable, refitting: %s", name, exc, extra={"target": name})
            return f"saved model not usable ({type(exc).__name__}: {exc}); refitting"

    def save(self, runner: Any, history_end: datetime | None) -> None:
        """Checkpoint the configured model after a refit (atomically: a crash
        mid-write leaves the previous checkpoint)."""
        f, fitted = runner.forecaster, runner.last_fit
        if self.paths is None or f is None or fitted is None or fitted == self.saved_fit:
            return
        model_path, meta_path = self.paths
        try:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = model_path.with_name(model_path.name + ".tmp")
            f.save(tmp)
            os.replace(tmp, model_path)
            meta = {"key": self.key, "name": self.target.forecaster.name, "version": getattr(f, "version", ""),
                    "last_fit": to_epoch(fitted),
                    "history_end": None if history_end is None else to_epoch(history_end)}
            tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_meta, meta_path)
            self.saved_fit = fitted
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint costs a refit, nothing more
            log.warning("target %s: could not save the model: %s", self.target.name, exc,
                        extra={"target": self.target.name})


__all__ = ["ModelCheckpoint", "model_key"]
