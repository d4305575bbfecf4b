"""State that survives a cluster: what the workers learn reaches the service, not a worker's disk.

A Ray head that runs no trials (no CPUs) and a worker node whose processes have a NAS_HOME of
their own; ``nas serve --ray-address`` runs a random search and a lottery-ticket chain (whose
second round starts from its parent's model, which the dispatcher reads and ships) there.
Afterwards every trial's latency observation is in the server's database, the predictor the
service resolves (the dispatcher's and the API's) has refitted its correction on them, the
worker's NAS_HOME holds no observation or correction, and every model downloads through the API.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from nas.client import Client
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess
from tests.test_cluster import RayCluster
from tests.test_e2e_server import server_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray

MLP = {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [32, 64, 128]}}
COMMON = {
    "search_space": MLP, "dataset": {"name": "digits"}, "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.003}, "seed": 5,
}  # fmt: skip
RANDOM = {"name": "cluster-random", "strategy": {"name": "random"}, "budget": {"max_trials": 3, "max_concurrent": 2},
          **COMMON}  # fmt: skip
LOTTERY = {
    "name": "cluster-lottery", "budget": {"max_trials": 2, "max_concurrent": 1},
    "strategy": {"name": "lottery_ticket", "params": {"n_chains": 1, "rounds": 1, "rate": 0.5, "rewind_step": 2}},
    **COMMON,
}  # fmt: skip
# A plain stack for POST /latency/predict: what the API's predictor says before and after the jobs.
STACK = {"input_shape": [1, 8, 8], "layers": [
    {"type": "flatten"}, {"type": "linear", "out_features": 64, "density": 0.2}, {"type": "relu"},
    {"type": "linear", "out_features": 10},
]}  # fmt: skip


def _remote_environment(cluster: RayCluster) -> dict[str, str]:
    """``NAS_HOME`` and node id as a one-CPU task sees them (from a driver with a NAS_HOME of its own)."""
    probe = (
        "import json, os, ray\n"
        f"ray.init(address={cluster.address!r}, log_to_driver=False)\n"
        "@ray.remote(num_cpus=1)\n"
        "def where():\n"
        "    return {'home': os.environ.get('NAS_HOME'), 'node': ray.get_runtime_context().get_node_id()}\n"
        "print(json.dumps(ray.get(where.remote())))\n"
    )
    env = {**cluster.env, "NAS_HOME": str(cluster.root / "driver-home")}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def split_cluster(data_dir: Path) -> Iterator[tuple[RayCluster, Path]]:
    """A head without CPUs and one worker node (two CPUs) whose processes get their own NAS_HOME."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"nas-ray-{secrets.token_hex(4)}"  # Ray's socket paths are short
    root.mkdir()
    worker_home = root / "worker-home"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "NAS_DATA_DIR": str(data_dir)}  # fmt: skip
    cluster = RayCluster(root, env)
    try:
        cluster.start_node("--head", f"--port={cluster.port}", "--include-dashboard=false", num_cpus=0)
        cluster.wait_for_nodes(1)
        cluster.start_node(f"--address={cluster.address}", num_cpus=2, env={"NAS_HOME": str(worker_home)})
        cluster.wait_for_nodes(2)
        yield cluster, worker_home
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_workers_observations_and_models_reach_the_service(
    server_factory: Callable[..., ServerProcess],
    split_cluster: tuple[RayCluster, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nas.latency.api import resolve
    from nas.latency.store import use_observations
    from nas.store import Store, make_engine
    from nas.store.observations import StoreObservations
    from nas.training import load_trained_model

    cluster, worker_home = split_cluster
    worker = _remote_environment(cluster)
    assert worker["home"] == str(worker_home)  # trials will run where NAS_HOME is not the server's

    database_url = f"sqlite:///{tmp_path / 'service.db'}"
    server = server_factory(NAS_DATABASE_URL=database_url,
                            **{k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # fmt: skip
    key = server.create_key("grace")
    server.start("--ray-address", cluster.address)
    store = Store(make_engine(database_url))
    # The service's view of the predictor, as its dispatcher resolves it: its NAS_HOME, its database.
    monkeypatch.setenv("NAS_HOME", str(server.home))
    use_observations(StoreObservations(store))
    before = resolve("cpu")
    assert before["correction"].to_json() == before["predictor"].correction.to_json()  # nothing observed yet
    headers = {"Authorization": f"Bearer {key}"}
    api_before = httpx.post(f"{server.url}/api/v1/latency/predict", json=STACK, headers=headers, timeout=60)
    assert api_before.status_code == 200, api_before.text

    with Client(server.url, key) as client:
        jobs = [client.submit(RANDOM), client.submit(LOTTERY)]
        for job in jobs:
            final = client.wait(job.id, progress=False, poll_s=1, timeout=600)
            assert final.status is JobStatus.succeeded, (final.error, server.log()[-3000:])
        trials = {job.id: list(client.trials(job.id)) for job in jobs}

        complete = [t for job_trials in trials.values() for t in job_trials]
        assert len(complete) == 5 and all(t.state is TrialState.complete for t in complete)
        assert {t.node_id for t in complete} == {worker["node"]}  # every trial ran on the worker node
        round_0, round_1 = trials[jobs[1].id]
        assert round_1.parent_id == round_0.id  # trained from its parent's model, shipped by the dispatcher

        # Every model, trained on the worker, downloads through the API as the artifact the server stored.
        for trial in complete:
            path = client.download_model(trial.id, tmp_path / f"{trial.id}.safetensors")
            stored = server.home / "artifacts" / trial.job_id / f"{trial.id}.safetensors"
            assert path.read_bytes() == stored.read_bytes()
            load_trained_model(path.read_bytes())

    # One observation per trial, in the database, naming its job and trial.
    observed = store.latency_observations()
    assert sorted((o.job_id, o.trial_id) for o in observed) == sorted((t.job_id, t.id) for t in complete)
    by_trial = {o.trial_id: o.record for o in observed}
    for trial in complete:
        assert by_trial[trial.id]["measured_ms"] == pytest.approx(trial.metrics["latency_ms"])
        assert by_trial[trial.id]["predictor_id"] == before["predictor"].id
    # The worker kept none of it.
    assert not (worker_home / "latency" / "observations").exists()
    assert not (worker_home / "latency" / "corrections").exists()

    # The predictor the service resolves has absorbed them: the dispatcher's view and the API's.
    after = resolve("cpu")
    assert after["predictor"].id == before["predictor"].id
    assert after["correction"].to_json() != before["correction"].to_json()
    api_after = httpx.post(f"{server.url}/api/v1/latency/predict", json=STACK, headers=headers, timeout=60)
    assert api_after.status_code == 200, api_after.text
    assert api_after.json()["sum_ms"] == pytest.approx(api_before.json()["sum_ms"])
    assert api_after.json()["latency_ms"] != pytest.approx(api_before.json()["latency_ms"], rel=1e-9)
