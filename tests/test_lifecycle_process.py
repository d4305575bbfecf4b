"""Clean starts and stops of the real ``nas serve``: its own local Ray, readiness, no leftovers.

Each server gets a Ray temp folder of its own (``RAY_TMPDIR``), so these tests neither see nor
disturb other Ray instances on the machine, and every process of the server's Ray can be found
by that folder in its environment even after it has been re-parented.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from nas.client import Client
from nas.specs import JobStatus
from benchmarks.server_process import ServerProcess, free_port
from tests.test_e2e_server import server_factory, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray

# The bound: after SIGTERM, nothing of the server or its Ray is alive past this.
STOP_BOUND_S = 15.0


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A short private folder: Ray's socket paths under it must stay within the 107-byte limit."""
    path = Path(tempfile.mkdtemp(prefix="nasray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ray_processes(ray_tmpdir: Path) -> list[psutil.Process]:
    """Processes started with our private Ray temp folder in their environment: the server's Ray."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_TMPDIR") == str(ray_tmpdir) and _alive(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _names(processes: list[psutil.Process]) -> set[str]:
    names = set()
    for proc in processes:
        try:
            names.add(" ".join(proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return names


def _readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/readyz", timeout=60)


def _ready_status(server: ServerProcess) -> int | None:
    """The readiness status code, or None while the server is too busy to answer."""
    try:
        return _readyz(server).status_code
    except httpx.TransportError:
        return None


def _dispatcher(server: ServerProcess) -> psutil.Process:
    assert server.process is not None
    (child,) = [
        p for p in psutil.Process(server.process.pid).children() if "workers.dispatch_process" in " ".join(p.cmdline())
    ]
    return child


def _start_ready(server: ServerProcess, *args: str) -> None:
    server.start(*args)
    wait_for(lambda: _ready_status(server) == 200, 240, "readiness")
    assert _readyz(server).json() == {"ready": True, "database": True, "dispatcher": True, "ray": True}


def test_beside_a_dead_ray_heads_address_file_the_demo_runs_and_sigterm_leaves_nothing(
    server_factory: Callable[..., ServerProcess], ray_tmpdir: Path
) -> None:
    # A Ray head that died without cleaning up leaves its address behind; nothing listens there.
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}\n")
    server = server_factory(RAY_TMPDIR=str(ray_tmpdir))
    _start_ready(server, "--demo")
    found = re.search(r"demo job (\w+) submitted.*NAS_API_KEY=(\S+)", server.log(), re.DOTALL)
    assert found, server.log()[-3000:]
    job_id, key = found.groups()
    with Client(server.url, key) as client:
        job = client.wait(job_id, progress=False, poll_s=1, timeout=600)
    assert job.status is JobStatus.succeeded, job.error

    assert server.process is not None
    tree = psutil.Process(server.process.pid).children(recursive=True)
    ray = _ray_processes(ray_tmpdir)
    everything = {p.pid: p for p in [*tree, *ray]}.values()
    seen = _names(list(everything))
    for part in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "workers.dispatch_process"):
        assert any(part in name for name in seen), (part, seen)
    # No Ray dashboard unless asked for: its head runs without its web front end.
    assert all("--disable-frontend" in name for name in seen if "dashboard/dashboard.py" in name), seen

    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_BOUND_S
    assert server.process.wait(STOP_BOUND_S) == 0, server.log()[-3000:]
    while time.monotonic() < deadline and (any(_alive(p) for p in everything) or _ray_processes(ray_tmpdir)):
        time.sleep(0.2)
    left = [p for p in everything if _alive(p)] + _ray_processes(ray_tmpdir)
    assert not left, _names(left)
    assert "dispatcher stopped" in server.log()


def test_readiness_is_false_while_the_dispatcher_is_down(
    server_factory: Callable[..., ServerProcess], ray_tmpdir: Path
) -> None:
    server = server_factory(RAY_TMPDIR=str(ray_tmpdir))
    _start_ready(server)
    _dispatcher(server).send_signal(signal.SIGKILL)
    wait_for(lambda: _ready_status(server) == 503, 60, "readiness to turn false")
    assert _readyz(server).json() == {"ready": False, "database": True, "dispatcher": False, "ray": False}
    assert httpx.get(f"{server.url}/api/v1/healthz", timeout=60).status_code == 200  # alive, just not ready
    wait_for(lambda: "the dispatcher exited" in server.log(), 30, "the server to log its dispatcher's end")

    # What the killed dispatcher's Ray left behind goes with the server.
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(STOP_BOUND_S) == 0
    wait_for(lambda: not _ray_processes(ray_tmpdir), STOP_BOUND_S, "the dead dispatcher's Ray processes to end")


def test_readiness_is_false_while_ray_is_down(
    server_factory: Callable[..., ServerProcess], ray_tmpdir: Path
) -> None:
    server = server_factory(RAY_TMPDIR=str(ray_tmpdir))
    _start_ready(server)
    (gcs,) = [p for p in _ray_processes(ray_tmpdir) if "gcs_server" in " ".join(p.cmdline())]
    gcs.send_signal(signal.SIGKILL)
    wait_for(lambda: _ready_status(server) == 503, 60, "readiness to turn false")
    answer = _readyz(server).json()
    assert answer["ready"] is False and answer["ray"] is False, answer

    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(120) == 0
    wait_for(lambda: not _ray_processes(ray_tmpdir), STOP_BOUND_S, "the Ray processes to end")


def test_with_no_dispatcher_of_its_own_readiness_follows_the_database(
    server_factory: Callable[..., ServerProcess], ray_tmpdir: Path
) -> None:
    """``--max-jobs 0`` runs only the API: it is ready while any dispatcher serves its database."""
    api_only = server_factory(RAY_TMPDIR=str(ray_tmpdir))
    api_only.start("--max-jobs", "0")
    assert _readyz(api_only).status_code == 503
    ray_heads = [name for name in _names(_ray_processes(ray_tmpdir)) if "gcs_server" in name or "raylet" in name]
    assert not ray_heads  # an API-only server starts no Ray
    full = server_factory(RAY_TMPDIR=str(ray_tmpdir), NAS_DATABASE_URL=f"sqlite:///{api_only.home / 'nas.db'}")
    _start_ready(full)
    assert _readyz(api_only).json() == {"ready": True, "database": True, "dispatcher": True, "ray": True}
    full.stop()
    wait_for(lambda: _ready_status(api_only) == 503, 30, "readiness to turn false")
