"""Torch modules of the recurrent spaces (sparse_rnn, and the declarative space's recurrent blocks), imported only when a network is built."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.sparse_rnn import CELL_MODULES


def as_steps(x: torch.Tensor) -> torch.Tensor:
    """``(batch, steps, features)``: an image batch row by row, a sequence batch as it is, a flat batch one value per step."""
    if x.dim() == 4:
        return x.permute(0, 2, 1, 3).flatten(2)  # (batch, height, channels * width)
    return x if x.dim() == 3 else x.unsqueeze(-1)


def last_hidden(state: torch.Tensor | tuple[torch.Tensor, torch.Tensor], directions: int) -> torch.Tensor:
    """The last layer's final hidden state of every direction, ``(batch, hidden * directions)``, from an RNN's state."""
    final = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
    return final[-directions:].transpose(0, 1).flatten(1)


def recurrent_module(cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool) -> nn.RNNBase:
    """The batch-first RNN (tanh or ReLU), GRU or LSTM of ``cell``."""
    options = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": True}
    if cell == "lstm":
        return nn.LSTM(input_size, hidden, **options)
    if cell == "gru":
        return nn.GRU(input_size, hidden, **options)
    return nn.RNN(input_size, hidden, nonlinearity=cell.removeprefix("rnn_"), **options)


class RecurrentEncoder(nn.Module):
    """A stacked recurrent module over :func:`as_steps` of its input; returns the last layer's final hidden
    state of both directions, ``(batch, hidden * directions)``. Weights are named as in :class:`SequenceClassifier`."""

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.attr = CELL_MODULES[cell]
        self.add_module(self.attr, recurrent_module(cell, input_size, hidden, layers, bidirectional))
        self.directions = 2 if bidirectional else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = getattr(self, self.attr)(as_steps(x))
        return last_hidden(state, self.directions)


class SequenceClassifier(nn.Module):
    """Reads each input as a sequence (:func:`search_spaces.sparse_rnn.sequence_shape`): an image
    ``(channels, height, width)`` as ``height`` steps of ``channels * width`` features, ``(steps,
    features)`` as it is, ``(length,)`` as ``length`` steps of one feature.

    A stacked (optionally bidirectional) RNN runs over the rows, and a Linear classifier ``out``
    reads the last layer's final hidden state (of both directions). The recurrent module is
    stored as ``rnn``, ``gru`` or ``lstm``, so weights are named ``lstm.weight_ih_l0`` and so on.
    """

    def __init__(
        self, cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool, num_classes: int
    ) -> None:
        super().__init__()
        self.attr = CELL_MODULES[cell]
        self.add_module(self.attr, recurrent_module(cell, input_size, hidden, layers, bidirectional))
        self.directions = 2 if bidirectional else 1
        self.out = nn.Linear(hidden * self.directions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = getattr(self, self.attr)(as_steps(x))
        return self.out(last_hidden(state, self.directions))

    def extra_repr(self) -> str:
        return "image rows, or a sequence's steps, as time steps"
