"""Convolutional networks with a sparsity and a sparsity pattern per layer.

Two families:

* ``"conv"``: the Conv-2/4/6 networks of the lottery-ticket paper (Frankle & Carbin, 2019):
  blocks of two 3x3 convolutions and a 2x2 max-pool, then fully connected layers. A block pools
  only while the feature map is at least 2x2, so deep networks still run on 8x8 digits.
* ``"mobilenet"``: a 3x3 stem, then MobileNet-v2 inverted-residual blocks (1x1 expand, kxk
  depthwise, 1x1 project, BatchNorm, a residual when the shape is kept), global average pooling
  and a linear classifier.

An architecture is a flat dict. Conv family::

    {"family": "conv", "conv_blocks": 2, "width_conv0": 64, "kernel_conv0": 3, ..., "width_conv3": 128,
     "kernel_conv3": 3, "fc_depth": 2, "width_fc0": 256, "width_fc1": 256}

MobileNet family::

    {"family": "mobilenet", "mobilenet_blocks": 2, "width_stem": 16,
     "expand_block0": 1, "kernel_block0": 3, "width_block0": 16, "expand_block1": 6, ...}

Its prunable layers are named ``conv0 .. conv<2B-1>``, ``fc0 ..``, ``out`` (conv) and ``stem``,
``block<b>_expand`` (only when ``expand_block<b>`` > 1), ``block<b>_depthwise``,
``block<b>_project``, ``out`` (mobilenet). When searched, each layer has ``pattern_<layer>``
(``dense``, ``unstructured``, ``channel`` or ``N:M``) and ``sparsity_<layer>``; the sparsity is
present only for unstructured and channel layers (dense and N:M fix their own density), so equal
networks have equal dicts. Importing this module imports neither torch nor optuna.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nas.arch import uniform_suggest

from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec
from nas.sparse.magnitude import parse_pattern
from search_spaces._images import image_shape

if TYPE_CHECKING:
    import optuna
    import torch

Family = Literal["conv", "mobilenet"]
Width = Annotated[int, Field(ge=1, le=4096)]
Kernel = Annotated[int, Field(ge=1, le=11)]
_SPARSE_PATTERNS = ("unstructured", "channel")  # the patterns whose density a sparsity sets


@dataclass(frozen=True)
class _ConvNet:
    widths: tuple[int, ...]  # one per convolution
    kernels: tuple[int, ...]
    fc_widths: tuple[int, ...]


@dataclass(frozen=True)
class _Block:
    expand: int
    kernel: int
    width: int


@dataclass(frozen=True)
class _MobileNet:
    stem: int
    blocks: tuple[_Block, ...]


@dataclass(frozen=True)
class _Arch:
    """An architecture checked against the space; ``sparsity`` and ``patterns`` are by layer name."""

    body: _ConvNet | _MobileNet
    layers: tuple[str, ...]
    sparsity: dict[str, float]
    patterns: dict[str, str] | None


def weight_name(layer: str) -> str:
    """The ``state_dict`` name of a layer's weight: ``conv0.weight``, ``block1.body.expand.weight``."""
    if layer.startswith("block"):
        block, part = layer.split("_", 1)
        return f"{block}.body.{part}.weight"
    return f"{layer}.weight"


def _conv_layers(convs: int, fcs: int) -> list[str]:
    return [f"conv{i}" for i in range(convs)] + [f"fc{j}" for j in range(fcs)] + ["out"]


def _mobilenet_layers(expands: list[int]) -> list[str]:
    layers = ["stem"]
    for b, expand in enumerate(expands):
        layers += ([f"block{b}_expand"] if expand > 1 else []) + [f"block{b}_depthwise", f"block{b}_project"]
    return layers + ["out"]


def _pooled(height: int, width: int) -> tuple[int, int]:
    """The feature map after a block's 2x2 max-pool, which is skipped once the map is smaller than 2x2."""
    return (height // 2, width // 2) if min(height, width) >= 2 else (height, width)


def _unique(name: str, choices: list[Any] | None) -> None:
    if choices is not None and len(set(choices)) != len(choices):
        raise ValueError(f"{name} repeats a value: {choices}")


class SparseCNN(SearchSpace):
    """Conv-2/4/6-style and MobileNet-style networks with a sparsity and a pattern per layer."""

    class Params(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            # shown in the catalog; the contract suite (tests/test_contracts.py) runs each besides the defaults
            json_schema_extra={"examples": [
                {"pattern_choices": ["dense", "unstructured", "channel", "2:4"], "layer_sparsity_choices": [0.5, 0.8]},
            ]},
        )

        families: list[Family] = Field(
            ["conv", "mobilenet"], min_length=1, description="network families to search: 'conv' (Conv-2/4/6) and "
            "'mobilenet' (inverted residuals)"
        )  # fmt: skip
        conv_min_blocks: int = Field(
            1, ge=1, le=8, description="conv family: fewest blocks of two convolutions + pool (1 = Conv-2)"
        )
        conv_max_blocks: int = Field(3, ge=1, le=8, description="conv family: most blocks (3 = Conv-6)")
        conv_width_choices: list[Width] = Field(
            [16, 32, 64], min_length=1, description="conv family: output channels a convolution may have "
            "(the paper: 64, 128, 256 in blocks 1, 2, 3)"
        )  # fmt: skip
        conv_kernel_choices: list[Kernel] = Field(
            [3], min_length=1, description="conv family: odd kernel sizes a convolution may have"
        )
        conv_batchnorm: bool = Field(False, description="conv family: a BatchNorm after every convolution (the paper has none)")
        fc_min_depth: int = Field(1, ge=0, le=8, description="conv family: fewest hidden fully connected layers")
        fc_max_depth: int = Field(2, ge=0, le=8, description="conv family: most hidden fully connected layers (the paper: 2)")
        fc_width_choices: list[Width] = Field(
            [64, 128, 256],
            min_length=1,
            description="conv family: units a hidden fully connected layer may have (the paper: 256)",
        )
        mobilenet_min_blocks: int = Field(1, ge=1, le=16, description="mobilenet family: fewest inverted-residual blocks")
        mobilenet_max_blocks: int = Field(4, ge=1, le=16, description="mobilenet family: most inverted-residual blocks")
        mobilenet_stem_choices: list[Width] = Field(
            [16], min_length=1, description="mobilenet family: output channels the 3x3 stem may have"
        )
        mobilenet_width_choices: list[Width] = Field(
            [16, 24, 32], min_length=1, description="mobilenet family: output channels a block may have"
        )
        mobilenet_expand_choices: list[Annotated[int, Field(ge=1, le=8)]] = Field(
            [1, 3, 6], min_length=1, description="mobilenet family: expansion ratios a block may have (1 drops the expand conv)"
        )
        mobilenet_kernel_choices: list[Kernel] = Field(
            [3, 5], min_length=1, description="mobilenet family: odd kernel sizes a depthwise convolution may have"
        )
        mobilenet_downsample_at: list[Annotated[int, Field(ge=0, le=15)]] = Field(
            [0, 2], description="mobilenet family: blocks whose depthwise convolution has stride 2"
        )
        layer_sparsity_choices: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
            None,
            min_length=1,
            description="sparsities an unstructured or channel layer may get; null leaves them to the sparsifier's target",
        )
        pattern_choices: list[str] | None = Field(
            None,
            min_length=1,
            description="sparsity patterns a layer may get: 'dense', 'unstructured', 'channel' (whole output channels; "
            "never the classifier) and 'N:M' such as '2:4' (only layers whose input channels are always a multiple "
            "of M, so never the first convolution or a depthwise one); null leaves every layer unstructured",
        )

        @field_validator("pattern_choices")
        @classmethod
        def _known_patterns(cls, patterns: list[str] | None) -> list[str] | None:
            for pattern in patterns or []:
                parse_pattern(pattern)
            return patterns

        @field_validator("conv_kernel_choices", "mobilenet_kernel_choices")
        @classmethod
        def _odd(cls, kernels: list[int]) -> list[int]:
            even = [k for k in kernels if k % 2 == 0]
            if even:
                raise ValueError(f"kernel sizes must be odd, so padding keeps the feature map's size: {even}")
            return kernels

        @model_validator(mode="after")
        def _consistent(self) -> SparseCNN.Params:
            for low, high in (("conv_min_blocks", "conv_max_blocks"), ("fc_min_depth", "fc_max_depth"),
                              ("mobilenet_min_blocks", "mobilenet_max_blocks")):  # fmt: skip
                if getattr(self, low) > getattr(self, high):
                    raise ValueError(f"{low} {getattr(self, low)} exceeds {high} {getattr(self, high)}")
            for name in type(self).model_fields:
                if name.endswith("_choices") or name in ("families", "mobilenet_downsample_at"):
                    _unique(name, getattr(self, name))
            if self.pattern_choices is not None:
                space = SparseCNN(self)
                eligible = space._eligible_patterns()
                stuck = sorted(layer for layer, choices in eligible.items() if not choices)
                if stuck:
                    raise ValueError(
                        f"pattern_choices {self.pattern_choices} leave no pattern for layer(s) {stuck}; add 'dense' or "
                        f"'unstructured'"
                    )
                for pattern in self.pattern_choices:
                    if not any(pattern in choices for choices in eligible.values()):
                        raise ValueError(
                            f"pattern {pattern!r} fits no layer: N:M needs layers whose input channels are always a "
                            f"multiple of M, so every width choice feeding them must be one"
                        )
            return self

    params: Params

    # --- sampling ------------------------------------------------------------------------------

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn architecture, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The architecture whose keys ``suggest(key)`` gives, asked for only the keys it uses.

        ``suggest(key)`` returns a value of ``dimensions()[key]``. Deciding keys come first: the
        family, then each depth before the layers it makes, a block's expansion before whether it
        has an expand layer, a layer's pattern before whether it has a sparsity. So an Optuna
        trial's ``suggest_*`` samples define-by-run, and never samples a key the network lacks.
        """
        p = self.params
        family = suggest("family")
        arch: dict[str, Any] = {"family": family}
        if family == "conv":
            blocks = arch["conv_blocks"] = suggest("conv_blocks")
            for i in range(2 * blocks):
                arch[f"width_conv{i}"] = suggest(f"width_conv{i}")
                arch[f"kernel_conv{i}"] = suggest(f"kernel_conv{i}")
            fcs = arch["fc_depth"] = suggest("fc_depth")
            arch.update({f"width_fc{j}": suggest(f"width_fc{j}") for j in range(fcs)})
            layers = _conv_layers(2 * blocks, fcs)
        else:
            blocks = arch["mobilenet_blocks"] = suggest("mobilenet_blocks")
            arch["width_stem"] = suggest("width_stem")
            for b in range(blocks):
                for kind in ("expand", "kernel", "width"):
                    arch[f"{kind}_block{b}"] = suggest(f"{kind}_block{b}")
            layers = _mobilenet_layers([arch[f"expand_block{b}"] for b in range(blocks)])
        for layer in layers:
            pattern = None
            if p.pattern_choices is not None:
                pattern = arch[f"pattern_{layer}"] = suggest(f"pattern_{layer}")
            if p.layer_sparsity_choices is not None and (pattern is None or pattern in _SPARSE_PATTERNS):
                arch[f"sparsity_{layer}"] = suggest(f"sparsity_{layer}")
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key an architecture may have; most apply only to one family and to layers the depth reaches.

        ``sparsity_<layer>`` applies only when the layer's pattern (if searched) is unstructured or channel.
        """
        from optuna.distributions import CategoricalDistribution, IntDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {"family": CategoricalDistribution(p.families)}
        if "conv" in p.families:
            dims["conv_blocks"] = IntDistribution(p.conv_min_blocks, p.conv_max_blocks)
            for i in range(2 * p.conv_max_blocks):
                dims[f"width_conv{i}"] = CategoricalDistribution(p.conv_width_choices)
                dims[f"kernel_conv{i}"] = CategoricalDistribution(p.conv_kernel_choices)
            dims["fc_depth"] = IntDistribution(p.fc_min_depth, p.fc_max_depth)
            dims.update({f"width_fc{j}": CategoricalDistribution(p.fc_width_choices) for j in range(p.fc_max_depth)})
        if "mobilenet" in p.families:
            dims["mobilenet_blocks"] = IntDistribution(p.mobilenet_min_blocks, p.mobilenet_max_blocks)
            dims["width_stem"] = CategoricalDistribution(p.mobilenet_stem_choices)
            for b in range(p.mobilenet_max_blocks):
                dims[f"expand_block{b}"] = CategoricalDistribution(p.mobilenet_expand_choices)
                dims[f"kernel_block{b}"] = CategoricalDistribution(p.mobilenet_kernel_choices)
                dims[f"width_block{b}"] = CategoricalDistribution(p.mobilenet_width_choices)
        layers = list(self._fan_ins(None))
        if p.pattern_choices is not None:
            eligible = self._eligible_patterns()
            dims.update({f"pattern_{layer}": CategoricalDistribution(eligible[layer]) for layer in layers})
        if p.layer_sparsity_choices is not None:
            dims.update({f"sparsity_{layer}": CategoricalDistribution(p.layer_sparsity_choices) for layer in layers})
        return dims

    # --- building ------------------------------------------------------------------------------

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The network for ``arch`` on inputs of ``input_shape`` ``(channels, height, width)``."""
        from torch import nn

        a = self._parse(arch)
        channels, height, width = _image_shape(input_shape)
        layers: list[tuple[str, nn.Module]] = []
        if isinstance(a.body, _ConvNet):
            bn = self.params.conv_batchnorm
            for i, (out, kernel) in enumerate(zip(a.body.widths, a.body.kernels)):
                layers.append((f"conv{i}", nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=not bn)))
                layers += [(f"bn_conv{i}", nn.BatchNorm2d(out))] if bn else []
                layers.append((f"act_conv{i}", nn.ReLU()))
                if i % 2 == 1 and min(height, width) >= 2:
                    layers.append((f"pool{i // 2}", nn.MaxPool2d(2)))
                height, width = _pooled(height, width) if i % 2 == 1 else (height, width)
                channels = out
            layers.append(("flatten", nn.Flatten()))
            features = channels * height * width
            for j, units in enumerate(a.body.fc_widths):
                layers += [(f"fc{j}", nn.Linear(features, units)), (f"act_fc{j}", nn.ReLU())]
                features = units
        else:
            from search_spaces._cnn_layers import InvertedResidual

            stem = a.body.stem
            layers += [
                ("stem", nn.Conv2d(channels, stem, 3, padding=1, bias=False)),
                ("stem_bn", nn.BatchNorm2d(stem)),
                ("stem_act", nn.ReLU6()),
            ]
            channels = stem
            for b, block in enumerate(a.body.blocks):
                stride = 2 if b in self.params.mobilenet_downsample_at else 1
                layers.append((f"block{b}", InvertedResidual(channels, block.width, block.expand, block.kernel, stride)))
                channels = block.width
            layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
            features = channels
        layers.append(("out", nn.Linear(features, num_classes)))
        return nn.Sequential(OrderedDict(layers))

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Per-layer sparsity targets keyed by weight name, or ``None`` when neither sparsity nor pattern is searched.

        With patterns searched, a dense layer gets 0.0 and an N:M layer ``1 - N/M``, so a sparsifier
        that knows no patterns still keeps each layer at its pattern's density; an unstructured or
        channel layer gets its searched sparsity, or is left to the sparsifier's target.
        """
        a = self._parse(arch)
        if a.patterns is None and self.params.layer_sparsity_choices is None:
            return None
        targets = {}
        for layer in a.layers:
            pattern = a.patterns[layer] if a.patterns is not None else "unstructured"
            nm = parse_pattern(pattern)
            if pattern == "dense":
                targets[weight_name(layer)] = 0.0
            elif nm is not None:
                targets[weight_name(layer)] = 1.0 - nm[0] / nm[1]
            elif layer in a.sparsity:
                targets[weight_name(layer)] = a.sparsity[layer]
        return targets

    def layer_patterns(self, arch: dict[str, Any]) -> dict[str, str] | None:
        """Each weight's sparsity pattern by weight name, or ``None`` when patterns are not searched."""
        patterns = self._parse(arch).patterns
        return None if patterns is None else {weight_name(layer): pattern for layer, pattern in patterns.items()}

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every weight any architecture can have, with its possible fan-ins and its largest kernel area."""
        specs = []
        for layer, (fan_ins, kernel) in self._fan_ins(input_shape).items():
            kind = "linear" if layer == "out" or layer.startswith("fc") else "conv2d"
            specs.append(WeightSpec(weight_name(layer), kind, frozenset(fan_ins), kernel * kernel))
        return specs

    def count_params(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters (weights, biases, BatchNorm scales and shifts) of ``arch``'s network, without building it."""
        return self._count(self._parse(arch).body, input_shape, num_classes)

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The most parameters any architecture of the space has; lets the server refuse a space at submission.

        Every layer's count grows with each width, kernel and expansion, so the largest choices win;
        only the depths are tried one by one, since pooling makes the first FC layer shrink with depth.
        """
        return max(self._count(body, input_shape, num_classes) for body in self._extremes(max))

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The fewest parameters any architecture of the space has."""
        return min(self._count(body, input_shape, num_classes) for body in self._extremes(min))

    # --- internals -----------------------------------------------------------------------------

    def _extremes(self, pick: Callable[[list[int]], int]) -> list[_ConvNet | _MobileNet]:
        """For every depth, the network with ``pick`` (min or max) of every width, kernel and expansion."""
        p = self.params
        bodies: list[_ConvNet | _MobileNet] = []
        if "conv" in p.families:
            width, kernel, fc = pick(p.conv_width_choices), pick(p.conv_kernel_choices), pick(p.fc_width_choices)
            for blocks in range(p.conv_min_blocks, p.conv_max_blocks + 1):
                for fcs in range(p.fc_min_depth, p.fc_max_depth + 1):
                    bodies.append(_ConvNet((width,) * 2 * blocks, (kernel,) * 2 * blocks, (fc,) * fcs))
        if "mobilenet" in p.families:
            block = _Block(pick(p.mobilenet_expand_choices), pick(p.mobilenet_kernel_choices), pick(p.mobilenet_width_choices))
            for blocks in range(p.mobilenet_min_blocks, p.mobilenet_max_blocks + 1):
                bodies.append(_MobileNet(pick(p.mobilenet_stem_choices), (block,) * blocks))
        return bodies

    def _count(self, body: _ConvNet | _MobileNet, input_shape: tuple[int, ...], num_classes: int) -> int:
        channels, height, width = _image_shape(input_shape)
        total = 0
        if isinstance(body, _ConvNet):
            per_channel = 2 if self.params.conv_batchnorm else 1  # BatchNorm's scale and shift, or the conv's bias
            for i, (out, kernel) in enumerate(zip(body.widths, body.kernels)):
                total += channels * out * kernel * kernel + per_channel * out
                channels = out
                if i % 2 == 1:
                    height, width = _pooled(height, width)
            features = channels * height * width
            for units in body.fc_widths:
                total += (features + 1) * units
                features = units
        else:
            total += channels * body.stem * 9 + 2 * body.stem
            channels = body.stem
            for block in body.blocks:
                hidden = channels * block.expand
                if block.expand != 1:
                    total += channels * hidden + 2 * hidden
                total += hidden * block.kernel**2 + 2 * hidden + hidden * block.width + 2 * block.width
                channels = block.width
            features = channels
        return total + (features + 1) * num_classes

    def _fan_ins(self, input_shape: tuple[int, ...] | None) -> dict[str, tuple[set[int] | None, int]]:
        """Every layer of any architecture: its possible fan-ins along the input-channel axis, and its largest kernel.

        Without ``input_shape`` the fan-ins that depend on it are stand-ins good for divisibility:
        ``None`` for the first convolution, and the last convolution's widths for a Linear after
        the flatten (if every width is a multiple of M, so is every width times height times width).
        """
        p = self.params
        layers: dict[str, tuple[set[int] | None, int]] = {}

        def add(layer: str, fan_ins: set[int] | None, kernel: int = 1) -> None:
            if layer in layers:
                known, area = layers[layer]
                fan_ins = None if known is None or fan_ins is None else known | fan_ins
                kernel = max(area, kernel)
            layers[layer] = (fan_ins, kernel)

        channels = None if input_shape is None else {_image_shape(input_shape)[0]}
        if "conv" in p.families:
            widths, kernel = set(p.conv_width_choices), max(p.conv_kernel_choices)
            for i in range(2 * p.conv_max_blocks):
                add(f"conv{i}", channels if i == 0 else widths, kernel)
            flat = widths
            if input_shape is not None:
                _, height, width = _image_shape(input_shape)
                sizes = set()
                for blocks in range(1, p.conv_max_blocks + 1):
                    height, width = _pooled(height, width)
                    if blocks >= p.conv_min_blocks:
                        sizes.add(height * width)
                flat = {w * size for w in widths for size in sizes}
            for j in range(p.fc_max_depth):
                add(f"fc{j}", flat if j == 0 else set(p.fc_width_choices))
            add("out", (flat if p.fc_min_depth == 0 else set()) | (set(p.fc_width_choices) if p.fc_max_depth else set()))
        if "mobilenet" in p.families:
            widths, kernel = set(p.mobilenet_width_choices), max(p.mobilenet_kernel_choices)
            add("stem", channels, 3)
            for b in range(p.mobilenet_max_blocks):
                inputs = set(p.mobilenet_stem_choices) if b == 0 else widths
                if max(p.mobilenet_expand_choices) > 1:
                    add(f"block{b}_expand", inputs)
                add(f"block{b}_depthwise", {1}, kernel)
                add(f"block{b}_project", {e * c for e in p.mobilenet_expand_choices for c in inputs})
            add("out", widths)
        return layers

    def _eligible_patterns(self) -> dict[str, list[str]]:
        """The pattern choices each layer may take: N:M only where every fan-in is a multiple of M."""
        eligible = {}
        for layer, (fan_ins, _) in self._fan_ins(None).items():
            choices = []
            for pattern in self.params.pattern_choices or []:
                nm = parse_pattern(pattern)
                if nm is not None:
                    if fan_ins is None or any(f % nm[1] for f in fan_ins):
                        continue
                elif pattern == "channel" and layer == "out":
                    continue  # the classifier's outputs are the classes
                choices.append(pattern)
            eligible[layer] = choices
        return eligible

    def _parse(self, arch: dict[str, Any]) -> _Arch:
        """Check ``arch`` against the space; ``ValueError`` names the first offending key."""
        p = self.params
        if not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict, not {type(arch).__name__}")
        expected: set[str] = {"family"}

        def require(keys: list[str], context: str) -> None:
            expected.update(keys)
            missing = [k for k in keys if k not in arch]
            if missing:
                raise ValueError(f"arch keys do not match {context}: missing {missing}")

        def choice(key: str, choices: list[Any]) -> Any:
            value = arch[key]
            integers = all(isinstance(c, int) for c in choices)
            if isinstance(value, bool) or (integers and not isinstance(value, int)) or value not in choices:
                raise ValueError(f"arch {key}={value!r} is not one of {choices}")
            return value

        def integer(key: str, low: int, high: int) -> int:
            value = arch[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"arch {key}={value!r} is not an integer in {low}..{high}")
            return value

        require(["family"], "the space")
        family = choice("family", p.families)
        body: _ConvNet | _MobileNet
        if family == "conv":
            require(["conv_blocks", "fc_depth"], "family 'conv'")
            blocks = integer("conv_blocks", p.conv_min_blocks, p.conv_max_blocks)
            fcs = integer("fc_depth", p.fc_min_depth, p.fc_max_depth)
            convs = 2 * blocks
            keys = [f"{kind}_conv{i}" for i in range(convs) for kind in ("width", "kernel")]
            require(keys + [f"width_fc{j}" for j in range(fcs)], f"conv_blocks {blocks} and fc_depth {fcs}")
            body = _ConvNet(
                tuple(choice(f"width_conv{i}", p.conv_width_choices) for i in range(convs)),
                tuple(choice(f"kernel_conv{i}", p.conv_kernel_choices) for i in range(convs)),
                tuple(choice(f"width_fc{j}", p.fc_width_choices) for j in range(fcs)),
            )
            layers = _conv_layers(convs, fcs)
        else:
            require(["mobilenet_blocks"], "family 'mobilenet'")
            blocks = integer("mobilenet_blocks", p.mobilenet_min_blocks, p.mobilenet_max_blocks)
            keys = [f"{kind}_block{b}" for b in range(blocks) for kind in ("expand", "kernel", "width")]
            require(["width_stem", *keys], f"mobilenet_blocks {blocks}")
            body = _MobileNet(
                choice("width_stem", p.mobilenet_stem_choices),
                tuple(
                    _Block(
                        choice(f"expand_block{b}", p.mobilenet_expand_choices),
                        choice(f"kernel_block{b}", p.mobilenet_kernel_choices),
                        choice(f"width_block{b}", p.mobilenet_width_choices),
                    )
                    for b in range(blocks)
                ),
            )
            layers = _mobilenet_layers([block.expand for block in body.blocks])

        patterns = None
        if p.pattern_choices is not None:
            require([f"pattern_{layer}" for layer in layers], "the network's layers")
            eligible = self._eligible_patterns()
            patterns = {layer: choice(f"pattern_{layer}", eligible[layer]) for layer in layers}
        sparsity = {}
        if p.layer_sparsity_choices is not None:
            sparse = [layer for layer in layers if patterns is None or patterns[layer] in _SPARSE_PATTERNS]
            require([f"sparsity_{layer}" for layer in sparse], "the unstructured and channel layers")
            sparsity = {layer: float(choice(f"sparsity_{layer}", p.layer_sparsity_choices)) for layer in sparse}
        unexpected = sorted(set(arch) - expected)
        if unexpected:
            raise ValueError(f"arch keys do not match the network: unexpected {unexpected}")
        return _Arch(body, tuple(layers), sparsity, patterns)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    return image_shape("sparse_cnn", input_shape)
