"""Multi-layer perceptrons in the style of LeNet-300-100, optionally with a sparsity per layer.

An architecture is a flat dict such as ``{"depth": 2, "width_0": 300, "width_1": 100,
"activation": "relu"}``, plus ``sparsity_fc0 .. sparsity_out`` when layer sparsities are searched.
Only the keys that the sampled depth uses are present, so equal networks have equal dicts.
Importing this module does not import torch or optuna (the API server loads it for validation).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.arch import uniform_suggest

from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec

if TYPE_CHECKING:
    import optuna
    import torch

Activation = Literal["relu", "tanh", "gelu", "silu"]
_ACTIVATION_MODULES: dict[str, str] = {"relu": "ReLU", "tanh": "Tanh", "gelu": "GELU", "silu": "SiLU"}


@dataclass(frozen=True)
class _Arch:
    """An architecture checked against the space."""

    widths: tuple[int, ...]
    activation: str
    sparsity: dict[str, float] | None


def _layer_names(depth: int) -> list[str]:
    """Names of the Linear layers, as ``named_modules`` reports them: fc0 .. fc<depth-1>, out."""
    return [f"fc{i}" for i in range(depth)] + ["out"]


class SparseMLP(SearchSpace):
    """Fully connected networks (Flatten, then Linear + activation per hidden layer, then a Linear classifier).

    Inputs of any shape are flattened, so the space takes tables, sequences and images alike.
    """

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"max_depth": 2, "layer_sparsity_choices": [0.5, 0.75, 0.9]},
            ]},
        )

        min_depth: int = Field(1, ge=1, le=16, description="fewest hidden layers")
        max_depth: int = Field(3, ge=1, le=16, description="most hidden layers")
        width_choices: list[Annotated[int, Field(ge=1, le=16384)]] = Field(
            [32, 64, 100, 128, 256, 300],
            min_length=1,
            description="units a hidden layer may have",
        )
        activation_choices: list[Activation] = Field(
            ["relu", "tanh", "gelu"],
            min_length=1,
            description="activations the hidden layers may share",
        )
        layer_sparsity_choices: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
            None,
            min_length=1,
            description="sparsities each Linear layer may get; null leaves every layer to the sparsifier's target",
        )

        @model_validator(mode="after")
        def _consistent(self) -> SparseMLP.Params:
            if self.min_depth > self.max_depth:
                raise ValueError(f"min_depth {self.min_depth} exceeds max_depth {self.max_depth}")
            for name in ("width_choices", "activation_choices", "layer_sparsity_choices"):
                choices = getattr(self, name)
                if choices is not None and len(set(choices)) != len(choices):
                    raise ValueError(f"{name} repeats a value: {choices}")
            return self

    params: Params

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn architecture, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The architecture whose keys ``suggest(key)`` gives, asked for only the keys it uses, ``depth`` first.

        ``suggest(key)`` returns a value of ``dimensions()[key]``; an Optuna trial's ``suggest_*``
        samples this way define-by-run, so a key the depth leaves out is never sampled.
        """
        p = self.params
        depth = suggest("depth")
        arch: dict[str, Any] = {"depth": depth}
        arch.update({f"width_{i}": suggest(f"width_{i}") for i in range(depth)})
        arch["activation"] = suggest("activation")
        if p.layer_sparsity_choices is not None:
            arch.update({f"sparsity_{name}": suggest(f"sparsity_{name}") for name in _layer_names(depth)})
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key an architecture may have; ``width_i`` and ``sparsity_fc<i>`` apply only when ``i < depth``."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {"depth": IntDistribution(p.min_depth, p.max_depth)}
        dims.update({f"width_{i}": CategoricalDistribution(p.width_choices) for i in range(p.max_depth)})
        dims["activation"] = CategoricalDistribution(p.activation_choices)
        if p.layer_sparsity_choices is not None:
            dims.update(
                {f"sparsity_{name}": CategoricalDistribution(p.layer_sparsity_choices) for name in _layer_names(p.max_depth)}
            )
        return dims

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The network for ``arch``, with layers named flatten, fc0, act0, ..., out."""
        from torch import nn

        a = self._parse(arch)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        in_features = math.prod(input_shape)
        for i, width in enumerate(a.widths):
            layers.append((f"fc{i}", nn.Linear(in_features, width)))
            layers.append((f"act{i}", getattr(nn, _ACTIVATION_MODULES[a.activation])()))
            in_features = width
        layers.append(("out", nn.Linear(in_features, num_classes)))
        return nn.Sequential(OrderedDict(layers))

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Per-layer sparsity targets keyed by weight name (``"fc0.weight"``), or ``None`` when not searched."""
        sparsity = self._parse(arch).sparsity
        return None if sparsity is None else {f"{name}.weight": target for name, target in sparsity.items()}

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every Linear weight any architecture of the space can have, with its possible fan-ins."""
        p = self.params
        widths = frozenset(p.width_choices)
        specs = [WeightSpec("fc0.weight", "linear", frozenset({math.prod(input_shape)}))]
        specs += [WeightSpec(f"fc{i}.weight", "linear", widths) for i in range(1, p.max_depth)]
        specs.append(WeightSpec("out.weight", "linear", widths))
        return specs

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The most parameters (weights and biases) any architecture of the space has.

        Lets the server refuse a space too large for it at submission, without building a model.
        Every layer's count grows with both its widths, so the widest choice at every depth wins.
        """
        p = self.params
        width = max(p.width_choices)
        fan_in = math.prod(input_shape)
        return max(
            (fan_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
            for depth in range(p.min_depth, p.max_depth + 1)
        )

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The fewest parameters any architecture of the space has: the narrowest choice at every depth."""
        p = self.params
        width = min(p.width_choices)
        fan_in = math.prod(input_shape)
        return min(
            (fan_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
            for depth in range(p.min_depth, p.max_depth + 1)
        )

    def _parse(self, arch: dict[str, Any]) -> _Arch:
        """Check ``arch`` against the space; ``ValueError`` names the first offending key."""
        p = self.params
        depth = arch.get("depth")
        if not isinstance(depth, int) or isinstance(depth, bool) or not p.min_depth <= depth <= p.max_depth:
            raise ValueError(f"arch depth {depth!r} is not an integer in {p.min_depth}..{p.max_depth}")
        expected = {"depth", "activation"} | {f"width_{i}" for i in range(depth)}
        if p.layer_sparsity_choices is not None:
            expected |= {f"sparsity_{name}" for name in _layer_names(depth)}
        if set(arch) != expected:
            missing, extra = sorted(expected - set(arch)), sorted(set(arch) - expected)
            raise ValueError(f"arch keys do not match depth {depth}: missing {missing}, unexpected {extra}")

        def choice(key: str, choices: list[Any]) -> Any:
            if arch[key] not in choices:
                raise ValueError(f"arch {key}={arch[key]!r} is not one of {choices}")
            return arch[key]

        widths = tuple(int(choice(f"width_{i}", p.width_choices)) for i in range(depth))
        activation = choice("activation", p.activation_choices)
        sparsity = None
        if p.layer_sparsity_choices is not None:
            sparsity = {
                name: float(choice(f"sparsity_{name}", p.layer_sparsity_choices)) for name in _layer_names(depth)
            }
        return _Arch(widths, activation, sparsity)
