"""Torch module of the sparse_rnn space, imported only when a network is built."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.sparse_rnn import CELL_MODULES


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
        options = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": True}
        if cell == "lstm":
            recurrent: nn.RNNBase = nn.LSTM(input_size, hidden, **options)
        elif cell == "gru":
            recurrent = nn.GRU(input_size, hidden, **options)
        else:
            recurrent = nn.RNN(input_size, hidden, nonlinearity=cell.removeprefix("rnn_"), **options)
        self.attr = CELL_MODULES[cell]
        self.add_module(self.attr, recurrent)
        self.directions = 2 if bidirectional else 1
        self.out = nn.Linear(hidden * self.directions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            steps = x.permute(0, 2, 1, 3).flatten(2)  # (batch, height, channels * width)
        elif x.dim() == 3:
            steps = x
        else:
            steps = x.unsqueeze(-1)  # (batch, length, 1)
        _, state = getattr(self, self.attr)(steps)
        final = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
        return self.out(final[-self.directions :].transpose(0, 1).flatten(1))

    def extra_repr(self) -> str:
        return "image rows, or a sequence's steps, as time steps"
