"""A search space declared in the job spec: a sequence of blocks, each with lists of choices.

A user describes the networks without writing code: ``blocks`` lists convolutions, depthwise
convolutions, MobileNet-v2 residual blocks, pooling, a flatten, linear layers and recurrent cells
in order, each with the widths, kernel sizes, strides, activations, sparsities and patterns it may
take, and whether it may be left out. A Linear classifier ``out`` ends every network; it flattens
what the last block gives.

Every block sees one of three kinds of input: an image map ``(channels, height, width)``, a
sequence ``(steps, features)`` or flat features ``(features,)``. Convolutions, residual blocks and
pooling need a map; a linear block needs flat features (a ``flatten`` block, or pooling with op
``global_avg``, makes them); a recurrent block reads a sequence as it is and a map row by row, as
``sparse_rnn`` does (``height`` steps of ``channels * width`` features), and gives its final hidden
state, flat. Flat features have no steps, so a recurrent block refuses them rather than guess an
order. :meth:`DeclarativeSpace.fit_problems` walks every choice of every block over the dataset's
input shape, so a space with any choice that cannot build is refused at submission at the exact
field (``blocks.2.strides``), and :meth:`DeclarativeSpace.largest_at` names the block whose largest
choices take the network past the server's parameter limit.

An architecture is a flat dict with ``block<i>_<choice>`` keys: ``block0_width``, ``block0_kernel``,
``block1_op``, ``block2_present`` (optional blocks only), ``block2_pattern`` and ``block2_sparsity``
(when searched; the sparsity only for unstructured and channel patterns). A left-out block has no
other keys, so equal networks have equal dicts. Importing this module imports neither torch nor optuna.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from nas.arch import uniform_suggest
from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec
from nas.sparse.magnitude import parse_pattern
from search_spaces.sparse_mlp import _ACTIVATION_MODULES, Activation
from search_spaces.sparse_rnn import CELL_MODULES, Cell
from search_spaces.sparse_rnn import _count as recurrent_params

if TYPE_CHECKING:
    import optuna
    import torch

Shape = tuple[int, ...]
Loc = tuple[str | int, ...]
MAX_CHOICES = 16  # entries of one choice list: a block's choices multiply when its shapes are walked
MAX_WALK = 20_000  # (input shape, choices) pairs walked per check (about 0.2 s), so a spec cannot buy unbounded work
Width = Annotated[int, Field(ge=1, le=4096)]
Kernel = Annotated[int, Field(ge=1, le=11)]
Stride = Annotated[int, Field(ge=1, le=8)]
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]
_SPARSE_PATTERNS = ("unstructured", "channel")  # the patterns whose density a sparsity sets
CHOICE_LISTS = {
    "width": "widths", "kernel": "kernels", "stride": "strides", "activation": "activations", "expand": "expands",
    "op": "ops", "size": "sizes", "cell": "cells", "bidirectional": "bidirectional",
}  # fmt: skip
"""Arch key suffix -> the block field listing its choices: ``block2_stride`` takes a value of ``blocks[2].strides``."""


def _choices(default: list[Any], description: str) -> Any:
    return Field(default, min_length=1, max_length=MAX_CHOICES, description=description)


class _Block(BaseModel):
    """What every block has: whether it may be left out, and the sparsities and patterns its weights may take."""

    model_config = ConfigDict(extra="forbid")
    structure: ClassVar[tuple[str, ...]] = ()  # arch keys that change the block's shape or size
    styling: ClassVar[tuple[str, ...]] = ()  # arch keys that change neither

    optional: bool = Field(False, description="the block may be left out: each architecture draws whether it is present")

    @property
    def keys(self) -> tuple[str, ...]:
        return self.structure + self.styling

    @field_validator("kernels", check_fields=False)
    @classmethod
    def _odd(cls, kernels: list[int]) -> list[int]:
        even = [k for k in kernels if k % 2 == 0]
        if even:
            raise ValueError(f"kernel sizes must be odd, so padding keeps the feature map's size: {even}")
        return kernels

    @field_validator(*CHOICE_LISTS.values(), check_fields=False)
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"a choice list repeats a value: {values}")
        return values


class _Prunable(_Block):
    """A block with weights: the sparsities and patterns they may take (one draw per block, for all of them)."""

    sparsity: list[Sparsity] | None = Field(
        None, min_length=1, max_length=MAX_CHOICES,
        description="sparsities the block's unstructured or channel weights may get; null leaves them to the sparsifier's target",
    )  # fmt: skip
    patterns: list[str] | None = Field(
        None, min_length=1, max_length=MAX_CHOICES,
        description="sparsity patterns the block's weights may get: 'dense', 'unstructured', 'channel' (whole output "
        "channels) or 'N:M' such as '2:4' (only where every input width is a multiple of M); null: unstructured",
    )  # fmt: skip
    refused_patterns: ClassVar[dict[str, str]] = {}  # pattern family -> why this kind of block cannot take it

    @field_validator("patterns")
    @classmethod
    def _known_patterns(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            family = "N:M" if parse_pattern(pattern) is not None else pattern
            if family in cls.refused_patterns:
                raise ValueError(f"pattern {pattern!r}: {cls.refused_patterns[family]}")
        if patterns is not None and len(set(patterns)) != len(patterns):
            raise ValueError(f"patterns repeats a value: {patterns}")
        return patterns

    @field_validator("sparsity")
    @classmethod
    def _distinct_sparsity(cls, sparsity: list[float] | None) -> list[float] | None:
        if sparsity is not None and len(set(sparsity)) != len(sparsity):
            raise ValueError(f"sparsity repeats a value: {sparsity}")
        return sparsity


class ConvBlock(_Prunable):
    """A k×k convolution (padding keeps the size at stride 1), an optional BatchNorm and an activation."""

    model_config = ConfigDict(title="Convolution")
    structure = ("width", "kernel", "stride")
    styling = ("activation",)
    kind: Literal["conv"] = "conv"
    widths: list[Width] = _choices([16, 32], "output channels")
    kernels: list[Kernel] = _choices([3], "odd kernel sizes")
    strides: list[Stride] = _choices([1], "strides (2 halves the map)")
    activations: list[Activation] = _choices(["relu"], "activations after the convolution")
    batchnorm: bool = Field(False, description="a BatchNorm after the convolution")


class DepthwiseBlock(_Prunable):
    """A k×k depthwise convolution (one filter per channel, so the channels stay), a BatchNorm and an activation."""

    model_config = ConfigDict(title="Depthwise convolution")
    structure = ("kernel", "stride")
    styling = ("activation",)
    refused_patterns = {"N:M": "a depthwise convolution has one input channel per group, so no N:M group fits"}
    kind: Literal["depthwise"] = "depthwise"
    kernels: list[Kernel] = _choices([3], "odd kernel sizes")
    strides: list[Stride] = _choices([1], "strides (2 halves the map)")
    activations: list[Activation] = _choices(["relu"], "activations after the convolution")


class ResidualBlock(_Prunable):
    """MobileNet-v2's inverted residual: 1×1 expand, k×k depthwise, 1×1 project, the input added when the shape stays.

    Under an N:M pattern its depthwise convolution (one input channel per group) stays dense.
    """

    model_config = ConfigDict(title="Residual block")
    structure = ("width", "expand", "kernel", "stride")
    kind: Literal["residual"] = "residual"
    widths: list[Width] = _choices([16, 32], "output channels")
    expands: list[Annotated[int, Field(ge=1, le=8)]] = _choices([1, 3], "expansion ratios (1 drops the expand convolution)")
    kernels: list[Kernel] = _choices([3], "odd depthwise kernel sizes")
    strides: list[Stride] = _choices([1], "strides of the depthwise convolution")


class PoolBlock(_Block):
    """Max or average pooling over size×size windows (stride = size), or a global average that leaves flat channels."""

    model_config = ConfigDict(title="Pooling")
    structure = ("op", "size")
    kind: Literal["pool"] = "pool"
    ops: list[Literal["max", "avg", "global_avg"]] = _choices(["max"], "'max', 'avg', or 'global_avg' (one value per channel, flat)")
    sizes: list[Annotated[int, Field(ge=2, le=8)]] = _choices([2], "window sizes, which are also the strides (global_avg ignores them)")


class FlattenBlock(_Block):
    """Flattens a map or a sequence into features, which linear blocks need."""

    model_config = ConfigDict(title="Flatten")
    kind: Literal["flatten"] = "flatten"


class LinearBlock(_Prunable):
    """A fully connected layer and an activation, on flat features."""

    model_config = ConfigDict(title="Linear")
    structure = ("width",)
    styling = ("activation",)
    kind: Literal["linear"] = "linear"
    widths: list[Width] = _choices([64, 128], "units")
    activations: list[Activation] = _choices(["relu"], "activations after the layer")


class RecurrentBlock(_Prunable):
    """An RNN, GRU or LSTM layer over a sequence (or a map's rows); gives its final hidden state, flat."""

    model_config = ConfigDict(title="Recurrent cell")
    structure = ("cell", "width", "bidirectional")
    refused_patterns = {"channel": "a recurrent weight's rows are gates of shared units, not channels to remove"}
    kind: Literal["recurrent"] = "recurrent"
    cells: list[Cell] = _choices(["lstm", "gru"], "recurrent cells")
    widths: list[Width] = _choices([32, 64], "hidden units per direction")
    bidirectional: list[bool] = _choices([False], "whether it also reads the steps backwards: [false], [true] or both")


Block = Annotated[
    Union[ConvBlock, DepthwiseBlock, ResidualBlock, PoolBlock, FlattenBlock, LinearBlock, RecurrentBlock],
    Field(discriminator="kind"),
]
_KINDS = ("conv", "depthwise", "residual", "pool", "flatten", "linear", "recurrent")


class Unfit(ValueError):
    """A choice of a block that cannot build on the input it gets; ``loc`` is the field within the space's params."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(f"search_space.params.{'.'.join(map(str, loc))}: {message}")
        self.loc, self.message = loc, message


@dataclass(frozen=True)
class _Weight:
    name: str  # within the block: "conv.weight", "body.project.weight", "lstm.weight_hh_l0_reverse"
    kind: str  # WeightSpec kind
    fan_in: int
    kernel: int = 1  # kernel area
    grouped: bool = False  # a depthwise convolution: N:M never fits


@dataclass(frozen=True)
class _Step:
    shape: Shape
    params: int
    weights: tuple[_Weight, ...]


def _describe(shape: Shape) -> str:
    if len(shape) == 3:
        return f"a {shape[0]}x{shape[1]}x{shape[2]} map (channels x height x width)"
    if len(shape) == 2:
        return f"a sequence of {shape[0]} steps of {shape[1]} features"
    return f"{shape[0]} flat features"


def _apply(i: int, block: _Block, shape: Shape, c: dict[str, Any]) -> _Step:
    """What block ``i`` with choices ``c`` makes of ``shape``; :class:`Unfit` at the field that cannot build."""
    kind = block.kind  # type: ignore[attr-defined]
    here = ("blocks", i)
    if kind in ("conv", "depthwise", "residual", "pool") and len(shape) != 3:
        what = {"conv": "a convolution", "depthwise": "a depthwise convolution", "residual": "a residual block", "pool": "pooling"}[kind]
        hint = "; a table or flat features have no height and width to slide over" if len(shape) == 1 else ""
        raise Unfit((*here, "kind"), f"{what} needs an image map (channels, height, width), but gets {_describe(shape)}{hint}")
    if kind == "linear" and len(shape) != 1:
        raise Unfit((*here, "kind"), f"a linear block needs flat features, but gets {_describe(shape)}: put a flatten "
                                     f"block (or pooling with op global_avg) before it")  # fmt: skip
    if kind == "recurrent" and len(shape) == 1:
        raise Unfit((*here, "kind"), f"a recurrent block reads a sequence, or a map row by row, but gets {_describe(shape)}, "
                                     f"which have no steps")  # fmt: skip
    if kind == "flatten":
        return _Step((math.prod(shape),), 0, ())
    if kind == "linear":
        width = c["width"]
        return _Step((width,), (shape[0] + 1) * width, (_Weight("fc.weight", "linear", shape[0]),))
    if kind == "recurrent":
        steps, features = (shape[1], shape[0] * shape[2]) if len(shape) == 3 else shape
        cell, hidden, both = c["cell"], c["width"], c["bidirectional"]
        prefix = CELL_MODULES[cell]
        weights = tuple(
            _Weight(f"{prefix}.weight_{part}_l0{suffix}", prefix, features if part == "ih" else hidden)
            for suffix in (("", "_reverse") if both else ("",)) for part in ("ih", "hh")
        )  # fmt: skip
        return _Step((hidden * (2 if both else 1),), recurrent_params(cell, hidden, 1, both, features, 0), weights)
    channels, height, width = shape
    if kind == "pool":
        if c["op"] == "global_avg":
            return _Step((channels,), 0, ())
        size = c["size"]
        if min(height, width) < size:
            raise Unfit((*here, "sizes"), f"a {size}x{size} pool shrinks {_describe(shape)} below 1 pixel")
        return _Step((channels, height // size, width // size), 0, ())
    stride, kernel = c["stride"], c["kernel"]
    if min(height, width) < stride:
        raise Unfit((*here, "strides"), f"stride {stride} shrinks {_describe(shape)} below 1 pixel")
    out_hw = ((height - 1) // stride + 1, (width - 1) // stride + 1)  # odd kernels, padding kernel // 2
    area = kernel * kernel
    if kind == "conv":
        out, bn = c["width"], block.batchnorm  # type: ignore[attr-defined]
        params = channels * out * area + (2 * out if bn else out)  # BatchNorm's scale and shift, or the bias
        return _Step((out, *out_hw), params, (_Weight("conv.weight", "conv2d", channels, area),))
    if kind == "depthwise":
        return _Step((channels, *out_hw), channels * area + 2 * channels, (_Weight("conv.weight", "conv2d", 1, area, grouped=True),))
    out, expand = c["width"], c["expand"]
    hidden = channels * expand
    weights = [_Weight("body.expand.weight", "conv2d", channels)] if expand != 1 else []
    weights += [_Weight("body.depthwise.weight", "conv2d", 1, area, grouped=True), _Weight("body.project.weight", "conv2d", hidden)]
    params = (channels * hidden + 2 * hidden if expand != 1 else 0) + hidden * area + 2 * hidden + hidden * out + 2 * out
    return _Step((out, *out_hw), params, tuple(weights))


def _structures(block: _Block) -> list[dict[str, Any]]:
    """Every combination of the block's shape-changing choices (its other choices change no shape or count)."""
    lists = [getattr(block, CHOICE_LISTS[key]) for key in block.structure]
    return [dict(zip(block.structure, values)) for values in itertools.product(*lists)]


@dataclass(frozen=True)
class _Arch:
    present: tuple[bool, ...]
    choices: tuple[dict[str, Any], ...]  # per block; empty when absent
    patterns: tuple[str | None, ...]
    sparsity: tuple[float | None, ...]


class DeclarativeSpace(SearchSpace):
    """Networks declared as a sequence of blocks with lists of choices, checked against the dataset at submission."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"blocks": [
                    {"kind": "conv", "widths": [8, 16], "patterns": ["dense", "unstructured", "channel"], "sparsity": [0.5, 0.8]},
                    {"kind": "depthwise", "kernels": [3, 5], "optional": True, "patterns": ["unstructured"], "sparsity": [0.5]},
                    {"kind": "conv", "widths": [16], "kernels": [1], "patterns": ["2:4", "unstructured"], "sparsity": [0.7]},
                    {"kind": "recurrent", "cells": ["lstm", "gru"], "widths": [16, 32], "bidirectional": [False, True],
                     "patterns": ["unstructured", "2:4"], "sparsity": [0.5, 0.9]},
                    {"kind": "linear", "widths": [32], "optional": True, "patterns": ["dense", "2:4"]},
                ]},
            ]},
        )  # fmt: skip

        blocks: list[Block] = Field(
            [  # an instance default, so the JSON Schema shows it and forms start from it
                ConvBlock(widths=[8, 16], kernels=[3, 5]),
                PoolBlock(ops=["max", "avg"]),
                ResidualBlock(optional=True),
                FlattenBlock(),
                LinearBlock(widths=[32, 64], activations=["relu", "gelu"], optional=True),
            ],
            min_length=1,
            max_length=16,
            description="the network's blocks in order, each with the choices it may take; a Linear classifier ends it",
        )

        @model_validator(mode="wrap")
        @classmethod
        def _exact_locations(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
            """Errors inside a block at ``blocks.<i>.<field>``, without the block kind pydantic puts in between."""
            try:
                return handler(data)
            except ValidationError as exc:
                errors = []
                for error in exc.errors():
                    loc = error["loc"]
                    if len(loc) >= 3 and loc[0] == "blocks" and loc[2] in _KINDS:
                        loc = (*loc[:2], *loc[3:])
                    message = error["msg"].removeprefix("Value error, ")
                    errors.append(InitErrorDetails(type=PydanticCustomError(error["type"], "{reason}", {"reason": message}),
                                                   loc=loc, input=error.get("input")))  # fmt: skip
                raise ValidationError.from_exception_data(cls.__name__, errors) from None

    params: Params

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self._walks: dict[tuple[str, tuple[int, ...], int], Any] = {}  # each walk over the shapes, once per input

    def _once(self, what: str, input_shape: tuple[int, ...], num_classes: int, walk: Callable[[], Any]) -> Any:
        key = (what, tuple(input_shape), num_classes)
        if key not in self._walks:
            self._walks[key] = walk()
        return self._walks[key]

    # --- sampling ------------------------------------------------------------------------------

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn architecture, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The architecture ``suggest(key)`` gives, block by block: presence first, a pattern before its sparsity."""
        arch: dict[str, Any] = {}
        for i, block in enumerate(self.params.blocks):
            if block.optional:
                arch[f"block{i}_present"] = present = suggest(f"block{i}_present")
                if not present:
                    continue
            for key in block.keys:
                arch[f"block{i}_{key}"] = suggest(f"block{i}_{key}")
            if isinstance(block, _Prunable):
                pattern = None
                if block.patterns is not None:
                    pattern = arch[f"block{i}_pattern"] = suggest(f"block{i}_pattern")
                if block.sparsity is not None and (pattern is None or pattern in _SPARSE_PATTERNS):
                    arch[f"block{i}_sparsity"] = suggest(f"block{i}_sparsity")
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key an architecture may have; a block's keys apply only when it is present."""
        from optuna.distributions import CategoricalDistribution

        dims: dict[str, optuna.distributions.BaseDistribution] = {}
        for i, block in enumerate(self.params.blocks):
            if block.optional:
                dims[f"block{i}_present"] = CategoricalDistribution([True, False])
            for key in block.keys:
                dims[f"block{i}_{key}"] = CategoricalDistribution(getattr(block, CHOICE_LISTS[key]))
            if isinstance(block, _Prunable):
                if block.patterns is not None:
                    dims[f"block{i}_pattern"] = CategoricalDistribution(block.patterns)
                if block.sparsity is not None:
                    dims[f"block{i}_sparsity"] = CategoricalDistribution(block.sparsity)
        return dims

    # --- checking against the data -------------------------------------------------------------

    def fit_problems(self, input_shape: tuple[int, ...], num_classes: int) -> list[tuple[Loc, str]]:
        """Where in the params some choice cannot build on inputs of ``input_shape``: the first such field.

        Walks every shape every earlier choice can give into each block, so a stride, a pool, a
        block kind or an N:M pattern that fails for any reachable input is named at its field.
        """
        return list(self._once("fit", input_shape, num_classes, lambda: self._walk_fit(input_shape, num_classes)))

    def _walk_fit(self, input_shape: tuple[int, ...], num_classes: int) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        shapes = {tuple(input_shape)}
        if not 1 <= len(input_shape) <= 3:
            return [(("blocks", 0, "kind"), f"inputs of shape {tuple(input_shape)} are neither a table, a sequence nor an image")]
        walked = 0
        for i, block in enumerate(self.params.blocks):
            outputs: set[Shape] = set(shapes) if block.optional else set()
            walked += len(shapes) * len(_structures(block))
            if walked > MAX_WALK:
                return [(("blocks", i), f"the choices up to this block give more than {MAX_WALK} combinations of "
                                        f"input shape and choice to check; offer fewer choices")]  # fmt: skip
            try:
                for shape in sorted(shapes):
                    for c in _structures(block):
                        step = _apply(i, block, shape, c)
                        self._check_patterns(i, block, step.weights)
                        outputs.add(step.shape)
            except Unfit as exc:
                problems.append((exc.loc, exc.message))
                return problems  # later blocks would only repeat the consequence
            shapes = outputs
        return problems

    def largest_at(self, limit: int, input_shape: tuple[int, ...], num_classes: int) -> Loc:
        """The block whose largest choices first take the network past ``limit`` parameters, or the last block
        when only the classifier does."""
        for i, (_, most) in enumerate(self._counts(input_shape, num_classes, stop=True)):
            if most > limit:
                block = self.params.blocks[i]
                return ("blocks", i, "widths") if "width" in block.structure else ("blocks", i)
        return ("blocks", len(self.params.blocks) - 1)

    def _check_patterns(self, i: int, block: _Block, weights: tuple[_Weight, ...]) -> None:
        if not isinstance(block, _Prunable) or block.patterns is None:
            return
        for pattern in block.patterns:
            nm = parse_pattern(pattern)
            if nm is None:
                continue
            misfit = [w for w in weights if not w.grouped and w.fan_in % nm[1]]
            if misfit or not any(not w.grouped for w in weights):
                what = f"{misfit[0].fan_in} input channels or features" if misfit else "only grouped convolutions"
                raise Unfit(("blocks", i, "patterns"), f"pattern {pattern!r} needs every input width to be a multiple of "
                                                       f"{nm[1]}, but a weight of this block can have {what}")  # fmt: skip

    # --- building ------------------------------------------------------------------------------

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The network for ``arch``: modules ``block<i>`` (present blocks only, by their index), then ``out``."""
        from torch import nn

        from search_spaces._cnn_layers import InvertedResidual
        from search_spaces._rnn_layers import RecurrentEncoder

        a = self._parse(arch)
        self._refuse_unfit(input_shape, num_classes)
        shape = tuple(input_shape)
        modules: list[tuple[str, nn.Module]] = []
        for i, block in enumerate(self.params.blocks):
            if not a.present[i]:
                continue
            c = a.choices[i]
            step = _apply(i, block, shape, c)
            kind = block.kind  # type: ignore[attr-defined]
            module: nn.Module
            if kind == "conv":
                bn = block.batchnorm  # type: ignore[attr-defined]
                parts = [("conv", nn.Conv2d(shape[0], c["width"], c["kernel"], c["stride"], c["kernel"] // 2, bias=not bn))]
                parts += [("bn", nn.BatchNorm2d(c["width"]))] if bn else []
                module = nn.Sequential(OrderedDict([*parts, ("act", getattr(nn, _ACTIVATION_MODULES[c["activation"]])())]))
            elif kind == "depthwise":
                conv = nn.Conv2d(shape[0], shape[0], c["kernel"], c["stride"], c["kernel"] // 2, groups=shape[0], bias=False)
                module = nn.Sequential(OrderedDict([("conv", conv), ("bn", nn.BatchNorm2d(shape[0])),
                                                    ("act", getattr(nn, _ACTIVATION_MODULES[c["activation"]])())]))  # fmt: skip
            elif kind == "residual":
                module = InvertedResidual(shape[0], c["width"], c["expand"], c["kernel"], c["stride"])
            elif kind == "pool":
                if c["op"] == "global_avg":
                    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
                else:
                    module = (nn.MaxPool2d if c["op"] == "max" else nn.AvgPool2d)(c["size"])
            elif kind == "flatten":
                module = nn.Flatten()
            elif kind == "linear":
                module = nn.Sequential(OrderedDict([("fc", nn.Linear(shape[0], c["width"])),
                                                    ("act", getattr(nn, _ACTIVATION_MODULES[c["activation"]])())]))  # fmt: skip
            else:
                features = shape[0] * shape[2] if len(shape) == 3 else shape[1]
                module = RecurrentEncoder(c["cell"], features, c["width"], 1, c["bidirectional"])
            modules.append((f"block{i}", module))
            shape = step.shape
        modules += [("flatten", nn.Flatten()), ("out", nn.Linear(math.prod(shape), num_classes))]
        return nn.Sequential(OrderedDict(modules))

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Per-weight sparsity targets, or ``None`` when no block searches a sparsity or a pattern.

        A dense weight gets 0.0 and an N:M weight ``1 - N/M``, so a sparsifier that knows no
        patterns keeps each at its pattern's density; an unstructured or channel weight gets its
        block's sparsity, or is left to the sparsifier's target.
        """
        a = self._parse(arch)
        if not any(isinstance(b, _Prunable) and (b.patterns or b.sparsity) for b in self.params.blocks):
            return None
        targets = {}
        for _, name, pattern, sparsity in self._weights(a):
            nm = parse_pattern(pattern)
            if pattern == "dense":
                targets[name] = 0.0
            elif nm is not None:
                targets[name] = 1.0 - nm[0] / nm[1]
            elif sparsity is not None:
                targets[name] = sparsity
        return targets

    def layer_patterns(self, arch: dict[str, Any]) -> dict[str, str] | None:
        """Each weight's pattern by weight name for blocks that search one; ``None`` when none does."""
        a = self._parse(arch)
        if not any(isinstance(b, _Prunable) and b.patterns for b in self.params.blocks):
            return None
        return {name: pattern for i, name, pattern, _ in self._weights(a) if a.patterns[i] is not None}

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every weight any architecture can have, with its possible fan-ins and its largest kernel area."""
        self._refuse_unfit(input_shape, num_classes)
        found: dict[str, tuple[str, set[int], int]] = {}
        shapes = {tuple(input_shape)}
        for i, block in enumerate(self.params.blocks):
            outputs: set[Shape] = set(shapes) if block.optional else set()
            for shape in shapes:
                for c in _structures(block):
                    step = _apply(i, block, shape, c)
                    outputs.add(step.shape)
                    for w in step.weights:
                        kind, fan_ins, area = found.get(f"block{i}.{w.name}", (w.kind, set(), 1))
                        found[f"block{i}.{w.name}"] = (kind, fan_ins | {w.fan_in}, max(area, w.kernel))
            shapes = outputs
        found["out.weight"] = ("linear", {math.prod(s) for s in shapes}, 1)
        return [WeightSpec(name, kind, frozenset(fan_ins), area) for name, (kind, fan_ins, area) in found.items()]

    def count_params(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters (weights, biases, BatchNorm scales and shifts) of ``arch``'s network, without building it."""
        a = self._parse(arch)
        shape, total = tuple(input_shape), 0
        for i, block in enumerate(self.params.blocks):
            if a.present[i]:
                step = _apply(i, block, shape, a.choices[i])
                shape, total = step.shape, total + step.params
        return total + (math.prod(shape) + 1) * num_classes

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The most parameters any architecture has, over every shape each block's choices can give."""
        *_, (_, most) = self._counts(input_shape, num_classes)
        return most

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The fewest parameters any architecture has."""
        *_, (least, _) = self._counts(input_shape, num_classes)
        return least

    # --- internals -----------------------------------------------------------------------------

    def _counts(self, input_shape: tuple[int, ...], num_classes: int, stop: bool = False) -> list[tuple[int, int]]:
        """(fewest, most) parameters after each block and, last, with the classifier (unless ``stop``)."""
        counts = self._once("counts", input_shape, num_classes, lambda: self._walk_counts(input_shape, num_classes))
        return counts[:-1] if stop else counts

    def _walk_counts(self, input_shape: tuple[int, ...], num_classes: int) -> list[tuple[int, int]]:
        """Exact: a block's count depends only on its input shape and its own choices, so the walk keeps,
        per reachable shape, the fewest and most parameters of the blocks before it."""
        self._refuse_unfit(input_shape, num_classes)
        bounds: dict[Shape, tuple[int, int]] = {tuple(input_shape): (0, 0)}
        out = []
        for i, block in enumerate(self.params.blocks):
            after: dict[Shape, tuple[int, int]] = dict(bounds) if block.optional else {}
            for shape, (low, high) in bounds.items():
                for c in _structures(block):
                    step = _apply(i, block, shape, c)
                    old = after.get(step.shape, (low + step.params, high + step.params))
                    after[step.shape] = (min(old[0], low + step.params), max(old[1], high + step.params))
            bounds = after
            out.append((min(b[0] for b in bounds.values()), max(b[1] for b in bounds.values())))
        totals = [(low + (math.prod(s) + 1) * num_classes, high + (math.prod(s) + 1) * num_classes) for s, (low, high) in bounds.items()]
        out.append((min(t[0] for t in totals), max(t[1] for t in totals)))
        return out

    def _refuse_unfit(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        problems = self.fit_problems(input_shape, num_classes)
        if problems:
            raise Unfit(*problems[0])

    def _weights(self, a: _Arch) -> Iterator[tuple[int, str, str, float | None]]:
        """(block index, weight name, pattern, block sparsity) of every prunable weight of a checked architecture.

        Shapes do not matter here, only which weights exist: an expand convolution exists when
        the expansion is above 1, a reverse direction when the cell is bidirectional.
        """
        for i, block in enumerate(self.params.blocks):
            if not a.present[i] or not isinstance(block, _Prunable):
                continue
            c, pattern = a.choices[i], a.patterns[i] or "unstructured"
            stand_in = (8, 8, 8) if block.kind != "linear" else (8,)  # type: ignore[attr-defined]
            for w in _apply(i, block, stand_in, {**c, "stride": 1}).weights:
                grouped_nm = w.grouped and parse_pattern(pattern) is not None
                yield i, f"block{i}.{w.name}", "dense" if grouped_nm else pattern, a.sparsity[i]

    def _parse(self, arch: dict[str, Any]) -> _Arch:
        """Check ``arch`` against the space; ``ValueError`` names the first offending key."""
        if not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict, not {type(arch).__name__}")
        expected: set[str] = set()

        def choice(key: str, choices: list[Any]) -> Any:
            expected.add(key)
            if key not in arch:
                raise ValueError(f"arch is missing {key!r}")
            value = arch[key]
            if type(value) is not type(choices[0]) and not (isinstance(choices[0], float) and type(value) is int):
                raise ValueError(f"arch {key}={value!r} is not one of {choices}")
            if value not in choices:
                raise ValueError(f"arch {key}={value!r} is not one of {choices}")
            return value

        present, choices, patterns, sparsity = [], [], [], []
        for i, block in enumerate(self.params.blocks):
            here = block.optional is False or choice(f"block{i}_present", [True, False])
            present.append(here)
            c = {key: choice(f"block{i}_{key}", getattr(block, CHOICE_LISTS[key])) for key in block.keys} if here else {}
            choices.append(c)
            pattern = level = None
            if here and isinstance(block, _Prunable):
                if block.patterns is not None:
                    pattern = choice(f"block{i}_pattern", block.patterns)
                if block.sparsity is not None and (pattern is None or pattern in _SPARSE_PATTERNS):
                    level = float(choice(f"block{i}_sparsity", block.sparsity))
            patterns.append(pattern)
            sparsity.append(level)
        unexpected = sorted(set(arch) - expected)
        if unexpected:
            raise ValueError(f"arch keys do not match the network: unexpected {unexpected}")
        return _Arch(tuple(present), tuple(choices), tuple(patterns), tuple(sparsity))
