"""Name → builder registries for teachers, students, datasets and losses.

Recipes name components by string; the registries are the *only* way a string becomes code, so a
recipe can never import an arbitrary class. Built-in components register when their module is
imported; third-party packages register through entry points (group ``kdiqa.<kind>``), whose value
is either the builder itself (registered under the entry point's name) or a module that registers
its builders on import.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import Any, TypeVar

from kdiqa.errors import RegistryError

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """A mapping from names to builders, filled lazily from built-in modules and entry points."""

    def __init__(self, kind: str, builtin_modules: Sequence[str] = (), group: str | None = None):
        self.kind = kind
        self.group = group or f"kdiqa.{kind}"
        self._builtin_modules = tuple(builtin_modules)
        self._items: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@TEACHERS.register("dpiqa")``; the name defaults to the object's name."""

        def decorator(obj: T) -> T:
            key = name or obj.__name__
            existing = self._items.get(key)
            if existing is not None and existing is not obj:
                raise RegistryError(f"{self.kind} {key!r} is registered twice ({_where(existing)} and {_where(obj)})")
            self._items[key] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in metadata.entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                raise RegistryError(f"entry point {ep.name!r} in group {self.group} failed to load: {exc}") from exc
            if callable(obj) and ep.name not in self._items:
                self.register(ep.name)(obj)

    def reload(self) -> None:
        """Scan entry points again (after a plugin was installed in this process)."""
        self._loaded = False
        self._load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self._unknown(name)) from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Build the named component; a bad keyword is reported as a user error naming it.

        A registered class builds through its ``from_options`` when it has one (kdiqa's models do: see
        :mod:`kdiqa.modeling`); anything else registered is called with the options.
        """
        builder = self.get(name)
        make = getattr(builder, "from_options", builder)
        try:
            return make(**kwargs)
        except TypeError as exc:
            # Only rewrite errors about the call itself (or the class's constructor it forwards the options
            # to), not TypeErrors raised deep inside the builder.
            called = [make, builder.__init__] if isinstance(builder, type) else [make]
            about_call = str(exc).split(" ", 1)[0] in {f"{getattr(f, '__qualname__', '')}()" for f in called}
            if about_call or getattr(exc.__traceback__, "tb_next", None) is None:
                if "argument" in str(exc):
                    raise RegistryError(f"{self.kind} {name!r}: {exc}") from exc
            raise

    def _unknown(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known) or 'none'})"


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


TEACHERS = Registry("teachers", ["kdiqa.teachers.dpiqa", "kdiqa.teachers.tanet", "kdiqa.teachers.external"])
STUDENTS = Registry("students", ["kdiqa.students.timm_student", "kdiqa.students.official"])
DATASETS = Registry("datasets", ["kdiqa.data.formats", "kdiqa.data.mini"])
LOSSES = Registry("losses", ["kdiqa.losses"])
