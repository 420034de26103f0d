"""A small plugin registry: ``name -> "module:attr"`` plus install hints,
extended by an entry-point group (the fsspec / pluggy pattern).

Nothing is imported until a name is looked up, so heavy optional
dependencies (torch, prophet, boto3, ...) stay unloaded until used. An unknown
name lists the known ones; a missing optional dependency names the extra to
install.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from .errors import PluginError


@dataclass(frozen=True)
class _Entry:
    target: str  # "module:attr"
    extra: str | None  # pip extra that provides its dependencies
    packages: tuple[str, ...]  # top-level packages it needs


class Registry:
    """Maps plugin names to import paths; resolves lazily."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._builtin: dict[str, _Entry] = {}
        self._loaded: dict[str, Any] = {}
        self._validators: list[Callable[[str, Any], None]] = []

    def add(self, name: str, target: str, *, extra: str | None = None,
            packages: tuple[str, ...] = ()) -> None:
        self._builtin[name] = _Entry(target, extra, packages)
        self._loaded.pop(name, None)

    def register(self, name: str, obj: Any) -> None:
        """Register an already-imported plugin (tests, embedding)."""
        self._validate(name, obj)
        self._loaded[name] = obj

    def unregister(self, name: str) -> None:
        """Forget a plugin registered with :meth:`register` (tests)."""
        self._loaded.pop(name, None)

    def add_validator(self, fn: Callable[[str, Any], None]) -> None:
        self._validators.append(fn)

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._builtin) | set(self._loaded) | set(self._entry_points()))

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtin:
            entry = self._builtin[name]
            obj = self._import(name, entry)
        else:
            eps = self._entry_points()
            if name not in eps:
                raise PluginError(
                    f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
                )
            try:
                obj = eps[name].load()
            except ImportError as exc:
                raise PluginError(
                    f"{self.kind} {name!r} (entry point {eps[name].value}) failed to import: {exc}"
                ) from exc
        self._validate(name, obj)
        self._loaded[name] = obj
        return obj

    def _import(self, name: str, entry: _Entry) -> Any:
        module, _, attr = entry.target.partition(":")
        hint = f"pip install 'forescale[{entry.extra}]'" if entry.extra else "pip install forescale"
        # the declared packages are looked for, not imported (torch stays
        # unimported until a model is fitted), so a plugin whose heavy
        # library is imported lazily still fails here, at load
        for pkg in entry.packages:
            try:
                found = importlib.util.find_spec(pkg) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise PluginError(f"{self.kind} {name!r} needs the package {pkg!r}, which is not installed; "
                                  f"install it with: {hint}")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise PluginError(
                f"{self.kind} {name!r} needs the package {missing!r}, which is not installed; "
                f"install it with: {hint}"
            ) from exc
        return getattr(mod, attr)

    def _validate(self, name: str, obj: Any) -> None:
        for fn in self._validators:
            fn(name, obj)
