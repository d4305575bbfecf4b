"""What overall sparsity a sparsifier's params promise, shared by the trainer and service tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def expected_sparsity(params: dict[str, Any], pattern: str, shapes: Mapping[str, Sequence[int]]) -> float | None:
    """The overall zero fraction of weights of ``shapes`` that ``params`` promise; ``None`` if none.

    ``shapes`` maps weight names to shapes in module order; the last one is the output layer.
    Structured ("channel") targets count units, not weights, so they promise no weight sparsity.
    """
    if pattern == "channel":
        return None
    for key in ("sparsity", "final_sparsity"):
        if key in params:
            return params[key]
    if "k" in params:  # a density (HYDRA's top-k fraction)
        return 1.0 - params["k"]
    if {"n", "m"} <= params.keys():  # N:M keeps N of every M
        return 1.0 - params["n"] / params["m"]
    if {"rounds", "rate_hidden", "rate_output"} <= params.keys():  # iterative pruning, output layer at its own rate
        sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        output = list(shapes)[-1]
        kept = sum(
            n * (1.0 - params["rate_output" if name == output else "rate_hidden"]) ** params["rounds"]
            for name, n in sizes.items()
        )
        return 1.0 - kept / sum(sizes.values())
    return None
