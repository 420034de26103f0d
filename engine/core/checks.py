"""Small validation helpers the configs of every package share."""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable, TypeVar

T = TypeVar("T", bound=Hashable)


def repeated(items: Iterable[T]) -> list[T]:
    """The items that occur more than once, each once, sorted (what a
    "names must be unique" error lists)."""
    return sorted((x for x, n in Counter(items).items() if n > 1), key=str)
