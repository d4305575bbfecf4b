"""Architectures are flat JSON-able dicts sampled from a search space (``ArchSpec``)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ArchSpec = dict[str, Any]


def flatten(arch: ArchSpec) -> dict[str, Any]:
    """The architecture as one scalar per key, as tables, filters and CSV show it.

    Spaces sample flat dicts; a nested value is spelled out as dotted keys: ``{"a": {"b": 1}}`` as
    ``a.b``, ``{"w": [8, 16]}`` as ``w.0`` and ``w.1``.
    """
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                put(f"{key}.{i}", v)
        else:
            flat[key] = value

    for key, value in arch.items():
        put(str(key), value)
    return flat


def key_order(archs: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of the (flattened) architectures, in the order trials sample them: a key a deeper
    one adds comes after the key it follows there (``width_2`` after ``width_1``, not at the end); keys
    that follow none already seen go at the end."""
    keys: list[str] = []
    seen: set[str] = set()
    for arch in archs:
        if seen.issuperset(arch):
            continue
        at = len(keys)
        for key in arch:
            if key in seen:
                at = keys.index(key) + 1
            else:
                keys.insert(at, key)
                seen.add(key)
                at += 1
    return keys


def fingerprint(arch: ArchSpec) -> str:
    """A stable hash of an architecture, equal for equal samples whatever their key order."""
    canonical = json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def uniform_suggest(
    rng: random.Random, dims: dict[str, optuna.distributions.BaseDistribution]
) -> Callable[[str], Any]:
    """A ``suggest`` for ``arch_from`` that draws each key uniformly from its distribution with ``rng``.

    ``rng.choice`` for a categorical key, ``rng.randrange(low, high + 1, step)`` (what ``rng.randint``
    calls) for an integer one, so the draws are those of a hand-written ``sample``.
    """
    from optuna.distributions import CategoricalDistribution, IntDistribution

    def draw(key: str) -> Any:
        dist = dims[key]
        if isinstance(dist, CategoricalDistribution):
            return rng.choice(dist.choices)
        if isinstance(dist, IntDistribution) and not dist.log:
            return rng.randrange(dist.low, dist.high + 1, dist.step)
        raise TypeError(f"dimension {key!r}: only categorical and linear integer dimensions are drawn uniformly")

    return draw
