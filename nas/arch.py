"""Architectures are flat JSON-able dicts sampled from a search space (``ArchSpec``)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ArchSpec = dict[str, Any]


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
