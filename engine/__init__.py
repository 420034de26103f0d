"""forescale engine: the decision cycle, metric sources, state store, backtest.

Importing this package is cheap: no torch, prophet or cloud SDK is imported.
"""

from .core.errors import ForescaleError
from .core.types import (
    Action,
    ActionPlan,
    ActuationResult,
    Decision,
    Forecast,
    Observation,
    Plan,
    PlanStatus,
    PlanTransition,
    ScaleEvent,
    ScalingState,
    Series,
    Step,
)

__version__ = "0.1.0"

__all__ = [
    "Action", "ActionPlan", "ActuationResult", "Decision", "Forecast", "ForescaleError",
    "Observation", "Plan", "PlanStatus", "PlanTransition", "ScaleEvent", "ScalingState", "Series", "Step",
    "__version__",
]
