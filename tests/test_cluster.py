"""A real two-node Ray cluster on this machine: `ray start --head`, a second `ray start
--address=...`, and `nas serve --ray-address` running a job whose trials land on both nodes.

The cluster gets its own ``--temp-dir`` and is torn down by the PIDs this test started (never
``ray stop``, which would also stop other sessions' Ray). Ray 2.60 turns token authentication on
when it finds a token, so the nodes and the server share one fresh ``RAY_AUTH_TOKEN``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from nas.client import Client
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess, free_port
from tests.test_e2e_server import digits_spec, server_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray


class RayCluster:
    """Ray nodes started with ``ray start --block`` so that each node's processes are its children."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = env
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start_node(self, *args: str, num_cpus: int = 1, env: dict[str, str] | None = None) -> None:
        """A node with ``num_cpus`` CPUs; ``env`` adds to the environment its processes (workers) get."""
        log = open(self.root / f"node-{len(self.nodes)}.log", "wb")
        cmd = ["ray", "start", "--block", f"--num-cpus={num_cpus}", f"--temp-dir={self.root / 'ray'}", *args]
        node_env = {**self.env, **(env or {})}
        self.nodes.append(subprocess.Popen(cmd, env=node_env, stdout=log, stderr=subprocess.STDOUT))

    def wait_for_nodes(self, n: int, timeout: float = 240) -> None:
        """Wait until the head counts ``n`` alive nodes, asked by a driver in a separate process."""
        probe = (
            "import sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            f"while sum(node['Alive'] for node in ray.nodes()) < {n}:\n"
            "    time.sleep(0.5)\n"
        )
        result = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]

    def stop(self) -> None:
        procs: list[psutil.Process] = []
        for node in self.nodes:
            try:
                procs += [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for node in reversed(self.nodes):
            node.terminate()
        _, alive = psutil.wait_procs(procs, timeout=30)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def ray_cluster(tmp_path: Path, data_dir: Path) -> Iterator[RayCluster]:
    # A short root: Ray's socket paths must fit in 107 bytes.
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"nas-ray-{secrets.token_hex(4)}"
    root.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "NAS_DATA_DIR": str(data_dir)}
    cluster = RayCluster(root, env)
    try:
        cluster.start_node("--head", f"--port={cluster.port}", "--include-dashboard=false")
        cluster.wait_for_nodes(1)
        cluster.start_node(f"--address={cluster.address}")
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_job_runs_its_trials_on_both_nodes_of_a_ray_cluster(
    server_factory: Callable[..., ServerProcess], ray_cluster: RayCluster
) -> None:
    env = {k: ray_cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    server = server_factory(**env)
    key = server.create_key("frank")
    server.start("--ray-address", ray_cluster.address)
    n_trials = 4
    with Client(server.url, key) as client:
        # Two trials of one CPU each at once on two one-CPU nodes: each node runs one.
        job = client.submit(digits_spec(name="cluster", training={"epochs": 4, "batch_size": 32, "lr": 0.003},
                                        budget={"max_trials": n_trials, "max_concurrent": 2}))
        final = client.wait(job.id, progress=False, poll_s=1, timeout=600)
        assert final.status is JobStatus.succeeded, final.error
        trials = list(client.trials(job.id))
    assert [t.number for t in trials] == list(range(n_trials))
    assert all(t.state is TrialState.complete for t in trials)
    assert len({t.node_id for t in trials}) == 2, [t.node_id for t in trials]
