"""Forecasters: pluggable models behind one small contract.

Built-in names resolve lazily through :data:`registry` (importing
``forecasters`` imports neither torch nor prophet); third-party forecasters
register under the ``forescale.forecasters`` entry-point group.
"""

from engine.core.errors import PluginError
from engine.core.plugins import check_capabilities
from engine.core.registry import Registry

from .base import BaseForecaster, Forecaster, ForecasterParams

registry = Registry("forecaster", "forescale.forecasters")
registry.add("persistence", "forecasters.naive:Persistence")
registry.add("seasonal_naive", "forecasters.naive:SeasonalNaive")
registry.add("seasonal_persistence", "forecasters.naive:SeasonalPersistence")
registry.add("holt_winters", "forecasters.holt_winters:HoltWinters", extra="holt-winters",
             packages=("statsmodels",))
registry.add("prophet", "forecasters.prophet_model:ProphetForecaster", extra="prophet",
             packages=("prophet",))
registry.add("lstm", "forecasters.lstm:LSTMForecaster", extra="lstm", packages=("torch",))
registry.add("lstm_global", "forecasters.lstm:LevelFreeForecaster", extra="lstm", packages=("torch",))
registry.add("autoets", "forecasters.statsforecast_models:AutoETS", extra="statsforecast", packages=("statsforecast",))
registry.add("mstl", "forecasters.statsforecast_models:MSTL", extra="statsforecast", packages=("statsforecast",))
registry.add("auto", "forecasters.auto:AutoForecaster")
registry.add("blend", "forecasters.blend:BlendForecaster")


def _check(name: str, obj: object) -> None:
    for attr in ("fit", "update", "predict", "save", "Params"):
        if not hasattr(obj, attr):
            raise PluginError(f"forecaster {name!r} ({obj!r}) lacks {attr!r}")
    check_capabilities("forecaster", name, obj)


registry.add_validator(_check)


def create(name: str, params: dict | None = None) -> Forecaster:
    """Build a forecaster by registry name with its parameters."""
    cls = registry.get(name)
    return cls(params or {})


__all__ = ["BaseForecaster", "Forecaster", "ForecasterParams", "create", "registry"]
