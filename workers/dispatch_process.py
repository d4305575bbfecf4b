"""``nas dispatch``: the job dispatcher as a process of its own.

``nas serve`` starts one beside the API, so that Ray Tune's experiment start-ups and result
handling never hold the API's interpreter lock, and a cluster can run API servers and
dispatchers on different machines against one database. SIGTERM drains: running jobs stop their
trials and go back to the queue, as leases would hand them over anyway; then the local Ray this
process started stops with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def dispatch(
    database_url: Annotated[
        Optional[str], typer.Option("--database-url", envvar="NAS_DATABASE_URL", help="SQLAlchemy URL")
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="existing Ray cluster")
    ] = None,
    max_jobs: Annotated[int, typer.Option(help="jobs this dispatcher runs at once")] = 2,
    ray_dashboard: Annotated[
        bool, typer.Option("--ray-dashboard", envvar="NAS_RAY_DASHBOARD", help="start the local Ray with its dashboard")
    ] = False,
    runner_id: Annotated[
        Optional[str], typer.Option(help="this dispatcher's name in job leases and heartbeats (default: host:pid:random)")
    ] = None,
    log_format: Annotated[
        Literal["auto", "json", "text"], typer.Option(envvar="NAS_LOG_FORMAT", help="json, text or auto")
    ] = "auto",
) -> None:
    """Run queued jobs on Ray until stopped (SIGTERM or Ctrl-C drain the running jobs and stop Ray)."""
    import ray

    from nas.logging_setup import configure_logging
    from nas.settings import Settings
    from nas.store import Store, make_engine, upgrade
    from workers.dispatcher import Dispatcher, connect_ray

    configure_logging(log_format)
    settings = Settings.from_env(database_url=database_url, ray_address=ray_address)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    connect_ray(settings, dashboard=ray_dashboard)
    stop = threading.Event()
    # After ray.init, whose own handler would exit at once with status 15.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    dispatcher = Dispatcher(Store(engine), settings, runner_id or new_runner_id(), max_jobs=max_jobs)
    dispatcher.start()
    log.info("dispatcher %s running at most %d jobs", dispatcher.runner_id, max_jobs)
    stop.wait()
    log.info("dispatcher draining")
    dispatcher.stop()
    # Stops the local Ray this process started, agents and workers included (or leaves the cluster).
    ray.shutdown()
    log.info("dispatcher stopped")
    exit_now(0)


def exit_now(status: int) -> None:
    """End the process once its work is done and its logs are flushed, without the interpreter's
    teardown: with torch and Ray loaded that takes seconds, and their native threads sometimes
    abort it (``terminate called without an active exception``)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def new_runner_id() -> str:
    """A dispatcher's name in job leases and heartbeats: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def spawn_child(max_jobs: int, runner_id: str, ray_dashboard: bool = False) -> subprocess.Popen[bytes]:
    """Start ``nas dispatch`` as a child that dies with its parent, even when the parent is
    killed with SIGKILL: an orphaned dispatcher would keep running jobs nobody serves."""
    command = [sys.executable, "-m", "workers.dispatch_process", "--max-jobs", str(max_jobs), "--runner-id", runner_id]
    if ray_dashboard:
        command.append("--ray-dashboard")
    return subprocess.Popen(command, preexec_fn=_die_with_parent, process_group=0)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def watch_child(child: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    """Log it when the dispatcher ends without being asked to: no job runs here until a restart,
    and readiness says so."""
    status = child.wait()
    if not stopping.is_set():
        log.error("the dispatcher exited with status %d; jobs wait until nas serve is restarted", status)


def stop_child(child: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """SIGTERM (a drain, then Ray's own shutdown), SIGKILL if it has not ended within ``timeout``
    seconds; then whatever the child started and left behind is ended too.

    The child leads a process group of its own, which Ray's processes join (workers excepted:
    they lead their own groups, and are listed beforehand); so a Ray process that outlived its
    parent, re-parented to init, is still found.
    """
    import psutil

    if child.poll() is None:
        descendants = psutil.Process(child.pid).children(recursive=True)
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("dispatcher did not drain within %g s; killing it", timeout)
            child.kill()
            child.wait()
    else:
        descendants = []
    _end(descendants, child.pid)


def _end(processes: list[psutil.Process], group: int, grace_s: float = 5.0) -> None:
    """SIGTERM ``processes`` and the process group ``group``, then SIGKILL what outlives ``grace_s``."""
    import psutil

    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    typer.run(dispatch)
