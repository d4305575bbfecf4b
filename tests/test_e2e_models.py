"""End to end: a user's own trained network, made sparse and faster through the real ``nas serve``.

Two networks a user would bring, each trained here on data scikit-learn bundles: a small CNN on
the digit images (PNG files in a ``.tar.gz``, read at 16×16) and an MLP on the breast-cancer table
(CSV). Each is trained on exactly the training split the server stores (the file is read here by
the same ingest the server runs, so split and standardisation match), exported with
``torch.onnx.export``, uploaded to ``POST /api/v1/models`` and searched with ``model_sparsity``
from its trained weights by the ``sensitivity`` strategy (one probe per layer, then TPE), with
each layer dense or 80-90% unstructured. The job measures the dense model once; a trial at ≥ 70%
overall sparsity must keep its accuracy within 1 point of it, and the fastest such trial's sparse
inference model must run faster than the dense one, both as measured on the trial's worker. Then
the models and datasets delete.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.client import Client
from nas.data.base import DataSplits
from nas.data.ingest import detect_format, ingest
from nas.data.ingest.base import IngestLimits, IngestOptions
from nas.settings import Settings
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess
from tests.test_e2e_datasets import breast_cancer_parquet, digit_images_tar

pytestmark = pytest.mark.ray

MIN_SPARSITY = 0.7
MAX_DROP = 0.01  # one accuracy point


@dataclass(frozen=True)
class Case:
    """A dataset file, the network a user trains on it, and the search over that network."""

    kind: str
    path: Path
    options: dict[str, Any]
    module: nn.Module
    epochs: int
    search: dict[str, Any]  # model_sparsity params besides model_id
    training: dict[str, Any]
    strategy: dict[str, Any]


def breast_cancer_csv(folder: Path) -> Path:
    """Breast cancer as a CSV: 30 numeric columns and a boolean one, the label ``diagnosis`` as names."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = folder / "breast_cancer.csv"
    pacsv.write_csv(pq.read_table(breast_cancer_parquet(folder)), path)
    return path


def cnn() -> nn.Module:
    """Two 3×3 convolutions with BatchNorm, one pooling, then two Linear layers: a digits classifier
    whose first Linear layer (2048 -> 512) carries most of its work, as in many small CNNs, so that
    its sparsity shows in the latency well above the machine's noise."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 10),
    )  # fmt: skip


def mlp(features: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2),
    )  # fmt: skip


def cases(folder: Path) -> list[Case]:
    training = {"epochs": 6, "batch_size": 32, "lr": 3e-4}
    # the first convolution and the classifier are small and sensitive: the search may leave them dense
    search = {"layer_sparsity_choices": [0.8, 0.9], "pattern_choices": ["dense", "unstructured"]}
    strategy = {"name": "sensitivity"}  # one probe per layer, then TPE
    return [
        Case("cnn", digit_images_tar(folder), {"image_size": 16, "color": "grayscale"}, cnn(), 15, search, training,
             strategy),
        Case(
            "mlp", breast_cancer_csv(folder), {"label_column": "diagnosis"}, mlp(31), 30, search, training,
            strategy,
        ),
    ]  # fmt: skip


def server_splits(case: Case) -> DataSplits:
    """The splits the server stores for ``case.path``: read by the server's own ingest."""
    options = IngestOptions(format=detect_format(case.path.name), **case.options)
    return ingest(case.path, options, IngestLimits.from_settings(Settings())).splits


def train(module: nn.Module, splits: DataSplits, epochs: int) -> float:
    """Adam on the training split; the test accuracy in eval mode."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
    for _ in range(epochs):
        module.train()
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
    module.eval()
    with torch.no_grad():
        predicted = module(torch.from_numpy(splits.x_test)).argmax(dim=1).numpy()
    return float(np.mean(predicted == splits.y_test))


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """``module`` as users export theirs: ``torch.onnx.export`` with a dynamic batch axis."""
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(), (torch.zeros(1, *input_shape),), buffer, dynamo=False, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, {})
    yield server
    server.stop()


def test_a_users_cnn_and_mlp_become_sparse_and_faster_within_a_point(server: ServerProcess, tmp_path: Path) -> None:
    key = server.create_key("alice")
    server.start()
    all_cases = cases(tmp_path)
    jobs, dense = {}, {}
    with Client(server.url, key) as client:
        for case in all_cases:
            splits = server_splits(case)
            dense[case.kind] = train(case.module, splits, case.epochs)
            onnx_path = export_onnx(case.module, splits.input_shape, tmp_path / f"{case.kind}.onnx")
            dataset = client.upload_dataset(case.path, progress=False, **case.options)
            assert tuple(dataset.input_shape) == splits.input_shape
            model = client.upload_model(onnx_path, name=case.kind, progress=False)
            assert tuple(model.input_shape) == splits.input_shape
            assert [layer["kind"] for layer in model.layers], model.layers
            jobs[case.kind] = client.submit({
                "name": f"own model: {case.kind}",
                "search_space": {"name": "model_sparsity", "params": {"model_id": model.id, **case.search}},
                "strategy": case.strategy,
                "dataset": {"name": "upload", "params": {"id": dataset.id}},
                "sparsifier": {"name": "magnitude", "params": {"prune_at": 0.0}},
                "training": case.training,
                "objectives": [{"metric": "accuracy", "direction": "maximize"},
                               {"metric": "sparsity", "direction": "maximize"}],
                "budget": {"max_trials": 8, "max_concurrent": 2},
                "seed": 0,
            })  # fmt: skip

        for case in all_cases:
            job = client.wait(jobs[case.kind].id, progress=False, poll_s=1, timeout=600)
            assert job.status is JobStatus.succeeded, (case.kind, job.error, server.log()[-3000:])
            trials = [t for t in client.trials(job.id) if t.state is TrialState.complete]
            # the job measured the dense model on the stored test split: the accuracy it had here
            assert trials[0].metrics["dense_accuracy"] == pytest.approx(dense[case.kind], abs=1e-6)
            # the trials as sparse as asked and as accurate as the dense model (within a point) ...
            kept = [t for t in trials if t.metrics["sparsity"] >= MIN_SPARSITY and t.metrics["accuracy_drop"] <= MAX_DROP]
            summary = [(t.arch, {k: round(t.metrics[k], 4) for k in ("sparsity", "accuracy_drop", "speedup")}) for t in trials]
            assert kept, (case.kind, summary)
            # ... and the fastest of them runs faster than the dense model, both measured on the trial's worker
            best = min(kept, key=lambda t: t.metrics["latency_ms"])
            m = best.metrics
            assert m["latency_ms"] < m["dense_latency_ms"], (case.kind, summary)
            assert m["speedup"] == pytest.approx(m["dense_latency_ms"] / m["latency_ms"])
            kernels = {layer.name: layer.kernel for layer in client.trial(best.id).layers}
            print(case.kind, {k: round(m[k], 4) for k in ("sparsity", "accuracy_drop", "speedup")}, kernels)

        for model in list(client.models()):  # the jobs have ended: nothing holds the models or datasets now
            client.delete_model(model.id)
        for dataset in list(client.datasets()):
            client.delete_dataset(dataset.id)
        assert list(client.models()) == [] and list(client.datasets()) == []
