"""Jobs over a stored model through the job runner and the real trainer, on a real local Ray.

A CNN trained here on the digits is exported to ONNX and stored as an upload stores it (its file
in the store's folder, its record in the database). The runner has the server's NAS_HOME, Ray's
workers one of their own: the ONNX reaches them through Ray's object store and lands in their node
cache, byte for byte. A random and a TPE job each measure the dense model once and fine-tune from
its trained weights, so every trial is near the dense accuracy after its first epoch and is shown
beside the dense model.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from nas.models.stored import scoped_model_catalog
from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade
from nas.store.artifacts import model_file
from nas.store.model_catalog import StoreModelCatalog
from tests.pretrained import digits_cnn, model_record
from workers.runner import JobRunner

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray whose workers have a NAS_HOME of their own, as a worker node would."""
    home = tmp_path_factory.mktemp("workers") / "worker-home"
    saved = os.environ.get("NAS_HOME")
    os.environ["NAS_HOME"] = str(home)  # Ray's workers inherit the environment ray.init sees
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        os.environ.pop("NAS_HOME") if saved is None else os.environ.__setitem__("NAS_HOME", saved)
    yield home
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "server-home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def _store_model(store: Store, settings: Settings, data: bytes) -> str:
    """Keep ``data`` as an upload does: its file in the store's folder, then its row."""
    model_id = uuid.uuid4().hex
    path = model_file(settings.artifact_dir, model_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    store.create_model(model_record(model_id, data, path))
    return model_id


def test_random_and_tpe_fine_tune_the_stored_model_on_the_workers(
    worker_home: Path, store: Store, settings: Settings
) -> None:
    data, accuracy = digits_cnn()
    model_id = _store_model(store, settings, data)
    for strategy in ("random", "tpe"):
        spec = {
            "name": strategy,
            "search_space": {"name": "model_sparsity", "params": {"model_id": model_id, "layer_sparsity_choices": [0.5, 0.7]}},
            "strategy": {"name": strategy},
            "dataset": {"name": "digits"},
            "sparsifier": {"name": "magnitude", "params": {"prune_at": 0.0}},
            "training": {"epochs": 1, "batch_size": 64, "lr": 5e-4},
            "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
            "budget": {"max_trials": 2, "max_concurrent": 2},
        }  # fmt: skip
        with scoped_model_catalog(StoreModelCatalog(store, "tester")):  # as the API checks it for its owner
            job = store.create_job(JobSpec.model_validate(spec), "tester")
        assert store.claim_job("test-runner", 60) == job.id
        JobRunner(store, settings, job.id, "test-runner").run()

        finished = store.get_job(job.id)
        assert finished.status is JobStatus.succeeded, finished.error
        assert finished.baseline["dense_accuracy"] == pytest.approx(accuracy, abs=1e-3)
        trials, _ = store.list_trials(job.id)
        assert [t.state for t in trials] == [TrialState.complete] * 2
        for trial in trials:
            m = trial.metrics
            # measured once per job on a worker: the dense model's own accuracy, beside every trial
            assert {name: m[name] for name in finished.baseline} == finished.baseline
            assert m["dense_latency_ms"] > 0 and m["speedup"] == pytest.approx(m["dense_latency_ms"] / m["latency_ms"])
            assert m["accuracy_drop"] == pytest.approx(m["dense_accuracy"] - m["accuracy"])
            # one epoch from the trained weights: near the dense accuracy (from scratch: far below)
            first = store.get_trial(trial.id).history[0].metrics["val_accuracy"]
            assert first > accuracy - 0.1, (strategy, trial.arch, first, accuracy)

    # the trials read the node's copy, which came through Ray: the server's file, byte for byte
    cached = worker_home / "cache" / "models" / f"{model_id}.onnx"
    assert cached.read_bytes() == data
    assert not (settings.home / "cache").exists()
