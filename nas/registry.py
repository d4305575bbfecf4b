"""Named plug-ins of one kind (search spaces, strategies, sparsifiers, datasets, early-stopping rules).

Plug-ins are subclasses of their kind's base class with a ``Params`` pydantic model; the
registries fill themselves from the ``nas.<kind>`` entry-point groups on first use, so
third-party packages can add entries and ``nas`` itself never imports the packages that extend
it. A registry names its base class as a ``"module:Class"`` path, imported at the first
registration: the bases import :mod:`nas.specs`, which imports this module.
"""

from __future__ import annotations

import importlib.metadata
import pkgutil
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from nas.errors import UnknownName, did_you_mean

if TYPE_CHECKING:
    from nas.data.base import Dataset
    from nas.early_stopping import EarlyStoppingRule
    from nas.search_space import SearchSpace
    from nas.sparse.base import Sparsifier
    from nas.strategies.base import Strategy

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class map of subclasses of one base; registering a name twice is an error."""

    def __init__(self, kind: str, entry_point_group: str, base: str) -> None:
        self.kind = kind
        self._group = entry_point_group
        self._base_path = base
        self._entries: dict[str, type[T]] = {}
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def base(self) -> type[T]:
        """The class every entry subclasses (``SearchSpace``, ``Strategy``, ...)."""
        return pkgutil.resolve_name(self._base_path)

    def register(self, name: str, cls: type[T]) -> type[T]:
        """Add ``cls`` as ``name``; ``TypeError`` unless it subclasses :attr:`base` and has a pydantic ``Params``."""
        base = self.base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {base.__module__}.{base.__qualname__}")
        existing = self._entries.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}")
        if not isinstance(getattr(cls, "Params", None), type) or not issubclass(cls.Params, BaseModel):
            raise TypeError(f"{self.kind} {name!r} needs a pydantic `Params` model")
        self._entries[name] = cls
        return cls

    def _load_entry_points(self) -> None:
        with self._lock:
            if self._loaded:
                return
            for ep in importlib.metadata.entry_points(group=self._group):
                self.register(ep.name, ep.load())
            self._loaded = True

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            names = self.names()
            hint = did_you_mean(name, names) if isinstance(name, str) else ""
            raise UnknownName(f"unknown {self.kind} {name!r} (valid: {', '.join(names) or 'none'}){hint}") from None

    def create(self, name: str, params: dict[str, Any]) -> T:
        """An instance of ``name`` built from its validated ``Params``."""
        cls = self.get(name)
        return cls(cls.Params.model_validate(params))

    def describe(self) -> list[dict[str, Any]]:
        """Catalog entries: name, first docstring line and the JSON Schema of the params."""
        out = []
        for name in self.names():
            cls = self._entries[name]
            doc = (cls.__doc__ or "").strip().splitlines()
            out.append(
                {
                    "name": name,
                    "description": doc[0] if doc else "",
                    "params_schema": cls.Params.model_json_schema(),
                }
            )
        return out


search_spaces: Registry[SearchSpace] = Registry("search space", "nas.search_spaces", "nas.search_space:SearchSpace")
strategies: Registry[Strategy] = Registry("strategy", "nas.strategies", "nas.strategies.base:Strategy")
sparsifiers: Registry[Sparsifier] = Registry("sparsifier", "nas.sparsifiers", "nas.sparse.base:Sparsifier")
datasets: Registry[Dataset] = Registry("dataset", "nas.datasets", "nas.data.base:Dataset")
early_stopping: Registry[EarlyStoppingRule] = Registry(
    "early stopping rule", "nas.early_stopping", "nas.early_stopping:EarlyStoppingRule"
)
