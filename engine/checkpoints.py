"""Model checkpoints: the fitted forecaster of a target, kept so a restart
(or, on a shared state, the replica that takes a target over) does not
retrain (what makes a restart cheap for the LSTM).

Where they are kept (a *shelf*, :func:`shelf_for`):

- a SQLite state: files next to the state file (``<state>.models/<target>.model``
  plus a ``.json`` of what it was fitted on), :class:`FileShelf`;
- a PostgreSQL state: the shared ``models`` table (:class:`StoreShelf`,
  :meth:`engine.postgres.PgStore.save_model`), so whichever replica holds a
  target's lease restores the model the previous leader fitted. A write is
  fenced by the lease: it commits only while the writer holds the target's
  lease, and never over a row written under a newer lease epoch, so a
  deposed leader cannot overwrite its successor's model.

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
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Collection

from .config import TargetConfig
from .core.units import from_epoch, isoformat, to_epoch

log = logging.getLogger("forescale.checkpoints")


def model_key(target: TargetConfig) -> str:
    """What a saved model must match to be reused: the forecaster section of
    the config and the interval."""
    return hashlib.sha256((target.forecaster.model_dump_json() + str(target.interval)).encode()).hexdigest()[:16]


def source_digest(target: TargetConfig) -> str:
    """Which metric source a series' samples come from: a digest of the
    target's (or resource view's) ``source:`` section. The sample cache
    and the saved models record it, so that a changed query, path or
    server is not answered from the old source's data."""
    return hashlib.sha256(target.source.model_dump_json().encode()).hexdigest()[:16]


class FileShelf:
    """Checkpoints as files in ``<state>.models/`` (a SQLite state)."""

    def __init__(self, state_path: str) -> None:
        self.folder = Path(state_path).parent / (Path(state_path).name + ".models")

    def read(self, name: str) -> tuple[dict[str, Any], bytes] | None:
        meta = self.folder / f"{name}.json"
        if not meta.exists():
            return None
        return json.loads(meta.read_text()), (self.folder / f"{name}.model").read_bytes()

    def prune(self, store: Any, before: datetime, keep: Collection[str]) -> list[str]:
        """Delete the checkpoints of the targets not in ``keep`` that have
        neither run a cycle (``store``'s records) nor been fitted since
        ``before``; their names."""
        if not self.folder.is_dir():
            return []
        cut, gone = to_epoch(before), []
        for meta_path in sorted(self.folder.rglob("*.json")):
            name = meta_path.relative_to(self.folder).with_suffix("").as_posix()
            target = name.split("/", 1)[0]
            if target in keep:
                continue
            try:
                fitted = json.loads(meta_path.read_text()).get("last_fit")
            except (OSError, ValueError):
                fitted = None
            seen = [v for v in (store.last_cycle(target), fitted) if v is not None]
            if seen and max(seen) >= cut:
                continue
            for path in (meta_path.with_suffix(".model"), meta_path):
                path.unlink(missing_ok=True)
            gone.append(name)
        return gone

    def write(self, name: str, meta: dict[str, Any], blob: bytes) -> None:
        """The model, then what it was fitted on, each atomically (a crash
        mid-write leaves the previous checkpoint)."""
        model_path, meta_path = self.folder / f"{name}.model", self.folder / f"{name}.json"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        for path, data in ((model_path, blob), (meta_path, json.dumps(meta).encode())):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)


class StoreShelf:
    """Checkpoints in the shared store's ``models`` table (PostgreSQL)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def read(self, name: str) -> tuple[dict[str, Any], bytes] | None:
        return self.store.load_model(name)

    def write(self, name: str, meta: dict[str, Any], blob: bytes) -> None:
        self.store.save_model(name, meta, blob)

    def prune(self, store: Any, before: datetime, keep: Collection[str]) -> list[str]:
        return self.store.prune_models(before, keep)


def shelf_for(store: Any) -> FileShelf | StoreShelf | None:
    """Where ``store``'s targets keep their checkpoints: its ``models``
    table when it has one (a shared state), else files beside its state
    file (none for ``:memory:`` or a store without a file)."""
    if getattr(store, "keeps_models", False):
        return StoreShelf(store)
    base = getattr(store, "checkpoint_base", getattr(store, "path", None))
    return FileShelf(base) if base and base != ":memory:" else None


def prune_checkpoints(store: Any, before: datetime, keep: Collection[str]) -> list[str]:
    """Delete the model checkpoints of retired targets: those not in ``keep``
    (the targets live now: the file's, the templates' discovered ones) that
    have neither run a cycle nor been fitted since ``before`` (the
    ``retention.models`` cutoff). A target retired more recently, or back,
    keeps its model. Returns the names deleted (``target`` or
    ``target/resource``)."""
    shelf = shelf_for(store)
    return [] if shelf is None else shelf.prune(store, before, keep)


def _blob(forecaster: Any) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model"
        forecaster.save(path)
        return path.read_bytes()


def _from_blob(cls: Any, blob: bytes) -> Any:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model"
        path.write_bytes(blob)
        return cls.load(path)


class ModelCheckpoint:
    """Restore (once per process, and again when :meth:`rearm` says another
    process may have fitted since) and save (after each refit) the
    configured model of one target. ``shelf``: where (:func:`shelf_for`;
    None: no checkpoints)."""

    def __init__(self, target: TargetConfig, shelf: FileShelf | StoreShelf | None) -> None:
        self.target = target
        self.key = model_key(target)
        self.shelf = shelf
        #: the fit time last saved or restored (nothing to save while unchanged)
        self.saved_fit: datetime | None = None
        self._restore_tried = False

    def rearm(self) -> None:
        """Look at the shelf again before the next forecast (this replica
        just gained the target's lease: the previous leader may have fitted
        a newer model than the one in memory)."""
        self._restore_tried = False

    def restore(self, runner: Any, now: datetime, history_end: datetime | None) -> str | None:
        """Before the first forecast of this process: load the saved model
        into ``runner`` if it fits and is newer than the one it has. Returns
        a note for the cycle's details."""
        if self._restore_tried:
            return None
        self._restore_tried = True
        if self.shelf is None or runner.forecaster is None:
            return None
        name = self.target.name
        try:
            got = self.shelf.read(name)
            if got is None:
                return None
            meta, blob = got
            if meta.get("key") != self.key:
                return "saved model ignored: the forecaster config changed since it was saved"
            if meta.get("source") not in (None, source_digest(self.target)):  # (None: saved before it was kept)
                return "saved model ignored: the metric source changed since it was saved; refitting"
            fitted = from_epoch(meta["last_fit"])
            if runner.last_fit is not None and fitted <= runner.last_fit:
                return None  # the model in memory is as new
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
            runner.forecaster = _from_blob(type(runner.forecaster), blob)
            runner.last_fit = fitted
            self.saved_fit = fitted
            log.info("target %s: model %s restored (fitted %s)", name, meta.get("version"), isoformat(fitted),
                     extra={"target": name})
            return f"model {meta.get('version')} restored (fitted {isoformat(fitted)})"
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint means: fit again
            log.warning("target %s: saved model not usable, refitting: %s", name, exc, extra={"target": name})
            return f"saved model not usable ({type(exc).__name__}: {exc}); refitting"

    def save(self, runner: Any, history_end: datetime | None) -> None:
        """Checkpoint the configured model after a refit (a crash mid-write
        leaves the previous checkpoint; on a shared state, a replica that
        lost the target's lease writes nothing)."""
        f, fitted = runner.forecaster, runner.last_fit
        if self.shelf is None or f is None or fitted is None or fitted == self.saved_fit:
            return
        try:
            meta = {"key": self.key, "source": source_digest(self.target),
                    "name": self.target.forecaster.name, "version": getattr(f, "version", ""),
                    "last_fit": to_epoch(fitted),
                    "history_end": None if history_end is None else to_epoch(history_end)}
            self.shelf.write(self.target.name, meta, _blob(f))
            self.saved_fit = fitted
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint costs a refit, nothing more
            log.warning("target %s: could not save the model: %s", self.target.name, exc,
                        extra={"target": self.target.name})


__all__ = ["FileShelf", "ModelCheckpoint", "StoreShelf", "model_key", "prune_checkpoints", "shelf_for",
           "source_digest"]
