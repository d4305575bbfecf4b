"""ONNX files for the models tests, made here: a small CNN exported by torch.onnx.export as users
export theirs, and hand-made graphs the server must refuse."""

from __future__ import annotations

import io
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn


def cnn(seed: int = 0) -> nn.Module:
    """A small CNN for 1x8x8 images with 10 classes (the shape of the ``digits`` dataset)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


def onnx_bytes(model: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> bytes:
    """``model`` exported as users export theirs: ``torch.onnx.export`` with a dynamic batch axis."""
    buffer = io.BytesIO()
    torch.onnx.export(
        model.eval(), (torch.zeros(1, *shape),), buffer, dynamo=False, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    return buffer.getvalue()


def graph_model(nodes: list[Any], initializers: list[TensorProto] | None = None) -> onnx.ModelProto:
    """A hand-made (N, 4) -> (N, 4) graph over ``nodes`` from ``x`` to ``y``, opset 17."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=initializers or [],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external_data() -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.0] * 16)
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])
    tensor = model.graph.initializer[0]
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="weights.bin")
    return model.SerializeToString()
