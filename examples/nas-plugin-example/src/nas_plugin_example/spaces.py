"""``residual_mlp``: fully connected networks with skip connections and a sparsity per block.

A space the declarative ``search_space`` cannot state (its blocks add their input back after two
Linear layers of one searched width), so it is written in Python against sparse-nas's
:class:`nas.search_space.SearchSpace` contract. Every architecture has the same keys
(``blocks``, ``width``, ``activation``, ``sparsity_stem``, ``sparsity_block<i>`` for every
possible block, ``sparsity_out``), so the base class's ``arch_from`` serves ``tpe`` and
``nsga2`` unchanged; a block beyond ``blocks`` keeps its key at the first choice so equal
networks have equal dicts. torch and optuna are imported only inside the methods that use them:
the API server loads the space to validate jobs and never builds a network.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec

if TYPE_CHECKING:
    import optuna
    from torch import nn

Activation = Literal["relu", "gelu", "silu"]
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]


def _residual_mlp(input_features: int, width: int, blocks: int, activation: str, num_classes: int) -> nn.Module:
    """The network: flatten, ``stem`` Linear, ``blocks`` residual blocks, ``out`` Linear (built here, not at import)."""
    import torch
    from torch import nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]

    class Block(nn.Module):
        """x + fc2(act(fc1(x))), then the activation."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(width, width)
            self.fc2 = nn.Linear(width, width)
            self.act = act()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x + self.fc2(self.act(self.fc1(x))))

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.stem = nn.Linear(input_features, width)
            self.act = act()
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.out = nn.Linear(width, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.stem(self.flatten(x)))
            for block in self.blocks:
                x = block(x)
            return self.out(x)

    return ResidualMLP()


class ResidualMLP(SearchSpace):
    """Residual MLPs: a stem Linear layer, residual blocks of two Linear layers, a classifier; a sparsity per block."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite runs each besides the defaults
            json_schema_extra={"examples": [{"max_blocks": 1, "width_choices": [16], "sparsity_choices": [0.0, 0.9]}]},
        )

        min_blocks: int = Field(1, ge=0, le=8, description="fewest residual blocks")
        max_blocks: int = Field(2, ge=0, le=8, description="most residual blocks")
        width_choices: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
            [32, 64, 128], min_length=1, description="units of the stem and of every block (one width per network)"
        )
        activation_choices: list[Activation] = Field(["relu", "gelu"], min_length=1, description="activations")
        sparsity_choices: list[Sparsity] = Field(
            [0.5, 0.75, 0.9], min_length=1, description="sparsities the stem, each block and the classifier may get"
        )

        @model_validator(mode="after")
        def _consistent(self) -> ResidualMLP.Params:
            if self.min_blocks > self.max_blocks:
                raise ValueError(f"min_blocks {self.min_blocks} exceeds max_blocks {self.max_blocks}")
            return self

    params: Params

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key of an architecture, each with its choices."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {
            "blocks": IntDistribution(p.min_blocks, p.max_blocks),
            "width": CategoricalDistribution(p.width_choices),
            "activation": CategoricalDistribution(p.activation_choices),
        }
        for key in self._sparsity_keys():
            dims[key] = CategoricalDistribution(p.sparsity_choices)
        return dims

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The base class's draw, made canonical (:meth:`_canonical`)."""
        return self._canonical(super().arch_from(suggest))

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn architecture."""
        p = self.params
        arch: dict[str, Any] = {
            "blocks": rng.randint(p.min_blocks, p.max_blocks),
            "width": rng.choice(p.width_choices),
            "activation": rng.choice(p.activation_choices),
        }
        arch.update({key: rng.choice(p.sparsity_choices) for key in self._sparsity_keys()})
        return self._canonical(arch)

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The freshly initialised network of ``arch``; weights named ``stem.weight``, ``blocks.<i>.fc1.weight``, ``out.weight``."""
        self._check(arch)
        return _residual_mlp(math.prod(input_shape), arch["width"], arch["blocks"], arch["activation"], num_classes)

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float]:
        """The stem's, each block's (both of its layers) and the classifier's sparsity, by weight name."""
        self._check(arch)
        sparsity = {"stem.weight": arch["sparsity_stem"], "out.weight": arch["sparsity_out"]}
        for i in range(arch["blocks"]):
            for layer in ("fc1", "fc2"):
                sparsity[f"blocks.{i}.{layer}.weight"] = arch[f"sparsity_block{i}"]
        return sparsity

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every Linear weight any architecture can have, with its possible fan-ins (for N:M checks at submission)."""
        widths = frozenset(self.params.width_choices)
        specs = [WeightSpec("stem.weight", "linear", frozenset({math.prod(input_shape)}))]
        for i in range(self.params.max_blocks):
            specs += [WeightSpec(f"blocks.{i}.{layer}.weight", "linear", widths) for layer in ("fc1", "fc2")]
        specs.append(WeightSpec("out.weight", "linear", widths))
        return specs

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the widest network with the most blocks (every count grows with width and blocks)."""
        return self._params(math.prod(input_shape), max(self.params.width_choices), self.params.max_blocks, num_classes)

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the narrowest network with the fewest blocks."""
        return self._params(math.prod(input_shape), min(self.params.width_choices), self.params.min_blocks, num_classes)

    @staticmethod
    def _params(features: int, width: int, blocks: int, num_classes: int) -> int:
        return (features + 1) * width + blocks * 2 * (width + 1) * width + (width + 1) * num_classes

    def _canonical(self, arch: dict[str, Any]) -> dict[str, Any]:
        """``arch`` with the sparsity of every block beyond ``blocks`` at the first choice, so equal networks have equal dicts."""
        for i in range(arch["blocks"], self.params.max_blocks):
            arch[f"sparsity_block{i}"] = self.params.sparsity_choices[0]
        return arch

    def _sparsity_keys(self) -> list[str]:
        return ["sparsity_stem", *(f"sparsity_block{i}" for i in range(self.params.max_blocks)), "sparsity_out"]

    def _check(self, arch: dict[str, Any]) -> None:
        """``ValueError`` naming the first key of ``arch`` that is missing, unexpected or not one of its choices."""
        p = self.params
        expected = ["blocks", "width", "activation", *self._sparsity_keys()]
        if sorted(arch) != sorted(expected):
            raise ValueError(f"arch keys {sorted(arch)} are not {sorted(expected)}")
        if not isinstance(arch["blocks"], int) or not p.min_blocks <= arch["blocks"] <= p.max_blocks:
            raise ValueError(f"arch blocks={arch['blocks']!r} is not in {p.min_blocks}..{p.max_blocks}")
        for key, choices in (("width", p.width_choices), ("activation", p.activation_choices)):
            if arch[key] not in choices:
                raise ValueError(f"arch {key}={arch[key]!r} is not one of {choices}")
        for key in self._sparsity_keys():
            if arch[key] not in p.sparsity_choices:
                raise ValueError(f"arch {key}={arch[key]!r} is not one of {p.sparsity_choices}")
