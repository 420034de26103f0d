"""The forecast API: JSON over HTTP, read from the state file.

Routes (all ``GET``; the schema is the hand-written OpenAPI 3 document
:data:`OPENAPI`, served at ``/api/v1/openapi.json``):

- ``/api/v1/targets``: every configured target (name, mode, interval, lead
  time, export horizons);
- ``/api/v1/targets/{name}/forecast``: the latest recorded forecast (made
  at, timestamps, point, quantiles by level);
- ``/api/v1/targets/{name}/decision``: the latest decision, with its steps,
  mode, status, approval and outcome (the audit record);
- ``/api/v1/targets/{name}/accuracy``: rolling accuracy per horizon over the
  last ``window`` (query parameter, e.g. ``1d``; default 7 days) from the
  predicted-versus-actual records; MAPE, sMAPE, MASE and coverage as ratios.

Each request opens its own read-only SQLite connection (``mode=ro``), so the
API serves beside a running daemon (WAL readers never block the writer) or
stand-alone over a state file. Errors are ``{"error": "..."}`` with 404
(unknown target, nothing recorded yet), 400 (bad query parameter) or 503
(state file not readable).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from .accuracy import accuracy_table
from .config import Config, TargetConfig, load_config
from .core.types import Forecast
from .core.units import from_epoch, parse_duration
from .feedback import mape_meaningless
from .metrics import export_horizons
from .core.errors import StateError
from .store import ReadOnlyStore, Store, open_store


class TargetsView:
    """What the API reads: the running configuration (a callable, so a
    daemon's reload is seen), the targets its templates expand to now
    (``discovered``: the daemon's, none when the API serves a file alone)
    and its state file."""

    def __init__(self, config: Callable[[], Config],
                 discovered: Callable[[], Sequence[TargetConfig]] | None = None) -> None:
        self._config = config
        self._discovered = discovered

    @classmethod
    def from_file(cls, path: str | Path) -> "TargetsView":
        cfg = load_config(path)
        return cls(lambda: cfg)

    @property
    def config(self) -> Config:
        return self._config()

    @property
    def targets(self) -> tuple[TargetConfig, ...]:
        """The file's targets, then the templates' discovered ones."""
        return self.config.targets + tuple(self._discovered() if self._discovered is not None else ())

    def store(self) -> Store:
        return open_store(self.config, read_only=True)


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _clean(v: Any) -> Any:
    """JSON without NaN: NaN/inf become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def target_info(t: TargetConfig) -> dict[str, Any]:
    return {"name": t.name, "mode": t.mode, "interval_s": int(t.interval.total_seconds()),
            "lead_time_s": int(t.policy.lead_time.total_seconds()),
            "horizons_s": [int(h.total_seconds()) for h in export_horizons(t)]}


def latest_forecast(store: Store, target: str) -> Forecast | None:
    """The newest forecast recorded for ``target``, rebuilt from its rows."""
    made = store.db.execute("SELECT MAX(made_at) FROM forecasts WHERE target=?", (target,)).fetchone()[0]
    if made is None:
        return None
    rows = store.db.execute("SELECT ts, point, quantiles, model, model_version FROM forecasts "
                            "WHERE target=? AND made_at=? ORDER BY ts", (target, made)).fetchall()
    import json

    qs = [json.loads(r["quantiles"]) for r in rows]
    levels = sorted({float(k) for q in qs for k in q})
    return Forecast(from_epoch(made), np.array([r["ts"] for r in rows], dtype=np.int64),
                    np.array([r["point"] for r in rows], dtype=float),
                    {lv: np.array([q.get(str(lv), math.nan) for q in qs], dtype=float) for lv in levels},
                    rows[0]["model"], rows[0]["model_version"])


#: accuracy keys of engine.feedback.accuracy (ratios), served with their unit in the name
_RENAME = {"mape": "mape_ratio", "smape": "smape_ratio", "mase": "mase_ratio", "coverage": "coverage_ratio",
           "near_zero_share": "near_zero_ratio"}


def accuracy_rows(store: Store, target: str, window: timedelta) -> list[dict[str, Any]]:
    out = []
    for row in accuracy_table(store, target, window=window):
        item: dict[str, Any] = {"horizon_s": int(row["horizon_s"]), "n": int(row.get("n", 0))}
        for key in ("mae", "bias"):
            item[key] = row.get(key)
        for key, name in _RENAME.items():
            item[name] = row.get(key)
        item["mape_meaningful"] = not mape_meaningless(row)
        out.append(_clean(item))
    return out


def api_routes(view: TargetsView) -> list[BaseRoute]:
    """The API's routes, for :func:`engine.server.create_app`."""

    def target_of(request: Request) -> TargetConfig:
        name = request.path_params["name"]
        known = view.targets
        for t in known:
            if t.name == name:
                return t
        raise _Error(404, f"no target named {name!r}; known: {', '.join(t.name for t in known)}")

    def handler(fn: Callable[[Request], Any]) -> Callable[[Request], JSONResponse]:
        # sync endpoints: Starlette runs them in its thread pool, off the loop
        def endpoint(request: Request) -> JSONResponse:
            try:
                return JSONResponse(_clean(fn(request)))
            except _Error as exc:
                return JSONResponse({"error": str(exc)}, exc.status)
            except (sqlite3.Error, StateError) as exc:
                return JSONResponse({"error": f"state file not readable: {exc}"}, 503)
        return endpoint

    def with_store(request: Request, fn: Callable[[Store, TargetConfig], Any]) -> Any:
        t = target_of(request)
        store = view.store()
        try:
            return fn(store, t)
        finally:
            store.close()

    def targets(request: Request) -> Any:
        return {"targets": [target_info(t) for t in view.targets]}

    def forecast(request: Request) -> Any:
        def get(store: Store, t: TargetConfig) -> Any:
            f = latest_forecast(store, t.name)
            if f is None:
                raise _Error(404, f"no forecast recorded yet for target {t.name!r}")
            return {"target": t.name, **f.to_dict()}
        return with_store(request, get)

    def decision(request: Request) -> Any:
        def get(store: Store, t: TargetConfig) -> Any:
            recs = store.decisions(t.name, limit=1)
            if not recs:
                raise _Error(404, f"no decision recorded yet for target {t.name!r}")
            return recs[0]
        return with_store(request, get)

    def accuracy(request: Request) -> Any:
        raw = request.query_params.get("window", "7d")
        try:
            window = parse_duration(raw)
        except (ValueError, TypeError) as exc:
            # the parser's own words: not a duration, or longer than allowed
            raise _Error(400, f"window: {exc}") from None
        if window <= timedelta(0):
            raise _Error(400, f"window: must be positive (got {raw!r})")

        def get(store: Store, t: TargetConfig) -> Any:
            return {"target": t.name, "window_s": int(window.total_seconds()),
                    "horizons": accuracy_rows(store, t.name, window)}
        return with_store(request, get)

    def openapi(request: Request) -> Any:
        return OPENAPI

    return [Route("/api/v1/openapi.json", handler(openapi)), Route("/api/v1/targets", handler(targets)),
            Route("/api/v1/targets/{name}/forecast", handler(forecast)),
            Route("/api/v1/targets/{name}/decision", handler(decision)),
            Route("/api/v1/targets/{name}/accuracy", handler(accuracy))]


# ------------------------------------------------------------------- the schema
_NUM = {"type": ["number", "null"]}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(ref: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "the target's name in the configuration"}

#: the API's OpenAPI 3.1 document (3.1: its schemas are JSON Schema 2020-12,
#: so a response is checked against them with jsonschema directly)
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "forescale forecast API", "version": "1"},
    "paths": {
        "/api/v1/targets": {"get": {"summary": "Configured targets", "responses": {
            **_ok("Targets", "every configured target")}}},
        "/api/v1/targets/{name}/forecast": {"get": {
            "summary": "The latest forecast", "parameters": [_NAME],
            "responses": {**_ok("Forecast", "the newest recorded forecast"), "404": _ERROR, "503": _ERROR}}},
        "/api/v1/targets/{name}/decision": {"get": {
            "summary": "The latest decision with its steps", "parameters": [_NAME],
            "responses": {**_ok("Decision", "the newest decision's audit record"), "404": _ERROR,
                          "503": _ERROR}}},
        "/api/v1/targets/{name}/accuracy": {"get": {
            "summary": "Rolling accuracy per horizon",
            "parameters": [_NAME, {"name": "window", "in": "query", "required": False,
                                   "schema": {"type": "string", "default": "7d"},
                                   "description": "how far back (a duration: 6h, 1d, 7d)"}],
            "responses": {**_ok("Accuracy", "accuracy of the point forecast and the upper band"),
                          "400": _ERROR, "404": _ERROR, "503": _ERROR}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Target": {"type": "object", "additionalProperties": False,
                   "required": ["name", "mode", "interval_s", "lead_time_s", "horizons_s"],
                   "properties": {
                       "name": {"type": "string"},
                       "mode": {"enum": ["observe", "dry-run", "approve", "auto"]},
                       "interval_s": {"type": "integer", "minimum": 1},
                       "lead_time_s": {"type": "integer", "minimum": 0},
                       "horizons_s": {"type": "array", "items": {"type": "integer"},
                                      "description": "the horizon labels of forescale_forecast_demand"}}},
        "Targets": {"type": "object", "additionalProperties": False, "required": ["targets"],
                    "properties": {"targets": {"type": "array", "items": {"$ref": "#/components/schemas/Target"}}}},
        "Forecast": {"type": "object", "additionalProperties": False,
                     "required": ["target", "made_at", "model", "model_version", "timestamps", "point", "quantiles"],
                     "properties": {
                         "target": {"type": "string"},
                         "made_at": {"type": "string", "format": "date-time",
                                     "description": "the cycle's now (UTC, RFC 3339)"},
                         "model": {"type": "string"}, "model_version": {"type": "string"},
                         "timestamps": {"type": "array", "items": {"type": "integer"},
                                        "description": "Unix seconds of each forecast point"},
                         "point": {"type": "array", "items": _NUM,
                                   "description": "the central forecast, in the metric's units"},
                         "quantiles": {"type": "object", "additionalProperties": {"type": "array", "items": _NUM},
                                       "description": "by level ('0.9'), same length as timestamps"}}},
        "Step": {"type": "object", "required": ["name", "value", "reason", "message", "changed"],
                 "properties": {"name": {"type": "string"}, "value": {"type": ["number", "null"]},
                                "reason": {"type": "string"}, "message": {"type": "string"},
                                "changed": {"type": "boolean"},
                                "resource": {"type": "string", "description": "a target with several "
                                             "resources: the one this step sized (absent otherwise)"}}},
        "Decision": {"type": "object",
                     "required": ["id", "target", "at", "current", "desired", "recommendation", "action",
                                  "fallback", "steps", "mode", "status"],
                     "properties": {
                         "id": {"type": "string"}, "target": {"type": "string"},
                         "at": {"type": "string", "format": "date-time"},
                         "current": {"type": "integer"}, "desired": {"type": "integer"},
                         "recommendation": {"type": "integer"},
                         "action": {"enum": ["scale_up", "scale_down", "hold"]},
                         "fallback": {"type": "boolean"},
                         "model": {"type": "string"}, "model_version": {"type": "string"},
                         "capacity_label": {"type": ["string", "null"]},
                         "forecast_demand": _NUM,
                         "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
                         "mode": {"enum": ["observe", "dry-run", "approve", "auto"]},
                         "status": {"type": "string"},
                         "approval": {"type": ["object", "null"]}, "outcome": {"type": ["object", "null"]}}},
        "HorizonAccuracy": {"type": "object", "additionalProperties": False,
                            "required": ["horizon_s", "n", "mae", "bias", "mape_ratio", "smape_ratio",
                                         "mase_ratio", "coverage_ratio", "near_zero_ratio", "mape_meaningful"],
                            "properties": {
                                "horizon_s": {"type": "integer"}, "n": {"type": "integer"},
                                "mae": _NUM, "bias": _NUM,
                                "mape_ratio": {**_NUM, "description": "0.068 is 6.8 %; null when actuals are 0"},
                                "smape_ratio": _NUM, "mase_ratio": _NUM,
                                "coverage_ratio": {**_NUM, "description": "share of actuals under the 0.9 band"},
                                "near_zero_ratio": {**_NUM, "description": "share of actuals below 5 % of their median"},
                                "mape_meaningful": {"type": "boolean", "description":
                                                    "false when over 1 % of the actuals are near zero "
                                                    "(or none is above zero): read sMAPE or MASE then"}}},
        "Accuracy": {"type": "object", "additionalProperties": False, "required": ["target", "window_s", "horizons"],
                     "properties": {"target": {"type": "string"}, "window_s": {"type": "integer"},
                                    "horizons": {"type": "array",
                                                 "items": {"$ref": "#/components/schemas/HorizonAccuracy"}}}},
    }},
}

__all__ = ["OPENAPI", "ReadOnlyStore", "TargetsView", "api_routes", "latest_forecast", "target_info"]
