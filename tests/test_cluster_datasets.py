"""Users' datasets on a cluster: the data reaches the worker node through Ray, never the server's disk.

A Ray head that runs no trials (no CPUs) and a worker node whose processes have their own NAS_HOME
and data root; ``nas serve --ray-address`` (its own NAS_HOME) takes an uploaded npz and a CSV
registered by path, and runs a job on each. Every trial runs on the worker node and learns well
above chance; the uploaded dataset's canonical file is in the worker's cache byte for byte, having
come through the object store; the path dataset the worker read itself from under its own root.
The server's NAS_HOME holds no cache.
"""

from __future__ import annotations

import csv
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from nas.client import Client
from nas.data.stored import read_meta
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess
from tests.test_cluster import RayCluster
from tests.test_cluster_state import _remote_environment
from tests.test_e2e_server import server_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray


@pytest.fixture
def worker_node(data_dir: Path) -> Iterator[tuple[RayCluster, Path, Path]]:
    """A head without CPUs and one worker node (two CPUs): ``(cluster, worker NAS_HOME, worker data root)``."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"nas-ray-{secrets.token_hex(4)}"  # Ray's socket paths are short
    root.mkdir()
    worker_home, data_root = root / "worker-home", root / "data"
    data_root.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "NAS_DATA_DIR": str(data_dir)}  # fmt: skip
    for inherited in ("NAS_HOME", "NAS_DATA_ROOTS"):
        env.pop(inherited, None)
    cluster = RayCluster(root, env)
    try:
        cluster.start_node("--head", f"--port={cluster.port}", "--include-dashboard=false", num_cpus=0)
        cluster.wait_for_nodes(1)
        cluster.start_node(f"--address={cluster.address}", num_cpus=2,
                           env={"NAS_HOME": str(worker_home), "NAS_DATA_ROOTS": str(data_root)})  # fmt: skip
        cluster.wait_for_nodes(2)
        yield cluster, worker_home, data_root
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _job(dataset_id: str) -> dict[str, object]:
    return {
        "name": f"on-{dataset_id[:8]}", "search_space": {"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [64]}},
        "dataset": {"name": "upload", "params": {"id": dataset_id}},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.5}},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.01}, "budget": {"max_trials": 2, "max_concurrent": 2},
    }  # fmt: skip


def test_a_job_on_users_data_runs_on_a_worker_that_has_none_of_the_servers_files(
    server_factory: Callable[..., ServerProcess],
    worker_node: tuple[RayCluster, Path, Path],
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_digits, load_wine

    cluster, worker_home, data_root = worker_node
    worker = _remote_environment(cluster)
    assert worker["home"] == str(worker_home)

    server = server_factory(NAS_DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}", NAS_DATA_ROOTS=str(data_root),
                            **{k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # fmt: skip
    key = server.create_key("grace")
    server.start("--ray-address", cluster.address)
    headers = {"Authorization": f"Bearer {key}"}

    digits = load_digits()
    upload = tmp_path / "digits.npz"
    np.savez(upload, x=digits.images.astype(np.float32), y=digits.target)
    with upload.open("rb") as handle:
        answer = httpx.post(f"{server.url}/api/v1/datasets", headers=headers, timeout=120,
                            files={"file": ("digits.npz", handle)}, data={"name": "digits"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    uploaded = answer.json()

    wine = load_wine()
    table = data_root / "wine.csv"  # on storage both machines mount at one path, here the same disk
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*wine.feature_names, "cultivar"])
        writer.writerows([*row, f"c{label}"] for row, label in zip(wine.data.tolist(), wine.target.tolist()))
    answer = httpx.post(f"{server.url}/api/v1/datasets", headers=headers, timeout=120,
                        files={"path": (None, str(table)), "label_column": (None, "cultivar")})  # fmt: skip
    assert answer.status_code == 201, answer.text
    by_path = answer.json()

    with Client(server.url, key) as client:
        jobs = [client.submit(_job(uploaded["id"])), client.submit(_job(by_path["id"]))]
        for job in jobs:
            final = client.wait(job.id, progress=False, poll_s=1, timeout=600)
            assert final.status is JobStatus.succeeded, (final.error, server.log()[-3000:])
        trials = [trial for job in jobs for trial in client.trials(job.id)]
    assert [t.state for t in trials] == [TrialState.complete] * 4
    assert {t.node_id for t in trials} == {worker["node"]}  # every trial ran on the worker node
    assert all(t.metrics["accuracy"] > 0.6 for t in trials), [t.metrics["accuracy"] for t in trials]  # chance 0.1, 0.4

    cache = worker_home / "cache" / "datasets"
    # The upload came through Ray's object store: the server's canonical file, byte for byte, in the worker's cache.
    canonical = server.home / "artifacts" / "datasets" / uploaded["id"] / "data.npz"
    assert (cache / f"{uploaded['id']}.npz").read_bytes() == canonical.read_bytes()
    # The path dataset the worker read under its own root: the server keeps no arrays of it.
    assert read_meta(cache / f"{by_path['id']}.npz") == {"source_sha256": by_path["sha256"]}
    assert not (server.home / "artifacts" / "datasets" / by_path["id"] / "data.npz").exists()
    assert not (server.home / "cache").exists()
