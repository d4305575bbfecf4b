"""A sparsity and a sparsity pattern per layer of a model a user uploaded, fine-tuned from its trained weights.

The network is fixed: the uploaded ONNX model (``POST /api/v1/models``), converted to torch with
its pretrained weights (:func:`nas.models.onnx_import.load_onnx_model`). What is searched is how
each prunable weight (a Linear or a convolution) is made sparse. An architecture is a flat dict::

    {"pattern_group0": "dense", "pattern_group1": "unstructured", "sparsity_group1": 0.8, ...}

A group is a run of consecutive prunable layers in the model's order; a model with at most
``max_groups`` prunable layers has one group per layer, a larger one has ``max_groups`` runs of
nearly equal length, so a deep network is searched in as many decisions as a small one.
``sparsity_group<g>`` is present only for unstructured and channel groups (dense and N:M fix their
own density), so equal networks have equal dicts.

The model's description (input shape, outputs, prunable layers) comes from the process's model
catalog (:mod:`nas.models.stored`): the API server's is scoped to the caller's models, so another
owner's model is unknown exactly as an id never stored is. Importing this module imports neither
torch nor optuna.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from nas.arch import uniform_suggest
from nas.installed import STORE_ID_PREFIX_PATTERN as ID_PREFIX_PATTERN
from nas.models.stored import UnknownModel, current_model_catalog
from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec
from nas.sparse.magnitude import parse_pattern

if TYPE_CHECKING:
    import optuna
    import torch

_SPARSE_PATTERNS = ("unstructured", "channel")  # the patterns whose density a sparsity sets
_WEIGHT_KINDS = {"conv": "conv2d"}  # the catalog's layer kinds as sparsifiers name weight kinds


@dataclass(frozen=True)
class Layer:
    """One prunable weight of the model, as the catalog describes it."""

    name: str  # the weight's name, as nas.sparse.masks.prunable_weights gives it
    kind: str  # "linear" or "conv2d", as nas.sparse.masks.weight_kind names them
    shape: tuple[int, ...]  # (out, in) or (out, in per group, kh, kw)

    @property
    def fan_in(self) -> int:
        """Weights per output unit along the input channels, the axis N:M groups run along."""
        return self.shape[1]

    @property
    def kernel_area(self) -> int:
        return self.shape[2] * self.shape[3] if len(self.shape) == 4 else 1


@dataclass(frozen=True)
class ModelDescription:
    """What the space needs of a stored model without loading it."""

    model_id: str
    input_shape: tuple[int, ...]
    num_outputs: int
    params: int
    sha256: str
    layers: tuple[Layer, ...]


def describe(model_id: str) -> ModelDescription:
    """The stored model ``model_id`` as this process's model catalog knows it; raises :class:`UnknownModel`."""
    record = current_model_catalog().get(model_id)
    return ModelDescription(
        model_id=record.id,
        input_shape=tuple(record.input_shape),
        num_outputs=int(record.num_outputs),
        params=int(record.params),
        sha256=record.sha256,
        layers=tuple(Layer(layer["name"], _WEIGHT_KINDS.get(layer["kind"], layer["kind"]), tuple(layer["shape"]))
                     for layer in record.layers),  # fmt: skip
    )


def groups(n_layers: int, max_groups: int) -> list[range]:
    """Layer indices per group: one group per layer, or ``max_groups`` runs of consecutive layers of nearly
    equal length."""
    count = min(n_layers, max_groups)
    return [range(g * n_layers // count, (g + 1) * n_layers // count) for g in range(count)]


class ModelSparsity(SearchSpace):
    """Per-layer (or per-group) sparsity and pattern of an uploaded model, fine-tuned from its pretrained weights."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"pattern_choices": ["dense", "unstructured", "channel", "2:4"], "layer_sparsity_choices": [0.5, 0.8],
                 "max_groups": 2},
            ]},
        )

        model_id: str = Field(
            pattern=ID_PREFIX_PATTERN,
            description="the stored model's id, as POST /api/v1/models answered it, or a unique prefix of it (at "
            "least 4 characters); the stored spec keeps the whole id",
        )
        layer_sparsity_choices: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
            [0.5, 0.7, 0.8, 0.9, 0.95],
            min_length=1,
            description="sparsities an unstructured or channel layer (or group) may get",
        )
        pattern_choices: list[str] = Field(
            ["dense", "unstructured"],
            min_length=1,
            description="sparsity patterns a layer (or group) may get: 'dense', 'unstructured', 'channel' (whole output "
            "channels; never the last layer, whose outputs are the classes) and 'N:M' such as '2:4' (only layers "
            "whose input channels are a multiple of M). The magnitude sparsifier prunes by them; other "
            "sparsifiers prune each layer unstructured at its pattern's density",
        )
        max_groups: int = Field(
            16, ge=1, le=128, description="most decisions per pattern and sparsity: a model with more prunable layers "
            "has them grouped, in order, into this many runs of consecutive layers"
        )  # fmt: skip
        _model: ModelDescription | None = PrivateAttr(None)

        @field_validator("pattern_choices")
        @classmethod
        def _known_patterns(cls, patterns: list[str]) -> list[str]:
            for pattern in patterns:
                parse_pattern(pattern)
            return patterns

        @field_validator("model_id")
        @classmethod
        def _stored(cls, model_id: str) -> str:
            try:
                return describe(model_id).model_id  # a prefix becomes the whole id
            except UnknownModel as exc:  # the same answer for an id never stored and another owner's
                raise ValueError(str(exc)) from None

        @model_validator(mode="after")
        def _consistent(self) -> ModelSparsity.Params:
            for name in ("layer_sparsity_choices", "pattern_choices"):
                choices = getattr(self, name)
                if len(set(choices)) != len(choices):
                    raise ValueError(f"{name} repeats a value: {choices}")
            self._model = describe(self.model_id)
            if not self._model.layers:
                raise ValueError(f"model {self.model_id} has no prunable layer (Linear, Gemm, MatMul or Conv)")
            eligible = _eligible_patterns(self._model.layers, groups(len(self._model.layers), self.max_groups),
                                          self.pattern_choices)  # fmt: skip
            stuck = [g for g, choices in enumerate(eligible) if not choices]
            if stuck:
                raise ValueError(
                    f"pattern_choices {self.pattern_choices} leave no pattern for group(s) {stuck} of model "
                    f"{self.model_id}; add 'dense' or 'unstructured'"
                )
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        model = params._model or describe(params.model_id)
        self.model = model
        self.groups = groups(len(model.layers), params.max_groups)
        self._eligible = _eligible_patterns(model.layers, self.groups, params.pattern_choices)

    # --- sampling ------------------------------------------------------------------------------

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn allocation, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The allocation whose keys ``suggest(key)`` gives: each group's pattern, then its sparsity if the
        pattern takes one."""
        arch: dict[str, Any] = {}
        for g in range(len(self.groups)):
            pattern = arch[f"pattern_group{g}"] = suggest(f"pattern_group{g}")
            if pattern in _SPARSE_PATTERNS:
                arch[f"sparsity_group{g}"] = suggest(f"sparsity_group{g}")
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """A pattern per group (those its layers can take) and a sparsity, which applies to unstructured and
        channel groups."""
        from optuna.distributions import CategoricalDistribution

        dims: dict[str, optuna.distributions.BaseDistribution] = {}
        for g, eligible in enumerate(self._eligible):
            dims[f"pattern_group{g}"] = CategoricalDistribution(eligible)
            dims[f"sparsity_group{g}"] = CategoricalDistribution(self.params.layer_sparsity_choices)
        return dims

    # --- the network ---------------------------------------------------------------------------

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The uploaded model with its pretrained weights (a fresh copy), once ``arch`` and the data's shape
        are checked."""
        self._parse(arch)
        return self.reference_model(input_shape, num_classes)

    def reference_model(self, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The uploaded model, dense, with its pretrained weights: what every trial starts from and is compared with."""
        from nas.models.node_cache import pretrained_model

        self._check_shape(input_shape, num_classes)
        return pretrained_model(self.model.model_id, self.model.sha256)

    def stored_model(self) -> str:
        return self.model.model_id

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float]:
        """Each weight's sparsity: 0 for dense, ``1 - N/M`` for N:M, the group's for unstructured and channel."""
        patterns, sparsity = self._parse(arch)
        targets = {}
        for g, members in enumerate(self.groups):
            nm = parse_pattern(patterns[g])
            target = 0.0 if patterns[g] == "dense" else 1.0 - nm[0] / nm[1] if nm is not None else sparsity[g]
            targets.update({self.model.layers[i].name: target for i in members})
        return targets

    def layer_patterns(self, arch: dict[str, Any]) -> dict[str, str]:
        """Each weight's pattern, its group's."""
        patterns, _ = self._parse(arch)
        return {self.model.layers[i].name: patterns[g] for g, members in enumerate(self.groups) for i in members}

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """The model's prunable weights with the patterns their group may take; a ``ValueError`` saying both
        shapes when the data does not fit the model."""
        self._check_shape(input_shape, num_classes)
        patterns = {i: frozenset(eligible) for members, eligible in zip(self.groups, self._eligible) for i in members}
        return [
            WeightSpec(layer.name, layer.kind, frozenset({layer.fan_in}), layer.kernel_area, patterns[i])
            for i, layer in enumerate(self.model.layers)
        ]

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The model's parameters: every architecture is the same network."""
        self._check_shape(input_shape, num_classes)
        return self.model.params

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return self.max_params(input_shape, num_classes)

    # --- internals -----------------------------------------------------------------------------

    def _check_shape(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        model = self.model
        if tuple(input_shape) != model.input_shape or num_classes != model.num_outputs:
            raise ValueError(
                f"model {model.model_id} takes inputs of shape {list(model.input_shape)} and gives "
                f"{model.num_outputs} outputs, but the dataset's inputs have shape {list(input_shape)} and it has "
                f"{num_classes} classes"
            )

    def _parse(self, arch: dict[str, Any]) -> tuple[list[str], dict[int, float]]:
        """Each group's pattern, and the sparsity of its sparse ones; ``ValueError`` names the first offending key."""
        if not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict, not {type(arch).__name__}")
        patterns: list[str] = []
        sparsity: dict[int, float] = {}
        expected: set[str] = set()
        for g, eligible in enumerate(self._eligible):
            key = f"pattern_group{g}"
            expected.add(key)
            if arch.get(key) not in eligible:
                raise ValueError(f"arch {key}={arch.get(key)!r} is not one of {eligible}")
            patterns.append(arch[key])
            if arch[key] in _SPARSE_PATTERNS:
                key = f"sparsity_group{g}"
                expected.add(key)
                value = arch.get(key)
                if isinstance(value, bool) or value not in self.params.layer_sparsity_choices:
                    raise ValueError(f"arch {key}={value!r} is not one of {self.params.layer_sparsity_choices}")
                sparsity[g] = float(value)
        unexpected = sorted(set(arch) - expected)
        if unexpected:
            raise ValueError(f"arch keys do not match the model's groups and patterns: unexpected {unexpected}")
        return patterns, sparsity


def _eligible_patterns(layers: tuple[Layer, ...], grouped: list[range], choices: list[str]) -> list[list[str]]:
    """The pattern choices each group may take: N:M only where every layer's fan-in is a multiple of M, channel
    never for the group holding the last layer (its outputs are the classes)."""
    last = len(layers) - 1
    eligible = []
    for members in grouped:
        fits = []
        for pattern in choices:
            nm = parse_pattern(pattern)
            if nm is not None and any(layers[i].fan_in % nm[1] for i in members):
                continue
            if pattern == "channel" and last in members:
                continue
            fits.append(pattern)
        eligible.append(fits)
    return eligible
