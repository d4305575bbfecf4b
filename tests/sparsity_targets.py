"""What overall sparsity a sparsifier's params promise, shared by the trainer and service tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nas.sparse.lottery import RATE_HIDDEN, RATE_OUTPUT


def expected_sparsity(params: dict[str, Any], pattern: str, shapes: Mapping[str, Sequence[int]]) -> float | None:
    """The overall zero fraction of weights of ``shapes`` that ``params`` promise; ``None`` if none.

    ``shapes`` maps weight names to shapes in module order; the last one is the output layer.
    Structured ("channel") targets count units, not weights, so they promise no weight sparsity.
    """
    if pattern == "channel":
        return None
    if params.get("sparsity") is not None:
        return params["sparsity"]
    if {"n", "m"} <= params.keys():  # N:M keeps N of every M
        return 1.0 - params["n"] / params["m"]
    if "rounds" in params:  # iterative pruning by per-round rates, the output layer at its own rate
        rates = {"rate_hidden": RATE_HIDDEN, "rate_output": RATE_OUTPUT}
        rates.update({key: value for key in rates if (value := params.get(key)) is not None})
        sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        output = list(shapes)[-1]
        kept = sum(
            n * (1.0 - rates["rate_output" if name == output else "rate_hidden"]) ** params["rounds"]
            for name, n in sizes.items()
        )
        return 1.0 - kept / sum(sizes.values())
    return None
