"""Jobs on users' datasets through the job runner and the real trainer, on a real local Ray.

The runner has the server's NAS_HOME; Ray's workers have one of their own, as a worker node would,
and no NAS_DATA_ROOTS of the server's. An uploaded dataset reaches them through Ray's object store
and lands in their node cache; one registered by path they read themselves under their own roots,
refusing a file changed since it was registered.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from nas.data.ingest import IngestLimits, IngestOptions, ingest, store as keep
from nas.data.ingest.folder import DATA_FILE
from nas.data.node_cache import sha256_of
from nas.data.stored import read_meta, scoped_catalog
from nas.settings import Settings
from nas.specs import DatasetOptions, DatasetRecord, JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade
from nas.store.artifacts import dataset_folder
from nas.store.dataset_catalog import StoreDatasetCatalog
from nas.store.tables import utcnow
from workers.runner import JobRunner

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A local Ray whose workers have their own NAS_HOME and data root: ``(worker home, data root)``."""
    root = tmp_path_factory.mktemp("workers")
    env = {"NAS_HOME": str(root / "worker-home"), "NAS_DATA_ROOTS": str(root / "data")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # Ray's workers inherit the environment ray.init sees
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    (root / "data").mkdir()
    yield root / "worker-home", root / "data"
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "server-home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def _register(store: Store, settings: Settings, source: Path, fmt: str, by_path: bool, **options: object) -> DatasetRecord:
    """Store a dataset as the API does: its folder (no arrays for a path dataset), then its row."""
    read_as = IngestOptions(format=fmt, **options)  # type: ignore[arg-type]
    ingested = ingest(source, read_as, IngestLimits.from_settings(settings))
    dataset_id = uuid.uuid4().hex
    folder = dataset_folder(settings.artifact_dir, dataset_id)
    fields = keep(ingested, folder)
    if by_path:
        (folder / DATA_FILE).unlink()
    record = DatasetRecord(
        id=dataset_id, name=source.name, owner="tester", format=fmt, source="path" if by_path else "upload",
        path=str(source) if by_path else None, input_shape=fields["input_shape"], num_classes=fields["num_classes"],
        class_names=fields["class_names"], class_counts=fields["class_counts"], n_train=fields["n_train"],
        n_test=fields["n_test"], size_bytes=source.stat().st_size, stored_bytes=fields["stored_bytes"],
        sha256=sha256_of(source), test_given=ingested.test_given, summary=fields["summary"], created_at=utcnow(),
        options=DatasetOptions(**{k: v for k, v in dataclasses.asdict(read_as).items() if k != "format"}),
    )  # fmt: skip
    kept, _ = store.create_dataset(record, f"test-{dataset_id}")
    return kept


def _run(store: Store, settings: Settings, dataset_id: str, **budget: object) -> str:
    spec = {
        "search_space": {"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [64]}},
        "dataset": {"name": "upload", "params": {"id": dataset_id}},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.5}},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "budget": {"max_trials": 2, "max_concurrent": 2, **budget},
    }  # fmt: skip
    with scoped_catalog(StoreDatasetCatalog(store, "tester")):  # as the API checks it for its owner
        job = store.create_job(JobSpec.model_validate(spec), "tester")
    assert store.claim_job("test-runner", 60) == job.id
    JobRunner(store, settings, job.id, "test-runner").run()
    return job.id


def _dataset_holders() -> list[str]:
    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if "nas-dataset" in actor["name"]]


def test_an_uploaded_dataset_reaches_the_workers_through_ray(
    worker_env: tuple[Path, Path], store: Store, settings: Settings, tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    worker_home, _ = worker_env
    digits = load_digits()
    upload = tmp_path / "digits.npz"
    np.savez(upload, x=digits.images.astype(np.float32), y=digits.target)
    record = _register(store, settings, upload, "npz", by_path=False)

    job_id = _run(store, settings, record.id)
    assert store.get_job(job_id).status is JobStatus.succeeded, store.get_job(job_id).error
    trials, _ = store.list_trials(job_id)
    assert [t.state for t in trials] == [TrialState.complete] * 2
    assert all(t.metrics["accuracy"] > 0.6 for t in trials), [t.metrics["accuracy"] for t in trials]  # chance: 0.1

    # The trials read the node's copy, which came through Ray: the server's file, byte for byte.
    cached = worker_home / "cache" / "datasets" / f"{record.id}.npz"
    assert cached.read_bytes() == (dataset_folder(settings.artifact_dir, record.id) / DATA_FILE).read_bytes()
    assert not (settings.home / "cache").exists()
    # The job's hold on the bytes in the object store ended with it.
    for _ in range(100):
        if not _dataset_holders():
            break
        time.sleep(0.1)
    assert _dataset_holders() == []


def _write_wine(path: Path) -> None:
    from sklearn.datasets import load_wine

    wine = load_wine()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*wine.feature_names, "cultivar"])
        writer.writerows([*row, f"c{label}"] for row, label in zip(wine.data.tolist(), wine.target.tolist()))


def test_a_dataset_registered_by_path_is_read_by_the_workers_under_their_own_roots(
    worker_env: tuple[Path, Path], store: Store, settings: Settings
) -> None:
    worker_home, data_root = worker_env
    source = data_root / f"wine-{uuid.uuid4().hex[:6]}.csv"
    _write_wine(source)
    record = _register(store, settings, source, "csv", by_path=True, label_column="cultivar")
    assert not (dataset_folder(settings.artifact_dir, record.id) / DATA_FILE).exists()

    job_id = _run(store, settings, record.id, max_trials=1)
    assert store.get_job(job_id).status is JobStatus.succeeded, store.get_job(job_id).error
    (trial,) = store.list_trials(job_id)[0]
    assert trial.metrics["accuracy"] > 0.6, trial.metrics["accuracy"]  # chance: 0.4
    cached = worker_home / "cache" / "datasets" / f"{record.id}.npz"
    assert read_meta(cached) == {"source_sha256": record.sha256}


def test_a_path_dataset_whose_file_changed_fails_its_trials_saying_so(
    worker_env: tuple[Path, Path], store: Store, settings: Settings
) -> None:
    _, data_root = worker_env
    source = data_root / f"wine-{uuid.uuid4().hex[:6]}.csv"
    _write_wine(source)
    record = _register(store, settings, source, "csv", by_path=True, label_column="cultivar")
    with source.open("a") as handle:
        handle.write("1,2,3,4,5,6,7,8,9,10,11,12,13,c0\n")

    job_id = _run(store, settings, record.id, max_trials=1, max_retries=0)
    job = store.get_job(job_id)
    assert job.status is JobStatus.failed
    (trial,) = store.list_trials(job_id)[0]
    assert trial.state is TrialState.failed
    assert f"dataset {record.id}: {source} is not the file registered" in trial.error
    assert "register it again" in trial.error
