"""``nas dispatch``: the job dispatcher as a process of its own.

``nas serve`` starts one beside the API, so that Ray Tune's experiment start-ups and result
handling never hold the API's interpreter lock, and a cluster can run API servers and
dispatchers on different machines against one database. SIGTERM drains: running jobs stop their
trials and go back to the queue, as leases would hand them over anyway.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
from typing import Annotated, Literal, Optional

import typer

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
    log_format: Annotated[
        Literal["auto", "json", "text"], typer.Option(envvar="NAS_LOG_FORMAT", help="json, text or auto")
    ] = "auto",
) -> None:
    """Run queued jobs on Ray until stopped (SIGTERM or Ctrl-C drain the running jobs)."""
    from nas.logging_setup import configure_logging
    from nas.settings import Settings
    from nas.store import Store, make_engine, upgrade
    from workers.dispatcher import Dispatcher, connect_ray

    configure_logging(log_format)
    settings = Settings.from_env(database_url=database_url, ray_address=ray_address)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    connect_ray(settings)
    stop = threading.Event()
    # After ray.init, whose own handler would exit at once with status 15.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    dispatcher = Dispatcher(Store(engine), settings, max_jobs=max_jobs)
    dispatcher.start()
    log.info("dispatcher %s running at most %d jobs", dispatcher.runner_id, max_jobs)
    stop.wait()
    log.info("dispatcher draining")
    dispatcher.stop()


def spawn_child(max_jobs: int) -> subprocess.Popen[bytes]:
    """Start ``nas dispatch`` as a child that dies with its parent, even when the parent is
    killed with SIGKILL: an orphaned dispatcher would keep running jobs nobody serves."""
    return subprocess.Popen(
        [sys.executable, "-m", "workers.dispatch_process", "--max-jobs", str(max_jobs)],
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_child(child: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """SIGTERM (a drain), then SIGKILL if it has not ended within ``timeout`` seconds."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("dispatcher did not drain within %g s; killing it", timeout)
        child.kill()
        child.wait()


if __name__ == "__main__":
    typer.run(dispatch)
