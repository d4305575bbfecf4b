"""DARTS cells as plain data: the eight operations, genotypes as flat dicts, and their derivation from α.

A genotype gives every intermediate node of the normal and the reduction cell two incoming edges,
each an (operation, input state) pair; states 0 and 1 are the cell's inputs (the outputs of the
two previous cells), state ``2 + i`` is node ``i``. As an architecture it is a flat dict::

    {"kind": "cell", "normal_0_0_op": "sep_conv_3x3", "normal_0_0_input": 0, ...,
     "reduce_<node>_<edge>_op": ..., "reduce_<node>_<edge>_input": ...}

Nothing here imports torch: the API server validates architectures with it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""DARTS's operations (``genotypes.PRIMITIVES``), in DARTS's order."""

CELL_TYPES: tuple[str, str] = ("normal", "reduce")
EDGES_PER_NODE = 2

Gene = tuple[tuple[str, int], ...]
"""One cell: ``(operation, input state)`` per derived edge, two per node in node order."""


def edge_count(nodes: int) -> int:
    """Edges of a supernet cell with ``nodes`` intermediate nodes: node ``i`` reads all ``i + 2`` earlier states."""
    return sum(i + 2 for i in range(nodes))


def op_key(cell: str, node: int, edge: int) -> str:
    return f"{cell}_{node}_{edge}_op"


def input_key(cell: str, node: int, edge: int) -> str:
    return f"{cell}_{node}_{edge}_input"


@dataclass(frozen=True)
class Genotype:
    """A derived normal and reduction cell."""

    normal: Gene
    reduce: Gene

    @property
    def nodes(self) -> int:
        return len(self.normal) // EDGES_PER_NODE

    def to_arch(self) -> dict[str, Any]:
        """The flat architecture dict (``kind: cell``) of this genotype."""
        arch: dict[str, Any] = {"kind": "cell"}
        for cell in CELL_TYPES:
            for position, (op, state) in enumerate(getattr(self, cell)):
                node, edge = divmod(position, EDGES_PER_NODE)
                arch[op_key(cell, node, edge)] = op
                arch[input_key(cell, node, edge)] = state
        return arch

    @classmethod
    def from_arch(cls, arch: dict[str, Any], nodes: int, ops: Sequence[str]) -> Genotype:
        """The genotype in ``arch``; ``ValueError`` names the first key that is missing or wrong.

        Keys other than the genotype's (``kind``, ``sparsity``) are the caller's to check.
        """
        choices = [op for op in ops if op != "none"]
        genes: dict[str, list[tuple[str, int]]] = {}
        for cell in CELL_TYPES:
            gene = []
            for node in range(nodes):
                for edge in range(EDGES_PER_NODE):
                    okey, ikey = op_key(cell, node, edge), input_key(cell, node, edge)
                    if okey not in arch or ikey not in arch:
                        raise ValueError(f"arch is missing {okey if okey not in arch else ikey} (a cell has {nodes} nodes)")
                    op, state = arch[okey], arch[ikey]
                    if op not in choices:
                        raise ValueError(f"arch {okey}={op!r} is not one of {choices}")
                    if not isinstance(state, int) or isinstance(state, bool) or not 0 <= state <= node + 1:
                        raise ValueError(f"arch {ikey}={state!r} is not an integer in 0..{node + 1} (node {node}'s inputs)")
                    gene.append((op, state))
            genes[cell] = gene
        return cls(normal=tuple(genes["normal"]), reduce=tuple(genes["reduce"]))

    @staticmethod
    def keys(nodes: int) -> set[str]:
        """Every genotype key of an architecture with ``nodes`` nodes per cell."""
        return {
            key(cell, node, edge)
            for cell in CELL_TYPES
            for node in range(nodes)
            for edge in range(EDGES_PER_NODE)
            for key in (op_key, input_key)
        }


def sample(rng: random.Random, nodes: int, ops: Sequence[str]) -> Genotype:
    """A uniformly drawn genotype: two distinct inputs per node, each edge a non-``none`` operation."""
    choices = [op for op in ops if op != "none"]
    genes = []
    for _ in CELL_TYPES:
        gene: list[tuple[str, int]] = []
        for node in range(nodes):
            inputs = sorted(rng.sample(range(node + 2), EDGES_PER_NODE))
            gene += [(rng.choice(choices), state) for state in inputs]
        genes.append(tuple(gene))
    return Genotype(*genes)


def derive(weights: dict[str, Sequence[Sequence[float]]], nodes: int, ops: Sequence[str]) -> Genotype:
    """DARTS's ``genotype()``: per node, the two incoming edges whose strongest non-``none`` weight is largest,
    each with its strongest non-``none`` operation.

    ``weights[cell]`` holds one row of operation weights (softmax of α) per supernet edge, edges
    in node order and, within a node, by input state. Ties go to the lower index, and each node's
    two edges are listed by input state, so equal weights give equal architectures.
    """
    real = [k for k, op in enumerate(ops) if op != "none"]
    if not real:
        raise ValueError("the operations hold only 'none'; a cell needs at least one other")
    genes = []
    for cell in CELL_TYPES:
        rows = weights[cell]
        if len(rows) != edge_count(nodes) or any(len(row) != len(ops) for row in rows):
            raise ValueError(
                f"{cell} weights have shape {len(rows)}x{len(rows[0]) if rows else 0}, expected "
                f"{edge_count(nodes)}x{len(ops)}"
            )
        gene: list[tuple[str, int]] = []
        start = 0
        for node in range(nodes):
            incoming = rows[start : start + node + 2]
            strength = [max(row[k] for k in real) for row in incoming]
            chosen = sorted(sorted(range(node + 2), key=lambda j: -strength[j])[:EDGES_PER_NODE])
            for state in chosen:
                best = max(real, key=lambda k: (incoming[state][k], -k))
                gene.append((ops[best], state))
            start += node + 2
        genes.append(tuple(gene))
    return Genotype(*genes)
