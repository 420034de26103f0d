"""What a plugin declares about itself, so the engine never probes it.

Every actuator, metric source and forecaster class carries a
``capabilities: ClassVar[Capabilities]`` (darts' ``supports_*`` properties,
the style guide's principle 18): the wiring reads the declaration to know
which keywords a constructor takes and which calls a plugin answers,
instead of inspecting signatures or trying attributes. A class that
declares nothing has none of them (``Capabilities()``: a plain constructor,
a one-call ``apply``). The registries check the declaration when a plugin is
registered or first looked up (:func:`check_capabilities`), so a malformed
one fails with one clear error at startup, not with a ``TypeError``
mid-cycle.

Each flag names who acts on it:

``needs_base_dir`` (sources, actuators)
    the constructor takes ``base_dir=``: relative paths in its config resolve
    next to the config file (``engine/build.py`` passes it).
``needs_interval`` (sources)
    the constructor takes ``interval=``: a source that samples on a step
    defaults it to the target's cycle interval (``engine/build.py``).
``takes_ladder`` (actuators)
    vertical: the constructor takes ``ladder=`` (the rung names of the
    target's instance-type ladder) and capacity is a rung index
    (``engine/build.py``).
``stepwise_apply`` (actuators)
    ``apply`` performs one step of a change that needs several (stop,
    modify, start) and returns without waiting for the platform; the engine
    calls ``apply`` again with the same desired capacity and decision id on
    each later cycle until the result is ``verified`` or the actuator's
    ``verify_timeout`` passes.
``takes_covariates`` (forecasters)
    ``fit`` and ``update`` take ``covariates=`` (extra metrics by name).
``init_from`` (forecasters)
    the constructor takes ``init_from=`` (a saved model to start from).
``predicts_in_batches`` (forecasters)
    the class has ``predict_batch(members, start, horizon, quantiles)``, a
    classmethod forecasting many fitted instances in one call (those that
    share a global model in one batched forward pass); the daemon's batched
    cycle (``engine/fleet.py``) uses it for the targets of a template.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import PluginError


@dataclass(frozen=True)
class Capabilities:
    needs_base_dir: bool = False
    needs_interval: bool = False
    takes_ladder: bool = False
    stepwise_apply: bool = False
    takes_covariates: bool = False
    init_from: bool = False
    predicts_in_batches: bool = False

    def flags(self) -> list[str]:
        """The names of the capabilities set (for messages and docs)."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


#: what a plugin that declares nothing has
NONE = Capabilities()

#: which flags make sense for which kind of plugin
_ALLOWED = {
    "actuator": {"needs_base_dir", "takes_ladder", "stepwise_apply"},
    "metric source": {"needs_base_dir", "needs_interval"},
    "forecaster": {"takes_covariates", "init_from", "predicts_in_batches"},
}


def capabilities_of(obj: Any) -> Capabilities:
    """The declared capabilities of a plugin class (or instance)."""
    declared = getattr(obj, "capabilities", NONE)
    return declared if isinstance(declared, Capabilities) else NONE


def check_capabilities(kind: str, name: str, obj: Any) -> Capabilities:
    """The declaration of plugin ``obj`` registered as ``name``; a
    :class:`PluginError` when it is not a :class:`Capabilities` or sets a
    flag that means nothing for a plugin of this ``kind``. Declarations are
    inherited; none at all is ``Capabilities()``."""
    declared = getattr(obj, "capabilities", NONE)
    if not isinstance(declared, Capabilities):
        raise PluginError(
            f"{kind} {name!r} ({obj!r}) declares capabilities {declared!r}, which is not an "
            f"engine.core.plugins.Capabilities: give the class "
            f"'capabilities: ClassVar[Capabilities] = Capabilities(...)'"
        )
    stray = set(declared.flags()) - _ALLOWED.get(kind, set())
    if stray:
        raise PluginError(
            f"{kind} {name!r} declares {', '.join(sorted(stray))}, which a {kind} cannot have "
            f"(allowed: {', '.join(sorted(_ALLOWED.get(kind, ())))})"
        )
    return declared
