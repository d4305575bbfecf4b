"""Recurrent classifiers over sequences and image rows (sequential MNIST), with sparse input and recurrent weights.

An image ``(channels, height, width)`` is read as ``height`` time steps of ``channels * width``
features, an input ``(steps, features)`` as it is, and a flat input ``(length,)`` as ``length``
steps of one feature: a univariate series, such as an uploaded ``x`` of shape ``(N, T)``. A table
is flat too, so this space takes one and reads its columns in their order; ``sparse_mlp``, which
sees every column at once, usually suits a table better. A stacked RNN-tanh, RNN-ReLU, GRU or
LSTM runs over the steps, and a Linear layer classifies the final hidden state. An architecture is a flat dict such as
``{"cell": "lstm", "hidden": 64, "layers": 2, "bidirectional": False}``, plus, when per-layer
sparsities are searched, ``sparsity_ih_l<i>`` (input weights of layer i), ``sparsity_hh_l<i>``
(recurrent weights) for every layer and ``sparsity_out``; a bidirectional layer's reverse
direction shares its layer's sparsities. Importing this module imports neither torch nor optuna.
"""

from __future__ import annotations

import random
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

Cell = Literal["rnn_tanh", "rnn_relu", "gru", "lstm"]
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
CELL_MODULES = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "gru": "gru", "lstm": "lstm"}
"""Cell -> the attribute holding the recurrent module: its weight names' prefix, and their ``WeightSpec`` kind."""


@dataclass(frozen=True)
class _Arch:
    cell: str
    hidden: int
    layers: int
    bidirectional: bool
    sparsity: dict[str, float] | None  # by weight name


def _sparsity_keys(layers: int) -> list[str]:
    return [f"sparsity_{kind}_l{i}" for i in range(layers) for kind in ("ih", "hh")] + ["sparsity_out"]


def _weight_names(cell: str, layers: int, bidirectional: bool) -> dict[str, str]:
    """Weight name -> the arch key of its sparsity, in the order the model lists its weights."""
    prefix = CELL_MODULES[cell]
    names = {}
    for i in range(layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            for kind in ("ih", "hh"):
                names[f"{prefix}.weight_{kind}_l{i}{suffix}"] = f"sparsity_{kind}_l{i}"
    names["out.weight"] = "sparsity_out"
    return names


class SparseRNN(SearchSpace):
    """RNN-tanh, RNN-ReLU, GRU and LSTM classifiers reading sequences, or images row by row."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"bidirectional_choices": [False, True], "layer_sparsity_choices": [0.5, 0.9]},
            ]},
        )

        cell_choices: list[Cell] = Field(
            ["rnn_tanh", "rnn_relu", "gru", "lstm"], min_length=1, description="recurrent cells to search"
        )
        hidden_choices: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
            [32, 64, 128], min_length=1, description="hidden units per layer and direction"
        )
        min_layers: int = Field(1, ge=1, le=8, description="fewest stacked recurrent layers")
        max_layers: int = Field(2, ge=1, le=8, description="most stacked recurrent layers")
        bidirectional_choices: list[bool] = Field(
            [False], min_length=1, description="whether the layers also read the rows bottom to top: [false], [true] or both"
        )
        layer_sparsity_choices: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
            None,
            min_length=1,
            description="sparsities each layer's input weights, recurrent weights and the classifier may get; null "
            "leaves every weight to the sparsifier's target",
        )

        @model_validator(mode="after")
        def _consistent(self) -> SparseRNN.Params:
            if self.min_layers > self.max_layers:
                raise ValueError(f"min_layers {self.min_layers} exceeds max_layers {self.max_layers}")
            for name in ("cell_choices", "hidden_choices", "bidirectional_choices", "layer_sparsity_choices"):
                choices = getattr(self, name)
                if choices is not None and len(set(choices)) != len(choices):
                    raise ValueError(f"{name} repeats a value: {choices}")
            return self

    params: Params

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn architecture, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The architecture whose keys ``suggest(key)`` gives, asked for only the keys it uses.

        ``suggest(key)`` returns a value of ``dimensions()[key]``; ``layers`` is asked before the
        per-layer sparsities it decides, so an Optuna trial's ``suggest_*`` samples define-by-run.
        """
        p = self.params
        arch: dict[str, Any] = {key: suggest(key) for key in ("cell", "hidden", "layers", "bidirectional")}
        if p.layer_sparsity_choices is not None:
            arch.update({key: suggest(key) for key in _sparsity_keys(arch["layers"])})
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key an architecture may have; ``sparsity_*_l<i>`` apply only when ``i < layers``."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {
            "cell": CategoricalDistribution(p.cell_choices),
            "hidden": CategoricalDistribution(p.hidden_choices),
            "layers": IntDistribution(p.min_layers, p.max_layers),
            "bidirectional": CategoricalDistribution(p.bidirectional_choices),
        }
        if p.layer_sparsity_choices is not None:
            dims.update({key: CategoricalDistribution(p.layer_sparsity_choices) for key in _sparsity_keys(p.max_layers)})
        return dims

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The classifier for ``arch``, reading inputs of ``input_shape`` as :func:`sequence_shape` says."""
        from search_spaces._rnn_layers import SequenceClassifier

        a = self._parse(arch)
        features = _step_features(input_shape)
        return SequenceClassifier(a.cell, features, a.hidden, a.layers, a.bidirectional, num_classes)

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Per-weight sparsity targets (``"lstm.weight_hh_l0"``, ``"out.weight"``), or ``None`` when not searched."""
        return self._parse(arch).sparsity

    def layer_patterns(self, arch: dict[str, Any]) -> dict[str, str] | None:
        """``None``: every weight of this space is pruned unstructured."""
        self._parse(arch)
        return None

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every weight any architecture can have, with its kind (``rnn``, ``gru``, ``lstm``, ``linear``) and fan-ins."""
        p = self.params
        features = _step_features(input_shape)
        outputs = frozenset(h * (2 if b else 1) for h in p.hidden_choices for b in p.bidirectional_choices)
        suffixes = ["", "_reverse"] if True in p.bidirectional_choices else [""]
        specs = []
        for kind in dict.fromkeys(CELL_MODULES[cell] for cell in p.cell_choices):
            for i in range(p.max_layers):
                for suffix in suffixes:
                    inputs = frozenset({features}) if i == 0 else outputs
                    specs.append(WeightSpec(f"{kind}.weight_ih_l{i}{suffix}", kind, inputs))
                    specs.append(WeightSpec(f"{kind}.weight_hh_l{i}{suffix}", kind, frozenset(p.hidden_choices)))
        specs.append(WeightSpec("out.weight", "linear", outputs))
        return specs

    def count_params(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters (weights and biases) of ``arch``'s network, without building it."""
        a = self._parse(arch)
        return _count(a.cell, a.hidden, a.layers, a.bidirectional, _step_features(input_shape), num_classes)

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The most parameters any architecture has: every count grows with gates, units, layers and directions."""
        p = self.params
        cell = max(p.cell_choices, key=_GATES.__getitem__)
        bidirectional = max(p.bidirectional_choices)
        features = _step_features(input_shape)
        return _count(cell, max(p.hidden_choices), p.max_layers, bidirectional, features, num_classes)

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The fewest parameters any architecture has."""
        p = self.params
        cell = min(p.cell_choices, key=_GATES.__getitem__)
        bidirectional = min(p.bidirectional_choices)
        features = _step_features(input_shape)
        return _count(cell, min(p.hidden_choices), p.min_layers, bidirectional, features, num_classes)

    def _parse(self, arch: dict[str, Any]) -> _Arch:
        """Check ``arch`` against the space; ``ValueError`` names the first offending key."""
        p = self.params
        if not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict, not {type(arch).__name__}")
        layers = arch.get("layers")
        if not isinstance(layers, int) or isinstance(layers, bool) or not p.min_layers <= layers <= p.max_layers:
            raise ValueError(f"arch layers={layers!r} is not an integer in {p.min_layers}..{p.max_layers}")
        expected = {"cell", "hidden", "layers", "bidirectional"}
        if p.layer_sparsity_choices is not None:
            expected |= set(_sparsity_keys(layers))
        if set(arch) != expected:
            missing, extra = sorted(expected - set(arch)), sorted(set(arch) - expected)
            raise ValueError(f"arch keys do not match layers {layers}: missing {missing}, unexpected {extra}")

        def choice(key: str, choices: list[Any]) -> Any:
            value = arch[key]
            same_type = isinstance(value, bool) == isinstance(choices[0], bool)
            if not same_type or (isinstance(choices[0], int) and not isinstance(value, int)) or value not in choices:
                raise ValueError(f"arch {key}={value!r} is not one of {choices}")
            return value

        cell = choice("cell", p.cell_choices)
        hidden = choice("hidden", p.hidden_choices)
        bidirectional = choice("bidirectional", p.bidirectional_choices)
        sparsity = None
        if p.layer_sparsity_choices is not None:
            chosen = {key: float(choice(key, p.layer_sparsity_choices)) for key in _sparsity_keys(layers)}
            sparsity = {name: chosen[key] for name, key in _weight_names(cell, layers, bidirectional).items()}
        return _Arch(cell, hidden, layers, bidirectional, sparsity)


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(time steps, features per step)`` of inputs of ``input_shape``: an image ``(channels, height,
    width)`` row by row, ``(steps, features)`` as it is, ``(length,)`` one value per step."""
    shape = tuple(input_shape)
    if not 1 <= len(shape) <= 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(
            f"sparse_rnn reads sequences (length,) or (steps, features) and images (channels, height, width); "
            f"inputs of shape {shape} are none of these"
        )
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    return (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)


def _step_features(input_shape: tuple[int, ...]) -> int:
    return sequence_shape(input_shape)[1]


def _count(cell: str, hidden: int, layers: int, bidirectional: bool, features: int, num_classes: int) -> int:
    """Weights and biases of the classifier: per layer and direction ``gates * hidden * (inputs + hidden + 2)``."""
    gates, directions = _GATES[cell], 2 if bidirectional else 1
    total = 0
    for i in range(layers):
        inputs = features if i == 0 else hidden * directions
        total += directions * gates * hidden * (inputs + hidden + 2)
    return total + (hidden * directions + 1) * num_classes
