"""The shape of a MobileNet-style network, without torch: what a supernet architecture dict means.

A network is a stem (3x3 conv, BatchNorm, ReLU), stages of inverted-residual blocks (1x1 expand,
kxk depthwise, 1x1 project, each followed by BatchNorm; residual where the shape allows), global
average pooling and a Linear classifier. A stage's first block changes the channels and strides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: expansion ratio (hidden = in_channels * expand) and depthwise kernel."""

    expand: int
    kernel: int


@dataclass(frozen=True)
class Layout:
    """Everything needed to build one network (the supernet's layout has the largest choices)."""

    in_channels: int
    num_classes: int
    stem_channels: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    stages: tuple[tuple[Block, ...], ...]  # the blocks each stage has, in order

    def block_in(self, stage: int, block: int) -> int:
        """Input channels of a block: the previous stage's output for a stage's first block."""
        if block > 0:
            return self.stage_channels[stage]
        return self.stem_channels if stage == 0 else self.stage_channels[stage - 1]

    def hidden(self, stage: int, block: int) -> int:
        """Expanded channels of a block."""
        return self.block_in(stage, block) * self.stages[stage][block].expand

    def params(self) -> int:
        """Trainable parameters: convs (no bias), BatchNorm scale and shift, classifier weight and bias."""
        total = self.in_channels * self.stem_channels * 9 + 2 * self.stem_channels
        for s, blocks in enumerate(self.stages):
            out = self.stage_channels[s]
            for b, block in enumerate(blocks):
                cin, hidden = self.block_in(s, b), self.hidden(s, b)
                total += cin * hidden + 2 * hidden  # expand + BN
                total += hidden * block.kernel**2 + 2 * hidden  # depthwise + BN
                total += hidden * out + 2 * out  # project + BN
        return total + self.stage_channels[-1] * self.num_classes + self.num_classes
