"""The measurement agent (``nas agent``): what it says of this device, how it times a task's model
under each runtime, that a model it cannot time is that task's error, and, against the real
``nas serve`` on PostgreSQL, an agent process that registers, measures, reports an error, survives
a server restart and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch
from onnx import helper
from torch import nn

from nas.agent.hardware import RuntimeUnavailable, describe, offered_runtimes
from nas.agent.loop import agent_name
from nas.agent.measure import task_result
from nas.net import free_port
from nas.store import Store
from tests.model_files import cnn, graph_model, onnx_bytes
from tests.agent_processes import AgentProcess, agent_env, agents_of, finished, queue_task, start_server, wait_for
from benchmarks.server_process import ServerProcess

PROTOCOL_STATS = {"p10_ms", "median_ms", "iqr_ms", "p25_ms", "p75_ms", "p90_ms", "min_ms", "runs", "rounds", "noisy"}
CUDA = torch.cuda.is_available()


def task(runtime: str, input_shape: tuple[int, ...] = (1, 8, 8), **changes: Any) -> dict[str, Any]:
    """A task as ``POST /agents/{id}/lease`` hands it out."""
    return {
        "id": "t1", "lease_id": "l1", "lease_s": 30.0, "runtime": runtime, "format": "onnx",
        "input_shape": list(input_shape), "batch_size": 2, "num_threads": 1, "min_run_time": 0.05, "rounds": 3,
        "model_url": "/api/v1/agents/a1/tasks/t1/model", **changes,
    }  # fmt: skip


def sparse_mlp() -> nn.Module:
    """A 256-256-10 MLP whose hidden layer keeps 5% of its weights: a layer that may run as CSR."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        model[3].weight.mul_((torch.rand_like(model[3].weight) < 0.05).float())
    return model


# -- this device ----------------------------------------------------------------------------------


def test_the_hardware_description_names_this_machine() -> None:
    hardware = describe(offered_runtimes())
    assert set(hardware) == {"cpu", "cores", "memory_gb", "os", "machine", "python", "accelerator"}
    assert hardware["cpu"] and hardware["cores"] == os.cpu_count()
    assert hardware["memory_gb"] > 0
    assert hardware["os"].startswith(platform.system())
    assert (hardware["machine"], hardware["python"]) == (platform.machine(), platform.python_version())
    assert hardware["accelerator"] == (torch.cuda.get_device_name(0) if CUDA else None)
    json.dumps(hardware)  # registered as JSON


def test_the_runtimes_offered_are_those_installed_and_asked_for() -> None:
    offered = {r["name"]: r for r in offered_runtimes()}
    assert offered["onnxruntime"] == {"name": "onnxruntime", "version": onnxruntime.__version__, "device": "cpu"}
    assert offered["torch"] == {"name": "torch", "version": torch.__version__, "device": "cpu"}
    assert ("torch-cuda" in offered) == CUDA
    has_ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert ("onnxruntime-cuda" in offered) == has_ort_cuda
    assert [r["name"] for r in offered_runtimes(["onnxruntime", "torch", "onnxruntime"])] == ["onnxruntime", "torch"]
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tensorrt'; runtimes: torch, onnxruntime"):
        offered_runtimes(["tensorrt"])
    if not CUDA:
        with pytest.raises(RuntimeUnavailable, match="'torch-cuda' is not available here; present: torch, onnxruntime"):
            offered_runtimes(["torch-cuda"])


def test_the_agent_name_is_kept_in_its_home(tmp_path: Path) -> None:
    first = agent_name(tmp_path / "home")
    assert re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{4}", first)
    assert agent_name(tmp_path / "home") == first  # a restart registers as the same agent
    assert agent_name(tmp_path / "other") != first
    assert agent_name(tmp_path / "home", "pi-1") == "pi-1"
    assert agent_name(tmp_path / "home") == "pi-1"
    assert oct((tmp_path / "home").stat().st_mode & 0o777) == oct(0o700)


def test_an_onnxruntime_agent_runs_without_torch(tmp_path: Path) -> None:
    """``pip install "sparse-nas[agent]"`` has no torch or onnx: the agent offers onnxruntime and times with it."""
    model = tmp_path / "cnn.onnx"
    model.write_bytes(onnx_bytes(cnn()))
    code = f"""
import json, sys
sys.modules["torch"] = sys.modules["onnx"] = None  # as on a device where neither is installed
import nas.cli, nas.agent.loop
from nas.agent.hardware import describe, offered_runtimes
from nas.agent.measure import task_result
runtimes = offered_runtimes()
result = task_result(open({str(model)!r}, "rb").read(), {json.dumps(task("onnxruntime"))}, runtimes)
print(json.dumps({{"runtimes": runtimes, "hardware": describe(runtimes), "result": result,
                  "torch": sorted(m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["name"] for r in out["runtimes"]] == ["onnxruntime"]
    assert out["torch"] == []
    assert PROTOCOL_STATS <= set(out["result"]["stats"]), out["result"]


# -- timing a task --------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_task_is_timed_with_the_protocol_under_its_runtime(runtime: str) -> None:
    offered = offered_runtimes()
    result = task_result(onnx_bytes(cnn()), task(runtime), offered)
    assert set(result) == {"stats", "runtime"}, result
    stats = result["stats"]
    assert PROTOCOL_STATS <= set(stats)
    assert stats["p10_ms"] > 0 and stats["median_ms"] > 0 and stats["iqr_ms"] >= 0
    assert stats["rounds"] == 3 and stats["runs"] >= 30  # at least ten calls a round
    assert (stats["batch_size"], stats["num_threads"]) == (2, 1)
    assert result["runtime"] == next(r for r in offered if r["name"] == runtime)
    json.dumps(result)  # put as JSON
    if runtime == "torch":
        assert stats["layers"] == 3  # the inference model chose a kernel for each Conv2d and Linear
        assert 0 <= stats["csr_layers"] <= stats["layers"]


def test_the_torch_runtime_chooses_kernels_for_a_sparse_model() -> None:
    """``to_inference`` times the sparse layer dense and as CSR on this machine and keeps the faster."""
    result = task_result(onnx_bytes(sparse_mlp(), (1, 8, 8)), task("torch", batch_size=1), offered_runtimes())
    assert result["stats"]["layers"] == 3, result
    assert result["stats"]["csr_layers"] in (0, 1)  # which one wins is this machine's to say


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_model_that_cannot_be_timed_is_the_tasks_error(runtime: str) -> None:
    offered = offered_runtimes()
    garbage = task_result(b"\x08\x07 not a model", task(runtime), offered)
    assert set(garbage) == {"error"}
    expected = "ModelRejected: not an ONNX model" if runtime == "torch" else "INVALID_PROTOBUF"
    assert expected in garbage["error"]
    shape = task_result(onnx_bytes(cnn()), task(runtime, input_shape=(3, 5, 5)), offered)  # the wrong input
    assert set(shape) == {"error"} and shape["error"]


def test_an_operator_the_converter_refuses_is_an_error_under_torch_only() -> None:
    """The converter builds modules from a closed set of operators: ``Sin`` is refused by name under
    ``torch``, while onnxruntime runs the model."""
    model = graph_model([helper.make_node("Sin", ["x"], ["y"])]).SerializeToString()
    offered = offered_runtimes()
    refused = task_result(model, task("torch", input_shape=(4,)), offered)
    assert "Sin" in refused["error"] and "stats" not in refused
    assert "stats" in task_result(model, task("onnxruntime", input_shape=(4,)), offered)


def test_a_task_in_a_runtime_or_format_the_agent_does_not_offer_is_an_error() -> None:
    only_ort = offered_runtimes(["onnxruntime"])
    wrong_runtime = task_result(onnx_bytes(cnn()), task("torch"), only_ort)
    assert wrong_runtime == {"error": "ValueError: runtime 'torch' is not offered by this agent (it offers onnxruntime)"}
    wrong_format = task_result(onnx_bytes(cnn()), task("onnxruntime", format="safetensors"), only_ort)
    assert "format 'safetensors' is not supported" in wrong_format["error"]


# -- the command ----------------------------------------------------------------------------------


def test_the_command_refuses_a_runtime_not_present_and_a_missing_key(tmp_path: Path) -> None:
    args = ["nas", "agent", "--target", "lab", "--home", str(tmp_path)]
    unknown = subprocess.run([*args, "--key", "k", "--runtime", "onnxruntime,tensorrt"], env=agent_env(),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert unknown.returncode == 2 and "unknown runtime 'tensorrt'" in unknown.stderr
    keyless = subprocess.run(args, env=agent_env(), capture_output=True, text=True, timeout=120)
    assert keyless.returncode == 2 and "nas keys create NAME --agent" in keyless.stderr


def test_the_agent_waits_for_an_unreachable_server_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    log = tmp_path / "agent.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            ["nas", "agent", "--url", url, "--key", "k", "--target", "lab", "--home", str(tmp_path / "home"),
             "--runtime", "onnxruntime"],
            env=agent_env(), stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            wait_for(lambda: log.read_text().count("server unreachable") >= 2, 60, lambda: log.read_text())
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert "POST /api/v1/agents: server unreachable (ConnectError" in text
    assert "SIGTERM: stopping" in text


# -- against the real server ----------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path, empty_database_url: str) -> Iterator[tuple[ServerProcess, Store]]:
    """``nas serve`` on a fresh database, without a job dispatcher (tasks are queued here), and the
    store over the same database."""
    with start_server(tmp_path, empty_database_url, "--max-jobs", "0") as served:
        yield served


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_an_agent_process_measures_for_a_live_server(
    live_server: tuple[ServerProcess, Store], tmp_path: Path, backend: str
) -> None:
    server, store = live_server
    agent_key = server.cli("keys", "create", "alice", "--agent").stdout.strip().splitlines()[-1]
    user_key = server.create_key("alice")
    agent = AgentProcess(tmp_path / "agent", server.url, agent_key, "lab", "--runtime", "onnxruntime,torch", "--poll", "1")
    try:
        wait_for(lambda: agents_of(server, user_key, "lab"), 120, agent.log)
        (registered,) = agents_of(server, user_key, "lab")
        assert registered["name"] == agent.name and registered["online"]
        assert registered["hardware"] == describe(offered_runtimes())
        assert [r["name"] for r in registered["runtimes"]] == ["onnxruntime", "torch"]

        measured = finished(store, queue_task(server, store, "alice", "lab", "onnxruntime", onnx_bytes(cnn()), (1, 8, 8)))
        assert measured.state == "done" and measured.attempts == 1, measured.error
        assert measured.result is not None
        assert PROTOCOL_STATS <= set(measured.result["stats"])
        assert measured.result["runtime"]["name"] == "onnxruntime"
        assert (measured.result["agent"], measured.result["agent_id"]) == (agent.name, registered["id"])

        bad = finished(store, queue_task(server, store, "alice", "lab", "torch", b"not onnx", (1, 8, 8)))
        assert bad.state == "failed" and "ModelRejected: not an ONNX model" in (bad.error or "")

        server.stop()  # a restart: the agent keeps trying, then carries on with the same agent id
        wait_for(lambda: "server unreachable" in agent.log(), 60, agent.log)
        server.start("--max-jobs", "0")
        after = finished(store, queue_task(server, store, "alice", "lab", "torch", onnx_bytes(cnn()), (1, 8, 8)))
        assert after.state == "done" and after.result is not None, after.error
        assert (after.result["agent_id"], after.result["runtime"]["name"]) == (registered["id"], "torch")
        assert after.result["stats"]["layers"] == 3
    finally:
        assert agent.stop() == 0, agent.log()
    log = agent.log()
    assert f"registered for target lab: onnxruntime {onnxruntime.__version__}, torch {torch.__version__}" in log
    for task_id in (measured.id, after.id):
        assert len(re.findall(rf"task {task_id} \S+: p10 [\d.e-]+ ms, median", log)) == 1, log
    assert f"task {bad.id} torch: error: ModelRejected" in log
    assert "SIGTERM: stopping" in log and "stopped after 3 measurement(s)" in log

    again = AgentProcess(tmp_path / "agent", server.url, agent_key, "lab", "--runtime", "onnxruntime")
    try:
        wait_for(lambda: again.log().count("registered for target lab") == 2, 60, again.log)
    finally:
        assert again.stop() == 0, again.log()
    (same,) = agents_of(server, user_key, "lab")  # the same name from the same home: the same agent
    assert (same["id"], same["measurements_done"]) == (registered["id"], 2)
    assert [r["name"] for r in same["runtimes"]] == ["onnxruntime"]


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_user_key_cannot_run_an_agent(tmp_path: Path, live_server: tuple[ServerProcess, Store], backend: str) -> None:
    server, _ = live_server
    user_key = server.create_key("alice")
    refused = subprocess.run(
        ["nas", "agent", "--url", server.url, "--target", "lab", "--home", str(tmp_path / "agent"), "--runtime",
         "onnxruntime"], env=agent_env(NAS_API_KEY=user_key), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    assert "registering agent" in refused.stderr and "HTTP 403" in refused.stderr


@pytest.mark.install
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_agent_extra_installs_without_torch_and_measures(
    tmp_path: Path, live_server: tuple[ServerProcess, Store], backend: str
) -> None:
    """``pip install "sparse-nas[agent]"`` in a fresh environment: no torch, onnx or Ray, and its
    ``nas agent --once`` times a task under onnxruntime for the real server."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".whl", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    pip = subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", f"{source}[agent]"],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    listing = subprocess.run([env_dir / "bin" / "python", "-m", "pip", "list", "--format=json"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    packages = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    assert {"onnxruntime", "numpy", "httpx"} <= packages
    assert packages.isdisjoint({"torch", "onnx", "ray", "sqlalchemy", "fastapi"}), packages

    server, store = live_server
    agent_key = server.cli("keys", "create", "alice", "--agent").stdout.strip().splitlines()[-1]
    env = {"PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path),
           "NAS_API_KEY": agent_key, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log = tmp_path / "agent.log"
    with open(log, "wb") as stderr:
        agent = subprocess.Popen([env_dir / "bin" / "nas", "agent", "--url", server.url, "--target", "pi", "--once"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        try:
            wait_for(lambda: "registered for target pi" in log.read_text(), 120, log.read_text)
            assert f"registered for target pi: onnxruntime {onnxruntime.__version__}\n" in log.read_text()
            task_id = queue_task(server, store, "alice", "pi", "onnxruntime", onnx_bytes(cnn()), (1, 8, 8))
            assert agent.wait(120) == 0, log.read_text()
        finally:
            if agent.poll() is None:
                agent.kill()
    measured = store.measurements.task(task_id)
    assert measured.state == "done" and measured.result is not None, measured.error
    assert measured.result["runtime"] == {"name": "onnxruntime", "version": onnxruntime.__version__, "device": "cpu"}
    assert (tmp_path / ".nas-agent" / "agent.json").is_file()  # the default home, under HOME
