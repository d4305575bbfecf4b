"""NAS-Bench-201's cell space (Dong & Yang, ICLR 2020): one cell of 4 nodes, an operation per edge.

Every architecture names the operation on each of the cell's six edges, ``op0`` .. ``op5``
(:mod:`nas.nasbench201_cell`): 5^6 = 15,625 architectures. :meth:`NASBench201Space.build` builds the
benchmark's own macro network (a 3x3 stem, three stages of five cells at 16, 32 and 64 channels
joined by residual reduction blocks, global pooling, a linear classifier), so a found architecture
trains on any image dataset; on the ``nasbench201`` dataset the trials look their results up in
the benchmark's table instead (:mod:`nas.data.nasbench201`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.nasbench201_cell import KEYS, OPERATIONS, operations
from nas.search_space import SearchSpace

if TYPE_CHECKING:
    import optuna
    from torch import nn

STAGE_CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
_CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


class NASBench201Space(SearchSpace):
    """The 15,625 cells of NAS-Bench-201; ``table`` names the benchmark table a job looks them up in."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        table: Literal["cifar10", "cifar100", "imagenet"] = Field(
            "cifar10", description="the NAS-Bench-201 table of the nasbench201 dataset this space is searched on"
        )

    params: Params

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {key: rng.choice(OPERATIONS) for key in KEYS}

    def dimensions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        from optuna.distributions import CategoricalDistribution

        return {key: CategoricalDistribution(OPERATIONS) for key in KEYS}

    def arch_from(self, suggest: Callable[[str], Any]) -> dict[str, Any]:
        return {key: suggest(key) for key in KEYS}

    def layer_sparsity(self, arch: dict[str, Any]) -> dict[str, float] | None:
        operations(arch)
        return None

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """NAS-Bench-201's network of ``arch`` for images ``(channels, height, width)`` of at least 4x4."""
        from search_spaces._nb201_layers import build_network

        ops = operations(arch)
        if len(input_shape) != 3 or min(input_shape[1:]) < 4:
            raise ValueError(f"the nasbench201 space takes images (channels, height, width) of at least 4x4, not {input_shape}")
        return build_network(ops, input_shape[0], num_classes)

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return arch_params(("nor_conv_3x3",) * len(KEYS), input_shape[0], num_classes)

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return arch_params(("none",) * len(KEYS), input_shape[0], num_classes)


def arch_params(ops: tuple[str, ...], in_channels: int, num_classes: int) -> int:
    """The parameters of :meth:`NASBench201Space.build`'s network, counted without building it.

    Convolutions carry no bias and are followed by a BatchNorm (two parameters per channel), as
    in NAS-Bench-201's ``ReLUConvBN``.
    """
    def conv_bn(c_in: int, c_out: int, kernel: int) -> int:
        return c_in * c_out * kernel * kernel + 2 * c_out

    total = conv_bn(in_channels, STAGE_CHANNELS[0], 3)  # the stem
    for stage, channels in enumerate(STAGE_CHANNELS):
        if stage:
            c_in = STAGE_CHANNELS[stage - 1]  # the residual reduction block: two 3x3 convs and a 1x1 shortcut
            total += conv_bn(c_in, channels, 3) + conv_bn(channels, channels, 3) + c_in * channels
        total += CELLS_PER_STAGE * sum(conv_bn(channels, channels, _CONV_KERNEL[op]) for op in ops if op in _CONV_KERNEL)
    return total + 2 * STAGE_CHANNELS[-1] + STAGE_CHANNELS[-1] * num_classes + num_classes
