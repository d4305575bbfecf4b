"""The shape of a DARTS network without torch: which cells reduce, their channels, and every weight's size.

:mod:`nas.dass.network` builds its modules from :func:`plan`, and names them as :func:`op_weights`
and :func:`network_weights` do, so the search space can describe every prunable weight and count
parameters at submission without building a model (``tests/test_dass_space.py`` checks both
against built models).

Module names: ``stem.0`` (3×3 conv), ``cells.<i>.preprocess0`` / ``preprocess1`` (``ReLUConvBN``:
``1`` is the conv; ``FactorizedReduce``: ``conv_1``, ``conv_2``), the edges
``cells.<i>.edges.<e>.ops.<o>`` in a supernet (one per operation) or ``cells.<i>.edges.<e>`` in a
derived cell (edge ``e = 2·node + k``), and ``classifier``. Within an operation: separable conv
``1``, ``2``, ``5``, ``6`` (depthwise, pointwise, depthwise, pointwise); dilated conv ``1``, ``2``;
a skip connection that reduces ``conv_1``, ``conv_2``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nas.dass.genotype import CELL_TYPES, EDGES_PER_NODE, Genotype, edge_count

KERNELS = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "dil_conv_3x3": 3, "dil_conv_5x5": 5}


@dataclass(frozen=True)
class Weight:
    """One prunable weight: name, kind (``conv2d``/``linear``), input channels per group and kernel area."""

    name: str
    kind: str
    in_per_group: int
    kernel_area: int
    numel: int


@dataclass(frozen=True)
class CellPlan:
    """One cell: whether it (and the one before it) reduces, its input channels and its per-node channels."""

    reduction: bool
    reduction_prev: bool
    c_prev_prev: int
    c_prev: int
    c: int


@dataclass(frozen=True)
class NetworkPlan:
    c_in: int
    c_stem: int
    cells: tuple[CellPlan, ...]
    nodes: int
    c_out: int  # channels after the last cell, into the classifier


def reduction_cells(cells: int) -> frozenset[int]:
    """DARTS's rule: the cells at 1/3 and 2/3 of the depth reduce (for 1 or 2 cells, every cell)."""
    return frozenset({cells // 3, 2 * cells // 3})


def plan(c_in: int, cells: int, channels: int, nodes: int, stem_multiplier: int) -> NetworkPlan:
    """DARTS's ``Network`` channel bookkeeping: reduction cells double the channels; a cell outputs ``nodes·C``."""
    c_stem = stem_multiplier * channels
    c_pp, c_p, c = c_stem, c_stem, channels
    reductions = reduction_cells(cells)
    out: list[CellPlan] = []
    reduction_prev = False
    for i in range(cells):
        reduction = i in reductions
        if reduction:
            c *= 2
        out.append(CellPlan(reduction, reduction_prev, c_pp, c_p, c))
        reduction_prev = reduction
        c_pp, c_p = c_p, nodes * c
    return NetworkPlan(c_in, c_stem, tuple(out), nodes, c_p)


def _conv(name: str, c_in: int, c_out: int, kernel: int, groups: int = 1) -> Weight:
    return Weight(f"{name}.weight", "conv2d", c_in // groups, kernel * kernel, c_out * (c_in // groups) * kernel * kernel)


def _bn(c: int, affine: bool) -> int:
    return 2 * c if affine else 0


def factorized_reduce(prefix: str, c_in: int, c_out: int, affine: bool) -> tuple[list[Weight], int]:
    """Two strided 1×1 convs to ``c_out / 2`` channels each, then BatchNorm: weights and other parameters."""
    return [_conv(f"{prefix}.conv_1", c_in, c_out // 2, 1), _conv(f"{prefix}.conv_2", c_in, c_out // 2, 1)], _bn(c_out, affine)


def op_weights(prefix: str, op: str, c: int, stride: int, affine: bool) -> tuple[list[Weight], int]:
    """The prunable weights of one operation on ``c`` channels, and its other parameters (BatchNorm)."""
    if op in ("none", "max_pool_3x3", "avg_pool_3x3") or (op == "skip_connect" and stride == 1):
        return [], 0
    if op == "skip_connect":
        return factorized_reduce(prefix, c, c, affine)
    k = KERNELS[op]
    if op.startswith("sep_conv"):
        names = ((1, 2), (5, 6))
        weights = [w for dw, pw in names for w in (_conv(f"{prefix}.{dw}", c, c, k, c), _conv(f"{prefix}.{pw}", c, c, 1))]
        return weights, 2 * _bn(c, affine)
    return [_conv(f"{prefix}.1", c, c, k, c), _conv(f"{prefix}.2", c, c, 1)], _bn(c, affine)


def _preprocess(prefix: str, cell: CellPlan, affine: bool) -> tuple[list[Weight], int]:
    if cell.reduction_prev:
        w0, p0 = factorized_reduce(f"{prefix}.preprocess0", cell.c_prev_prev, cell.c, affine)
    else:
        w0, p0 = [_conv(f"{prefix}.preprocess0.1", cell.c_prev_prev, cell.c, 1)], _bn(cell.c, affine)
    return [*w0, _conv(f"{prefix}.preprocess1.1", cell.c_prev, cell.c, 1)], p0 + _bn(cell.c, affine)


def network_weights(
    net: NetworkPlan, num_classes: int, ops: Sequence[str], genotype: Genotype | None
) -> tuple[list[Weight], int]:
    """Every prunable weight of a supernet (``genotype=None``, BatchNorm without affine parameters, as in
    DARTS's search) or of a derived network (affine BatchNorm), and the count of its other parameters
    (biases, BatchNorm, and the supernet's α)."""
    affine = genotype is not None
    weights = [_conv("stem.0", net.c_in, net.c_stem, 3)]
    other = _bn(net.c_stem, True)
    for i, cell in enumerate(net.cells):
        prefix = f"cells.{i}"
        w, p = _preprocess(prefix, cell, affine)
        weights += w
        other += p
        for e, (state, op) in enumerate(_edges(net.nodes, ops, genotype, cell.reduction)):
            stride = 2 if cell.reduction and state < 2 else 1
            if genotype is None:
                for o, name in enumerate(ops):
                    w, p = op_weights(f"{prefix}.edges.{e}.ops.{o}", name, cell.c, stride, affine)
                    weights += w
                    other += p  # a pool's BatchNorm has no affine parameters in a supernet
            else:
                w, p = op_weights(f"{prefix}.edges.{e}", op, cell.c, stride, affine)
                weights += w
                other += p
    weights.append(Weight("classifier.weight", "linear", net.c_out, 1, net.c_out * num_classes))
    other += num_classes
    if genotype is None:
        other += len(CELL_TYPES) * edge_count(net.nodes) * len(ops)
    return weights, other


def _edges(nodes: int, ops: Sequence[str], genotype: Genotype | None, reduction: bool) -> Iterator[tuple[int, str]]:
    """(input state, operation) per edge: every earlier state of every node in a supernet, the genotype's otherwise."""
    if genotype is None:
        for node in range(nodes):
            for state in range(node + 2):
                yield state, ""
        return
    gene = genotype.reduce if reduction else genotype.normal
    assert len(gene) == EDGES_PER_NODE * nodes
    for op, state in gene:
        yield state, op


def params(weights: list[Weight], other: int) -> int:
    return sum(w.numel for w in weights) + other
