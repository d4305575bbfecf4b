"""MobileNet-style networks and their weight-sharing supernet (Once-for-All style).

:class:`MobileNet` is a standalone network of one :class:`~nas.supertickets.layout.Layout`: plain
``Conv2d``/``BatchNorm2d``/``Linear`` modules called as modules, so masks, latency measurement and
the sparse inference converter see an ordinary network. :class:`ElasticMobileNet` has the same
modules at their largest size and the same ``state_dict`` names; :meth:`ElasticMobileNet.set_active`
makes its forward pass run one sub-network on shared weights: a block's first ``hidden`` channels,
the centre ``k x k`` of each depthwise kernel and a stage's first blocks. :func:`extract` copies a
sub-network's slice of the weights (and masks) into a standalone :class:`MobileNet`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import safetensors.torch
from torch import nn

from nas.sparse.masks import masks
from nas.sparse.serialization import load_model
from nas.supertickets.layout import Layout


class ConvBN(nn.Module):
    """A bias-free convolution followed by BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class InvertedResidual(nn.Module):
    """1x1 expand, kxk depthwise, 1x1 project (MobileNetV2); residual when stride 1 and in == out."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.expand = ConvBN(cin, hidden, 1)
        self.dw = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1)
        self.act = nn.ReLU()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act(self.dw(self.act(self.expand(x)))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """Stem, stages of inverted-residual blocks, global average pooling, Linear classifier."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        self.stem = ConvBN(layout.in_channels, layout.stem_channels, 3, layout.stem_stride)
        self.stem_act = nn.ReLU()
        self.stages = nn.ModuleList()
        for s, blocks in enumerate(layout.stages):
            self.stages.append(
                nn.Sequential(
                    *(
                        InvertedResidual(
                            layout.block_in(s, b),
                            layout.stage_channels[s],
                            layout.hidden(s, b),
                            block.kernel,
                            layout.stage_strides[s] if b == 0 else 1,
                        )
                        for b, block in enumerate(blocks)
                    )
                )
            )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(layout.stage_channels[-1], layout.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.flatten(self.pool(x)))


class ElasticMobileNet(MobileNet):
    """The supernet: the largest :class:`MobileNet`, able to run any of its sub-networks on shared weights."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.active: Layout | None = None
        self.track_active_stats = True

    def set_active(self, layout: Layout | None, track_stats: bool = True) -> None:
        """Run ``layout`` (a sub-network of the supernet's layout) from now on; ``None``: the whole supernet.

        With ``track_stats=False`` a sub-network trained in train mode normalises with its batch
        statistics but leaves the shared running statistics alone (they stay the whole supernet's;
        a cut sub-network recalibrates its own).
        """
        if layout is not None:
            check_sub_layout(self.layout, layout)
        self.active = layout
        self.track_active_stats = track_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return super().forward(x)
        stem = self.stem
        x = self.stem_act(_elastic_bn(stem.bn, stem.conv(x), stem.bn.num_features, self.track_active_stats))
        for s, blocks in enumerate(self.active.stages):
            for b, choice in enumerate(blocks):
                x = _elastic_block(self.stages[s][b], x, self.active.hidden(s, b), choice.kernel, self.track_active_stats)
        return self.classifier(self.flatten(self.pool(x)))

    def expansion_bns(self) -> list[nn.BatchNorm2d]:
        """The BatchNorms after every expansion conv: the channels network slimming scores (``expansion_only``)."""
        return [block.expand.bn for stage in self.stages for block in stage]


def check_sub_layout(full: Layout, sub: Layout) -> None:
    """``ValueError`` unless ``sub`` selects a sub-network of ``full`` (same skeleton, no larger choice)."""
    same = (full.in_channels, full.num_classes, full.stem_channels, full.stem_stride, full.stage_channels,
            full.stage_strides) == (sub.in_channels, sub.num_classes, sub.stem_channels, sub.stem_stride,
                                    sub.stage_channels, sub.stage_strides)  # fmt: skip
    if not same or len(sub.stages) != len(full.stages):
        raise ValueError("the sub-network's skeleton (channels, strides, stages) differs from the supernet's")
    for s, (blocks, full_blocks) in enumerate(zip(sub.stages, full.stages)):
        if not 1 <= len(blocks) <= len(full_blocks):
            raise ValueError(f"stage {s} has {len(blocks)} blocks; the supernet has 1..{len(full_blocks)}")
        for b, (block, largest) in enumerate(zip(blocks, full_blocks)):
            if block.expand > largest.expand or block.kernel > largest.kernel or block.kernel % 2 == 0:
                raise ValueError(f"block {s}.{b} {block} is not inside the supernet's {largest}")


def _elastic_bn(bn: nn.BatchNorm2d, x: torch.Tensor, channels: int, track: bool = True) -> torch.Tensor:
    """``bn`` on its first ``channels`` channels; in train mode running statistics are updated in place on
    that slice (unless ``track`` is false: momentum 0 leaves them as they are)."""
    momentum = 0.0 if bn.momentum is None or not track else bn.momentum
    if bn.training and bn.track_running_stats and track:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or not bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean[:channels] if bn.running_mean is not None else None,
        bn.running_var[:channels] if bn.running_var is not None else None,
        bn.weight[:channels],
        bn.bias[:channels],
        use_batch_stats,
        momentum,
        bn.eps,
    )


def _elastic_block(block: InvertedResidual, x: torch.Tensor, hidden: int, kernel: int, track: bool) -> torch.Tensor:
    """``block`` restricted to its first ``hidden`` channels and the centre ``kernel x kernel`` of its depthwise conv."""
    y = block.act(_elastic_bn(block.expand.bn, F.conv2d(x, block.expand.conv.weight[:hidden]), hidden, track))
    depthwise = block.dw.conv.weight[:hidden]
    off = (depthwise.shape[-1] - kernel) // 2
    depthwise = depthwise[:, :, off : off + kernel, off : off + kernel]
    stride = block.dw.conv.stride
    y = F.conv2d(y, depthwise, stride=stride, padding=kernel // 2, groups=hidden)
    y = block.act(_elastic_bn(block.dw.bn, y, hidden, track))
    project = block.project.conv.weight
    y = _elastic_bn(block.project.bn, F.conv2d(y, project[:, :hidden]), project.shape[0], track)
    return x + y if block.residual else y


def slice_to(tensor: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The sub-network's part of a supernet tensor: leading entries, and the centre of conv kernels (dims 2, 3)."""
    if tensor.dim() != len(shape):
        raise ValueError(f"cannot slice a {tuple(tensor.shape)} tensor to {tuple(shape)}")
    index = []
    for dim, (have, want) in enumerate(zip(tensor.shape, shape)):
        if want > have:
            raise ValueError(f"cannot slice a {tuple(tensor.shape)} tensor to the larger {tuple(shape)}")
        start = (have - want) // 2 if tensor.dim() == 4 and dim >= 2 else 0
        index.append(slice(start, start + want))
    return tensor[tuple(index)].clone()


def extract(supernet: nn.Module, sub: MobileNet) -> MobileNet:
    """Load into ``sub`` its slice of ``supernet``'s weights, BatchNorm statistics and masks; returns ``sub``.

    ``supernet`` is an :class:`ElasticMobileNet`, or any :class:`MobileNet` with the supernet's
    shapes (the supernet trial's saved model). Weights are copied as the forward pass sees them, so
    in eval mode ``sub(x)`` equals the supernet's forward with ``set_active(sub.layout)``.
    """
    source = {k: v for k, v in supernet.state_dict().items() if "parametrizations" not in k.split(".")}
    for name, mask in masks(supernet).items():
        module_path, _, attr = name.rpartition(".")
        source[name] = getattr(supernet.get_submodule(module_path), attr).detach()
        source[name + "_mask"] = mask.bool()
    tensors = {}
    for name, tensor in sub.state_dict().items():
        if name not in source:
            raise ValueError(f"the supernet has no tensor {name!r} for the sub-network")
        tensors[name] = slice_to(source[name], tensor.shape)
        if name + "_mask" in source:
            tensors[name + "_mask"] = slice_to(source[name + "_mask"], tensor.shape)
    load_model(sub, safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}))
    return sub
