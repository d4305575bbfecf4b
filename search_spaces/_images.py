"""The inputs convolutional spaces take: images ``(channels, height, width)`` of any size."""

from __future__ import annotations


def image_shape(space: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)``; a ``ValueError`` saying why otherwise, which refuses a job at its dataset.

    A table (one axis of features) or a sequence has no height and width for a convolution to
    slide over, so a convolutional space cannot take it; ``sparse_mlp`` takes any shape.
    """
    shape = tuple(input_shape)
    if len(shape) == 3 and all(isinstance(s, int) and s >= 1 for s in shape):
        return shape[0], shape[1], shape[2]
    if len(shape) == 1:
        what = f"a table of {shape[0]} features per example"
    elif len(shape) == 2:
        what = f"a sequence of {shape[0]} steps of {shape[1]} features per example"
    else:
        what = "such an input"
    raise ValueError(
        f"{space} needs image inputs (channels, height, width), got shape {shape}: {what} has no height and "
        f"width for a convolution to slide over; sparse_mlp takes inputs of any shape"
    )
