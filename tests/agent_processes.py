"""Real ``nas serve`` and ``nas agent`` processes for the agent tests: the server on a fresh
database, agents each in their own folder, and the waits and lookups the tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from nas.settings import Settings
from nas.store import Store, make_engine
from nas.store.artifacts import save_measurement_model
from nas.store.measurements import TaskRecord
from benchmarks.server_process import ServerProcess


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NAS_URL", "NAS_API_KEY", "NAS_AGENT_HOME")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def wait_for(condition: Any, timeout: float, describe_state: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {describe_state()}")
        time.sleep(0.2)


@contextmanager
def start_server(tmp_path: Path, database_url: str, *args: str, data_dir: Path | None = None) -> Iterator[
    tuple[ServerProcess, Store]
]:
    """``nas serve`` (with ``args``) on ``database_url`` in ``tmp_path/server``, and a store over the same database."""
    home = tmp_path / "server"
    home.mkdir()
    env = {"NAS_DATABASE_URL": database_url, **({"NAS_DATA_DIR": str(data_dir)} if data_dir is not None else {})}
    server = ServerProcess(home, env)
    server.start(*args)
    engine = make_engine(database_url)
    try:
        yield server, Store(engine)
    finally:
        server.stop()
        engine.dispose()


def agent_key(server: ServerProcess, owner: str) -> str:
    """An agent key minted as a user does, with ``nas keys create OWNER --agent``."""
    created = server.cli("keys", "create", owner, "--agent")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


class AgentProcess:
    """``nas agent`` as a device runs it: its own folder, the key in NAS_API_KEY, stderr kept in ``home/agent.log``."""

    def __init__(self, home: Path, url: str, key: str, target: str, *args: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.log_path = home / "agent.log"
        with open(self.log_path, "ab") as stderr:
            self.process = subprocess.Popen(
                ["nas", "agent", "--url", url, "--target", target, "--home", str(home), *args],
                env=agent_env(NAS_API_KEY=key), stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip

    @property
    def name(self) -> str:
        return str(json.loads((self.home / "agent.json").read_text())["name"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would: nothing is reported."""
        self.process.kill()
        self.process.wait(30)


def queue_task(server: ServerProcess, store: Store, owner: str, target: str, runtime: str, model: bytes,
               input_shape: tuple[int, ...]) -> str:  # fmt: skip
    """Queue a measurement task for ``target``'s agents as the service does (its ONNX file kept under
    the server's artifacts); its id."""
    task_id = uuid.uuid4().hex
    path = save_measurement_model(Settings(home=server.home).artifact_dir, task_id, model)
    target_id = store.measurements.target(owner, target).id
    store.measurements.create_task(target_id, "calibration", runtime, input_shape, path, min_run_time=0.05,
                                   task_id=task_id)  # fmt: skip
    return task_id


def finished(store: Store, task_id: str, timeout: float = 120.0) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while not (task := store.measurements.task(task_id)).finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {task.state} after {timeout} s")
        time.sleep(0.2)
    return task


def agents_of(server: ServerProcess, user_key: str, target: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/targets/{target}", headers={"Authorization": f"Bearer {user_key}"})
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json()["agents"])
