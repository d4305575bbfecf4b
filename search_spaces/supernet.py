"""A weight-sharing MobileNet-style supernet with width, kernel and depth choices (Once-for-All style).

The space's networks are sub-networks of one largest network: a stem, stages of inverted-residual
blocks, global average pooling and a classifier. An architecture chooses each stage's depth (its
first blocks), and each block's expansion ratio (its first ``in_channels * expand`` hidden
channels) and depthwise kernel (the centre of the largest kernel), as a flat dict:
``{"depth_0": 2, "expand_0_0": 4, "kernel_0_0": 5, "expand_0_1": 2, "kernel_0_1": 3, "depth_1": 1, ...}``.
Only the blocks a stage's depth uses have keys, so equal networks have equal dicts.

:meth:`SupernetSpace.build` makes a standalone network with its own weights;
:meth:`SupernetSpace.build_supernet` the shared-weight supernet, whose ``set_active(layout)`` runs a
sub-network; :meth:`SupernetSpace.extract` copies a sub-network's weights and masks out of a trained
supernet. Importing this module does not import torch or optuna.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.arch import uniform_suggest
from nas.search_space import SearchSpace
from nas.sparse.base import WeightSpec
from nas.supertickets.layout import Block, Layout
from search_spaces._images import image_shape

if TYPE_CHECKING:
    import optuna
    import torch


class SupernetSpace(SearchSpace):
    """Sub-networks of a small MobileNet-style supernet: per-stage depth, per-block expansion ratio and kernel."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        stem_channels: int = Field(8, ge=1, le=1024, description="output channels of the 3x3 stem convolution")
        stem_stride: int = Field(1, ge=1, le=2, description="stride of the stem (2 halves 28x28 inputs first)")
        stage_channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
            [16, 24], min_length=1, max_length=8, description="output channels of each stage"
        )
        stage_strides: list[Annotated[int, Field(ge=1, le=2)]] = Field(
            [1, 2], min_length=1, max_length=8, description="stride of each stage's first block"
        )
        depth_choices: list[Annotated[int, Field(ge=1, le=8)]] = Field(
            [1, 2, 3], min_length=1, description="blocks a stage may have (its first ones)"
        )
        expand_choices: list[Annotated[int, Field(ge=1, le=16)]] = Field(
            [2, 3, 4], min_length=1, description="expansion ratios a block may have (its first hidden channels)"
        )
        kernel_choices: list[Annotated[int, Field(ge=1, le=9)]] = Field(
            [3, 5], min_length=1, description="odd depthwise kernel sizes a block may have (the kernel's centre)"
        )

        @model_validator(mode="after")
        def _consistent(self) -> SupernetSpace.Params:
            if len(self.stage_channels) != len(self.stage_strides):
                raise ValueError(
                    f"stage_channels has {len(self.stage_channels)} stages but stage_strides has {len(self.stage_strides)}"
                )
            for name in ("depth_choices", "expand_choices", "kernel_choices"):
                choices = getattr(self, name)
                if len(set(choices)) != len(choices):
                    raise ValueError(f"{name} repeats a value: {choices}")
            even = [k for k in self.kernel_choices if k % 2 == 0]
            if even:
                raise ValueError(f"kernel_choices must be odd (a kernel has a centre); got {even}")
            return self

    params: Params

    # -- the search-space interface ---------------------------------------------------------

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly drawn sub-network, as a flat JSON-able dict: :meth:`arch_from` with uniform draws."""
        return self.arch_from(uniform_suggest(rng, self.dimensions()))

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        """The sub-network whose keys ``suggest(key)`` gives, asked for only the blocks it uses.

        Each stage's ``depth_<s>`` is asked before its blocks' expansion and kernel, so an Optuna
        trial's ``suggest_*`` samples define-by-run.
        """
        arch: dict[str, Any] = {}
        for s in range(len(self.params.stage_channels)):
            depth = arch[f"depth_{s}"] = suggest(f"depth_{s}")
            for b in range(depth):
                arch[f"expand_{s}_{b}"] = suggest(f"expand_{s}_{b}")
                arch[f"kernel_{s}_{b}"] = suggest(f"kernel_{s}_{b}")
        return arch

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every key an architecture may have; block ``b``'s keys apply only when ``b < depth_s``."""
        from optuna.distributions import CategoricalDistribution

        p = self.params
        dims: dict[str, optuna.distributions.BaseDistribution] = {}
        for s in range(len(p.stage_channels)):
            dims[f"depth_{s}"] = CategoricalDistribution(p.depth_choices)
            for b in range(max(p.depth_choices)):
                dims[f"expand_{s}_{b}"] = CategoricalDistribution(p.expand_choices)
                dims[f"kernel_{s}_{b}"] = CategoricalDistribution(p.kernel_choices)
        return dims

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The standalone sub-network ``arch``, with its own freshly initialised weights."""
        from nas.supertickets.elastic import MobileNet

        return MobileNet(self.layout(arch, input_shape, num_classes))

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        """Sparsity is not part of this space's architectures: every layer is left to the sparsifier."""
        self._parse(arch)
        return None

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec]:
        """Every conv and Linear weight any sub-network can have, with its possible fan-ins (per group)."""
        p = self.params
        full = self.largest_layout(input_shape, num_classes)
        specs = [WeightSpec("stem.conv.weight", "conv2d", frozenset({full.in_channels}), 9)]
        for s, blocks in enumerate(full.stages):
            for b in range(len(blocks)):
                cin = full.block_in(s, b)
                prefix = f"stages.{s}.{b}"
                specs.append(WeightSpec(f"{prefix}.expand.conv.weight", "conv2d", frozenset({cin})))
                specs.append(WeightSpec(f"{prefix}.dw.conv.weight", "conv2d", frozenset({1}), max(p.kernel_choices) ** 2))
                hidden = frozenset(cin * e for e in p.expand_choices)
                specs.append(WeightSpec(f"{prefix}.project.conv.weight", "conv2d", hidden))
        specs.append(WeightSpec("classifier.weight", "linear", frozenset({p.stage_channels[-1]})))
        return specs

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the supernet, the largest network of the space (every sub-network has fewer)."""
        return self.largest_layout(input_shape, num_classes).params()

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Parameters of the smallest sub-network: a block's count grows with its expansion and kernel, a stage's with its depth."""
        return self.layout(self.smallest(), input_shape, num_classes).params()

    # -- the supernet -----------------------------------------------------------------------

    def largest(self) -> dict[str, Any]:
        """The largest sub-network: deepest stages, widest blocks, largest kernels (the supernet itself)."""
        return self._uniform(max(self.params.depth_choices), max(self.params.expand_choices), max(self.params.kernel_choices))

    def smallest(self) -> dict[str, Any]:
        """The smallest sub-network (the lower end of the sandwich rule)."""
        return self._uniform(min(self.params.depth_choices), min(self.params.expand_choices), min(self.params.kernel_choices))

    def build_supernet(self, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """The weight-sharing supernet (an ``ElasticMobileNet``); ``set_active(space.layout(arch, ...))`` picks a sub-network."""
        from nas.supertickets.elastic import ElasticMobileNet

        return ElasticMobileNet(self.largest_layout(input_shape, num_classes))

    def extract(self, supernet: torch.nn.Module, arch: dict[str, Any]) -> torch.nn.Module:
        """The standalone sub-network ``arch`` holding its slice of ``supernet``'s weights, statistics and masks.

        ``supernet`` is :meth:`build_supernet`'s module or the largest network :meth:`build` makes
        (e.g. a supernet trial's saved model); in eval mode the result computes what the supernet
        computes with ``arch`` active.
        """
        from nas.supertickets.elastic import extract

        layout = supernet.layout
        sub = self.build(arch, (layout.in_channels, 1, 1), layout.num_classes)
        return extract(supernet, sub)

    def layout(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Layout:
        """The network ``arch`` describes, for inputs of ``input_shape`` (channels, height, width)."""
        channels, _, _ = image_shape("supernet", input_shape)
        p = self.params
        return Layout(
            in_channels=channels,
            num_classes=num_classes,
            stem_channels=p.stem_channels,
            stem_stride=p.stem_stride,
            stage_channels=tuple(p.stage_channels),
            stage_strides=tuple(p.stage_strides),
            stages=self._parse(arch),
        )

    def largest_layout(self, input_shape: tuple[int, ...], num_classes: int) -> Layout:
        """The supernet's layout."""
        return self.layout(self.largest(), input_shape, num_classes)

    def arch_of(self, layout: Layout) -> dict[str, Any]:
        """The architecture dict of a layout (the inverse of :meth:`layout`), checked against the space."""
        arch: dict[str, Any] = {}
        for s, blocks in enumerate(layout.stages):
            arch[f"depth_{s}"] = len(blocks)
            for b, block in enumerate(blocks):
                arch[f"expand_{s}_{b}"] = block.expand
                arch[f"kernel_{s}_{b}"] = block.kernel
        self._parse(arch)
        return arch

    def _uniform(self, depth: int, expand: int, kernel: int) -> dict[str, Any]:
        arch: dict[str, Any] = {}
        for s in range(len(self.params.stage_channels)):
            arch[f"depth_{s}"] = depth
            for b in range(depth):
                arch[f"expand_{s}_{b}"] = expand
                arch[f"kernel_{s}_{b}"] = kernel
        return arch

    def _parse(self, arch: dict[str, Any]) -> tuple[tuple[Block, ...], ...]:
        """Check ``arch`` against the space; ``ValueError`` names the first offending key."""
        p = self.params
        if not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict, not {type(arch).__name__}")
        expected: set[str] = set()
        stages = []
        for s in range(len(p.stage_channels)):
            depth = arch.get(f"depth_{s}")
            if not isinstance(depth, int) or isinstance(depth, bool) or depth not in p.depth_choices:
                raise ValueError(f"arch depth_{s}={depth!r} is not one of {p.depth_choices}")
            expected.add(f"depth_{s}")
            blocks = []
            for b in range(depth):
                values = []
                for key, choices in ((f"expand_{s}_{b}", p.expand_choices), (f"kernel_{s}_{b}", p.kernel_choices)):
                    expected.add(key)
                    value = arch.get(key)
                    if isinstance(value, bool) or value not in choices:
                        raise ValueError(f"arch {key}={value!r} is not one of {choices}")
                    values.append(int(value))
                blocks.append(Block(*values))
            stages.append(tuple(blocks))
        if set(arch) != expected:
            raise ValueError(f"arch has keys the space does not use at these depths: {sorted(set(arch) - expected)}")
        return tuple(stages)
