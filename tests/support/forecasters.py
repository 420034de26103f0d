"""Test doubles registered as forecasters for one test module only (the
contract suite runs over the real registry, not over test doubles)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import forecasters


@contextmanager
def registered(**classes: type) -> Iterator[None]:
    """Register ``name=Class`` pairs for the duration of the block."""
    for name, cls in classes.items():
        forecasters.registry.register(name, cls)
    try:
        yield
    finally:
        for name in classes:
            forecasters.registry.unregister(name)


def scaled_bands(name: str, factor: float) -> type:
    """Persistence's point with every quantile level at ``factor`` times it:
    a model whose quantiles are off (too high for factor > 1, all below the
    point for factor < 1) while its point is persistence's."""
    from forecasters.naive import Persistence

    def _predict(self, ahead, quantiles):
        point, _ = Persistence._predict(self, ahead, quantiles)
        return point, {q: factor * point for q in quantiles}

    return type(f"ScaledBands_{name}", (Persistence,), {"name": name, "_predict": _predict,
                                                        "__doc__": scaled_bands.__doc__})
