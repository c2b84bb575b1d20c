"""Named registries: solvers, sensitivity methods, quantizers, fairness terms, plan builders,
samplers and datasets are each one :class:`Registry`.

A new entry is one decorated class or function::

    METHODS = Registry("sensitivity method", name_attr="name")

    @METHODS.register("fisher")
    class Fisher(SensitivityMethod): ...

    METHODS.get("fisher")      # the class; an unknown name is a UserError listing the names

This module is core: it imports only :mod:`fqopt.errors`, so ``fqopt.solvers`` may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fqopt.errors import UserError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """An ordered map ``name -> entry`` of one kind of thing.

    kind: what an entry is, for messages (``"unknown {kind} 'x'; expected one of a, b"``).
    hint: appended to the unknown-name message (e.g. how to pass a parameter).
    name_attr: set this attribute of a registered entry to its name (classes that know their
        name, like ``Solver.name``).
    load: called once, before the first lookup or listing, to import modules whose entries
        register themselves (built-in back-ends that are not imported eagerly).
    """

    def __init__(self, kind: str, *, hint: str = "", name_attr: str | None = None,
                 load: Callable[[], None] | None = None):
        self.kind = kind
        self.hint = hint
        self.name_attr = name_attr
        self._load = load
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Register ``entry`` under ``name``; without ``entry``, a decorator that does.

        Registering a name twice is an error unless it is the same entry or ``replace``."""
        if not isinstance(name, str) or not name:
            raise UserError(f"a {self.kind} needs a non-empty name, got {name!r}")

        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and old is not obj and not replace:
                raise UserError(f"{self.kind} {name!r} is already registered ({_describe(old)}); "
                                "pass replace=True to replace it")
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T | None:
        """Remove ``name`` and return its entry (None if it was not registered)."""
        return self._entries.pop(name, None)

    # ------------------------------------------------------------------ looking up
    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name is a :class:`UserError` that lists the names."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            pass
        hint = f" {self.hint}" if self.hint else ""
        raise UserError(f"unknown {self.kind} {name!r}; expected one of "
                        f"{', '.join(self._entries)}{hint}")

    __getitem__ = get

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._ensure_loaded()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._ensure_loaded()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def _ensure_loaded(self) -> None:
        if self._load is not None:
            load, self._load = self._load, None  # before calling: loading registers entries
            load()


def _describe(obj) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)
