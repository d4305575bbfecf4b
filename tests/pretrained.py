"""Trained networks as users bring them: trained here on a registered dataset, exported with torch.onnx.export.

``digits_cnn`` is a small BatchNorm CNN on the 8x8 digits (the ``digits`` dataset at its defaults),
``table_mlp`` an MLP on a table (the ``synthetic`` dataset with ``TABLE`` params). Both train in
about a second on one thread and land far above chance, so a trial that starts from their weights
is told apart from one that starts from scratch after a single epoch.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nas import registry

if TYPE_CHECKING:
    from nas.models.node_cache import NodeModelCatalog
    from nas.specs import ModelRecord

TABLE: dict[str, Any] = {"input_shape": [24], "num_classes": 4, "train_size": 600, "test_size": 300, "noise": 2.0}
"""``synthetic`` params of the table the MLP learns: 24 features, 4 classes, noisy enough to need training."""


def digits_cnn_module() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(1, 16, 3, padding=1)), ("bn0", nn.BatchNorm2d(16)), ("act0", nn.ReLU()),
        ("pool0", nn.MaxPool2d(2)),
        ("conv1", nn.Conv2d(16, 32, 3, padding=1)), ("bn1", nn.BatchNorm2d(32)), ("act1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc0", nn.Linear(128, 64)), ("act2", nn.ReLU()), ("out", nn.Linear(64, 10)),
    ]))  # fmt: skip


def table_mlp_module() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("fc0", nn.Linear(24, 64)), ("act0", nn.ReLU()), ("fc1", nn.Linear(64, 32)), ("act1", nn.ReLU()),
        ("out", nn.Linear(32, 4)),
    ]))  # fmt: skip


def train(model: nn.Module, dataset: str, params: dict[str, Any], epochs: int = 15, seed: int = 0) -> float:
    """Train ``model`` on the dataset's training split (Adam, batches of 64); its test accuracy, in eval mode."""
    splits = registry.datasets.create(dataset, params).load(Path("."))
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(splits.x_test)).argmax(dim=1)
    return float((predicted == torch.from_numpy(splits.y_test)).float().mean())


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` exported as users export theirs: ``torch.onnx.export`` with a dynamic batch axis."""
    buffer = io.BytesIO()
    torch.onnx.export(
        model.eval(), (torch.zeros(1, *input_shape),), buffer, dynamo=False, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    return buffer.getvalue()


def digits_cnn(seed: int = 0) -> tuple[bytes, float]:
    """The digits CNN, trained: its ONNX bytes and its test accuracy on ``digits``."""
    torch.manual_seed(seed)
    model = digits_cnn_module()
    accuracy = train(model, "digits", {}, seed=seed)
    return onnx_bytes(model, (1, 8, 8)), accuracy


def table_mlp(seed: int = 0) -> tuple[bytes, float]:
    """The table MLP, trained: its ONNX bytes and its test accuracy on ``synthetic`` with ``TABLE``."""
    torch.manual_seed(seed)
    model = table_mlp_module()
    accuracy = train(model, "synthetic", TABLE, seed=seed)
    return onnx_bytes(model, (24,)), accuracy


def model_record(model_id: str, data: bytes, path: Path, owner: str = "tester") -> ModelRecord:
    """The record the store keeps of ``data`` uploaded as ``model_id``, read (checked, converted, compared) from ``path``."""
    from nas.models.onnx_import import ModelLimits
    from nas.models.summary import read_model
    from nas.settings import Settings
    from nas.specs import ModelRecord
    from nas.store.tables import utcnow

    info = read_model(path, ModelLimits.from_settings(Settings.from_env()))
    return ModelRecord(
        id=model_id, name=f"model-{model_id[:6]}", owner=owner, input_shape=list(info.input_shape),
        num_outputs=info.num_outputs, params=info.params, layers=info.layers, opset=info.opset,
        producer=info.producer, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dense_latency_ms={},
        created_at=utcnow(),
    )  # fmt: skip


def node_catalog(cache_dir: Path, models: list[bytes]) -> tuple[NodeModelCatalog, list[str]]:
    """``models`` stored as a worker node keeps them (its cache, their records): the catalog and their ids."""
    from nas.models.node_cache import NodeModelCatalog, cache_model

    records = {}
    for data in models:
        model_id = uuid.uuid4().hex
        path = cache_model(cache_dir, model_id, hashlib.sha256(data).hexdigest(), lambda: data)
        records[model_id] = model_record(model_id, data, path)
    return NodeModelCatalog(cache_dir, records), list(records)
