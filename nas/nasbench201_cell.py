"""NAS-Bench-201's cell as data (Dong & Yang, ICLR 2020): six edges, one of five operations on each.

The encoding both the ``nasbench201`` search space and the ``nasbench201`` dataset read: an
architecture is ``{"op0": ..., "op5": ...}``, its edges in NAS-Bench-201's order (node 1 <- 0;
2 <- 0, 2 <- 1; 3 <- 0, 3 <- 1, 3 <- 2), which is also the order of the benchmark's architecture
strings and of the tables' ``Op0`` .. ``Op5``.
"""

from __future__ import annotations

from typing import Any

OPERATIONS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), the order of op0..op5
KEYS = tuple(f"op{i}" for i in range(len(EDGES)))
TABLES = ("cifar10", "cifar100", "imagenet")


def operations(arch: dict[str, Any]) -> tuple[str, ...]:
    """The six operations of ``arch``; ``ValueError`` naming the key when it is not a cell of the space."""
    if set(arch) != set(KEYS):
        raise ValueError(f"a nasbench201 architecture has exactly the keys {', '.join(KEYS)}; got {sorted(arch)}")
    for key in KEYS:
        if arch[key] not in OPERATIONS:
            raise ValueError(f"{key}: {arch[key]!r} is not one of {', '.join(OPERATIONS)}")
    return tuple(arch[key] for key in KEYS)
