"""The stage registry: stage classes found by name through the ``sensorlab.stages`` entry points.

Built-in stages register through that same entry-point group (see pyproject.toml),
so the plugin path is exercised on every run. A YAML file only ever names a
stage; it never names an import path.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator
from functools import lru_cache

from pipeline.errors import UserError, did_you_mean
from pipeline.stage import ENTRY_POINT_GROUP, Stage

__all__ = ["Registry", "default_registry"]


class Registry:
    """Stage classes by name.

    Parameters
    ----------
    stages : stage classes to register directly (tests, notebooks).
    entry_points : also load the ``sensorlab.stages`` entry points (lazily, on first use).
    """

    def __init__(self, stages: Iterable[type[Stage]] = (), *, entry_points: bool = True) -> None:
        self._classes: dict[str, type[Stage]] = {}
        self._pending: dict[str, importlib.metadata.EntryPoint] = {}
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                self._pending.setdefault(ep.name, ep)
        for cls in stages:
            self.add(cls)

    def add(self, cls: type[Stage], name: str | None = None) -> type[Stage]:
        """Register a stage class under ``name`` (default ``cls.name``); returns ``cls``."""
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise TypeError(f"{cls!r} is not a Stage subclass")
        key = name or cls.name
        if not key:
            raise TypeError(f"{cls.__name__} has no name")
        self._classes[key] = cls
        self._pending.pop(key, None)
        return cls

    def names(self) -> list[str]:
        """Every registered stage name, sorted."""
        return sorted({*self._classes, *self._pending})

    def get(self, name: str) -> type[Stage]:
        """The stage class called ``name``; a UserError with a did-you-mean when unknown."""
        if name in self._classes:
            return self._classes[name]
        ep = self._pending.get(name)
        if ep is None:
            raise UserError(f"unknown stage {name!r}{did_you_mean(name, self.names())}")
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            raise UserError(
                f"stage {name!r} could not be loaded from {ep.value!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise UserError(f"entry point {name!r} ({ep.value}) is not a Stage subclass")
        self._classes[name] = cls
        del self._pending[name]
        return cls

    def __contains__(self, name: object) -> bool:
        return name in self._classes or name in self._pending

    def __iter__(self) -> Iterator[type[Stage]]:
        for name in self.names():
            yield self.get(name)

    def loadable(self) -> dict[str, type[Stage]]:
        """Every stage that loads, by name (broken plugins are left out)."""
        out = {}
        for name in self.names():
            try:
                out[name] = self.get(name)
            except UserError:
                continue
        return out


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed stages (built-ins and plugins), built once per process."""
    return Registry()
