"""``nas hardware calibrate --target NAME --quick`` through a target's agents, end to end: ``nas
serve`` builds the calibration models, a real ``nas agent`` process times each under ONNX Runtime,
the predictor fitted from what it reported is stored as the target's first version, and ``GET
/targets`` shows its accuracy on held-out models beside their noise ceiling."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nas.latency.predictor import Predictor
from nas.store import Store
from tests.agent_processes import AgentProcess, agent_key, agents_of, start_server, wait_for
from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])


@pytest.fixture
def served(tmp_path: Path, empty_database_url: str) -> Iterator[tuple[ServerProcess, Store]]:
    with start_server(tmp_path, empty_database_url, "--max-jobs", "0") as served:
        yield served


def test_calibrate_quick_through_the_agents(served: tuple[ServerProcess, Store], tmp_path: Path, backend: str) -> None:
    server, store = served
    user_key = server.create_key("alice")
    agent = AgentProcess(tmp_path / "pi", server.url, agent_key(server, "alice"), "lab", "--name", "pi",
                         "--runtime", "onnxruntime", "--poll", "1")  # fmt: skip
    try:
        wait_for(lambda: agents_of(server, user_key, "lab"), 120, agent.log)
        no_agent = server.cli("hardware", "calibrate", "--target", "lab", "--runtime", "torch", api_key=user_key)
        assert no_agent.returncode != 0 and "no online agent of target 'lab' offers runtime torch" in no_agent.stderr
        done = server.cli("hardware", "calibrate", "--target", "lab", "--quick", api_key=user_key)
    finally:
        assert agent.stop() == 0, agent.log()
    assert done.returncode == 0, (done.stdout, done.stderr, server.log()[-3000:])
    assert "calibrated target lab (onnxruntime)" in done.stdout and "predictor version 1" in done.stdout
    assert "held-out models within ±10%" in done.stdout and "noise ceiling" in done.stdout
    assert "agents measured" in done.stderr  # progress as the agent works through the models

    target = httpx.get(f"{server.url}/api/v1/targets/lab", headers={"Authorization": f"Bearer {user_key}"}).json()
    predictor = target["predictor"]
    assert predictor["version"] == 1 and predictor["runtime"] == "onnxruntime" and predictor["models"] >= 10
    assert 0.0 <= predictor["within_10"] <= 1.0 and 0.0 < predictor["noise_ceiling_within_10"] <= 1.0
    assert predictor["spearman"] > 0.5  # held-out models ranked by the predictor much as the agent timed them
    assert predictor["error_p90"] > 0  # the band within which candidates are measured before training
    (pi,) = target["agents"]
    assert pi["name"] == "pi" and pi["measurements_done"] > predictor["models"]  # layers and models, all by the agent

    stored = store.measurements.predictor(store.measurements.target("alice", "lab").id, "onnxruntime")
    assert stored is not None and stored.version == 1
    fitted = Predictor.from_json(json.loads(stored.predictor))
    assert fitted.identity.target == "agent:lab" and fitted.identity.torch.startswith("onnxruntime-")
