"""The DARTS cell space of DASS: every conv a ``SparseConv2d``, the classifier a ``SparseLinear``.

Operations are DARTS's eight (none, 3×3 max and avg pool, skip, 3×3 and 5×5 separable conv, 3×3
and 5×5 dilated conv). DARTS stacks ``cells`` cells (those at 1/3 and 2/3 of the depth reduce the
resolution and double the channels), each with ``nodes`` intermediate nodes of ``channels``
channels; the defaults are small enough to search on a CPU. Architectures come in two kinds:

* ``{"kind": "supernet", "k": 0.05}``: the one-shot network of the ``dass`` strategy's search
  trial, every edge mixing all operations with the softmax of α. ``k`` is the fraction of every
  layer's weights the search keeps; the network is built dense, as the search starts.
* ``{"kind": "cell", "normal_<node>_<edge>_op": ..., "normal_<node>_<edge>_input": ...,
  "reduce_...": ..., "sparsity": 0.95}``: a derived network, two (operation, input) edges per
  node of the normal and the reduction cell (inputs 0 and 1 are the cell's inputs, ``2 + i`` is
  node ``i``), trained by the job's sparsifier like any other architecture. The optional
  ``sparsity`` sets every weight's target (``layer_sparsity``), so HYDRA keeps ``k = 1 − sparsity``
  of each layer, as DASS does; it is sampled when ``sparsity_choices`` is set.

``sample`` draws a random ``cell``, so ``random`` and ``tpe`` search this space too; ``dimensions``
describes the cell architectures. Importing this module does not import torch.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nas.dass import layout
from nas.dass.genotype import CELL_TYPES, EDGES_PER_NODE, OPS, Genotype, input_key, op_key
from nas.dass.genotype import sample as sample_genotype
from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec
from search_spaces._images import image_shape

if TYPE_CHECKING:
    import optuna
    import torch

Operation = Literal[
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"
]


class DassDarts(SearchSpace):
    """DARTS cells built from HYDRA's score-masked layers, searched by DASS (a supernet) or sampled (cells)."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"cells": 2, "channels": 4, "nodes": 2, "sparsity_choices": [0.5, 0.9]},
            ]},
        )

        cells: int = Field(3, ge=1, le=20, description="cells stacked (DARTS: 8 to search, 20 to evaluate)")
        channels: int = Field(
            8, ge=2, le=256, description="channels per node in the first cells; even (DARTS: 16 to search)"
        )
        nodes: int = Field(3, ge=1, le=6, description="intermediate nodes per cell (DARTS: 4)")
        stem_multiplier: int = Field(3, ge=1, le=8, description="stem channels as a multiple of `channels` (DARTS: 3)")
        stem_stride: Literal[1, 2] = Field(
            1, description="stride of the stem conv; 2 halves the resolution first (28×28 MNIST on a CPU)"
        )
        operations: list[Operation] = Field(
            list(OPS), min_length=1, description="the operations an edge may have (DARTS's eight by default)"
        )
        sparsity_choices: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
            None,
            min_length=1,
            description="uniform per-layer sparsities a sampled cell may get (key `sparsity`); null leaves "
            "every layer to the sparsifier's target",
        )

        @field_validator("channels")
        @classmethod
        def _even(cls, channels: int) -> int:
            if channels % 2:
                raise ValueError(f"channels {channels} must be even: factorized reductions split them in two halves")
            return channels

        @field_validator("operations")
        @classmethod
        def _usable(cls, operations: list[str]) -> list[str]:
            if len(set(operations)) != len(operations):
                raise ValueError(f"operations repeats a name: {operations}")
            if all(op == "none" for op in operations):
                raise ValueError("operations needs at least one operation other than 'none'")
            return [op for op in OPS if op in operations]  # DARTS's order, so α's columns are stable

    params: Params

    @property
    def _choices(self) -> list[str]:
        return [op for op in self.params.operations if op != "none"]

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A random derived network (``kind: cell``): two distinct inputs per node, uniform operations."""
        arch = sample_genotype(rng, self.params.nodes, self.params.operations).to_arch()
        if self.params.sparsity_choices is not None:
            arch["sparsity"] = rng.choice(self.params.sparsity_choices)
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key of a ``cell`` architecture; ``<cell>_<node>_<edge>_input`` ranges over node's inputs 0..node+1."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {"kind": CategoricalDistribution(["cell"])}
        for cell in CELL_TYPES:
            for node in range(p.nodes):
                for edge in range(EDGES_PER_NODE):
                    dims[op_key(cell, node, edge)] = CategoricalDistribution(self._choices)
                    dims[input_key(cell, node, edge)] = IntDistribution(0, node + 1)
        if p.sparsity_choices is not None:
            dims["sparsity"] = CategoricalDistribution(p.sparsity_choices)
        return dims

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The supernet or the derived network of ``arch``, dense; ``input_shape`` is ``(channels, height, width)``."""
        from nas.dass.network import DerivedNetwork, Supernet

        genotype = self._parse(arch)
        net = self._plan(input_shape)
        if genotype is None:
            return Supernet(net, num_classes, self.params.stem_stride, self.params.operations)
        return DerivedNetwork(net, num_classes, self.params.stem_stride, genotype)

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Every prunable weight at the arch's ``sparsity``; ``None`` without one (and for a supernet)."""
        genotype = self._parse(arch)
        if genotype is None or "sparsity" not in arch:
            return None
        weights, _ = layout.network_weights(self._plan((1, 1, 1)), 1, self.params.operations, genotype)
        return {w.name: float(arch["sparsity"]) for w in weights}

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every prunable weight a supernet or a derived network can have; a name whose position holds
        operations of different kernel sizes is listed once per size."""
        p = self.params
        net = self._plan(input_shape)
        weights, _ = layout.network_weights(net, num_classes, p.operations, None)
        for i, cell in enumerate(net.cells):
            for e in range(EDGES_PER_NODE * p.nodes):
                for op in self._choices:
                    for stride in (1, 2) if cell.reduction else (1,):
                        weights += layout.op_weights(f"cells.{i}.edges.{e}", op, cell.c, stride, True)[0]
        merged: dict[tuple[str, str, int], set[int]] = defaultdict(set)
        for w in weights:
            merged[(w.name, w.kind, w.kernel_area)].add(w.in_per_group)
        return [
            WeightSpec(name, kind, frozenset(fan_in), kernel_area) for (name, kind, kernel_area), fan_in in merged.items()
        ]

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the largest architecture: the supernet, or the derived network with the heaviest edges."""
        net = self._plan(input_shape)
        supernet = layout.params(*layout.network_weights(net, num_classes, self.params.operations, None))
        return max(supernet, self._extreme_params(net, num_classes, max))

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the smallest derived network (the lightest operation on every edge)."""
        return self._extreme_params(self._plan(input_shape), num_classes, min)

    def _extreme_params(self, net: layout.NetworkPlan, num_classes: int, pick: Any) -> int:
        """Parameters of the derived network whose every edge takes the (operation, input) ``pick`` prefers.

        An edge's parameters depend on its input only through the stride, and edges are independent,
        so choosing edge by edge, summed over the cells of its type (whose widths differ), gives the
        extreme network.
        """
        genes = []
        for reduction in (False, True):
            widths = [cell.c for cell in net.cells if cell.reduction == reduction]
            gene = []
            for node in range(self.params.nodes):
                options = [
                    (
                        sum(
                            layout.params(*layout.op_weights("e", op, c, 2 if reduction and state < 2 else 1, True))
                            for c in widths
                        ),
                        op,
                        state,
                    )
                    for op in self._choices
                    for state in range(node + 2)
                ]
                _, op, state = pick(options, key=lambda option: option[0])
                gene += [(op, state)] * EDGES_PER_NODE
            genes.append(tuple(gene))
        genotype = Genotype(normal=genes[0], reduce=genes[1])
        return layout.params(*layout.network_weights(net, num_classes, self.params.operations, genotype))

    def _plan(self, input_shape: tuple[int, ...]) -> layout.NetworkPlan:
        channels, _, _ = image_shape("dass_darts", input_shape)
        p = self.params
        return layout.plan(channels, p.cells, p.channels, p.nodes, p.stem_multiplier)

    def _parse(self, arch: dict[str, Any]) -> Genotype | None:
        """The arch's genotype, or ``None`` for a supernet; ``ValueError`` names the first offending key."""
        kind = arch.get("kind")
        if kind == "supernet":
            extra = sorted(set(arch) - {"kind", "k"})
            if extra:
                raise ValueError(f"a supernet arch has only the keys kind and k; unexpected {extra}")
            k = arch.get("k", 1.0)
            if not isinstance(k, (int, float)) or isinstance(k, bool) or not 0.0 < k <= 1.0:
                raise ValueError(f"arch k={k!r} is not a keep fraction in (0, 1]")
            return None
        if kind != "cell":
            raise ValueError(f"arch kind={kind!r} is not 'supernet' or 'cell'")
        expected = Genotype.keys(self.params.nodes) | {"kind"}
        extra = sorted(set(arch) - expected - {"sparsity"})
        if extra:
            raise ValueError(f"arch keys do not match a cell of {self.params.nodes} nodes: unexpected {extra}")
        if "sparsity" in arch:
            s = arch["sparsity"]
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0.0 <= s < 1.0:
                raise ValueError(f"arch sparsity={s!r} is not a fraction in [0, 1)")
        return Genotype.from_arch(arch, self.params.nodes, self.params.operations)
