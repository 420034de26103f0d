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
