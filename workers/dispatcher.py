"""Claims queued (or orphaned) jobs from the database and runs each in a :class:`JobRunner`."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from nas.settings import Settings
from nas.store import Store
from workers.ray_loopback import keep_local_ray_on_loopback
from workers.runner import JobRunner

log = logging.getLogger(__name__)


def connect_ray(settings: Settings) -> None:
    """Join the cluster at ``settings.ray_address``, or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    if not settings.ray_address:
        keep_local_ray_on_loopback()
    ray.init(
        address=settings.ray_address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


class Dispatcher:
    """A polling loop in a thread; one runner thread per job, at most ``max_jobs`` at once."""

    def __init__(
        self, store: Store, settings: Settings, max_jobs: int = 2, poll_s: float = 0.5, lease_s: float = 15.0
    ) -> None:
        self.store = store
        self.settings = settings
        self.max_jobs = max_jobs
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._runners: dict[str, tuple[JobRunner, threading.Thread]] = {}
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Drain: running jobs stop their trials and are handed back to the queue."""
        self._stop.set()
        self._thread.join(timeout)
        for runner, thread in list(self._runners.values()):
            runner.stop()
        for runner, thread in list(self._runners.values()):
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._reap()
            if len(self._runners) < self.max_jobs:
                try:
                    job_id = self.store.claim_job(self.runner_id, self.lease_s)
                except Exception:
                    log.warning("claiming a job failed; retrying", exc_info=True)
                    job_id = None
                if job_id is not None:
                    self._launch(job_id)
                    continue
            self._stop.wait(self.poll_s)

    def _launch(self, job_id: str) -> None:
        runner = JobRunner(self.store, self.settings, job_id, self.runner_id, self.lease_s)
        thread = threading.Thread(target=runner.run, name=f"job-{job_id[:8]}", daemon=True)
        self._runners[job_id] = (runner, thread)
        thread.start()
        log.info("running job %s", job_id)

    def _reap(self) -> None:
        for job_id, (_, thread) in list(self._runners.items()):
            if not thread.is_alive():
                del self._runners[job_id]
