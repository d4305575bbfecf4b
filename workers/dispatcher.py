"""Claims queued (or orphaned) jobs from the database and runs each in a :class:`JobRunner`."""

from __future__ import annotations

import logging
import threading

from nas.settings import Settings
from nas.store import Store
from nas.store.store import DISPATCHER_HEARTBEAT_S
from workers.cluster import ray_nodes
from workers.ray_loopback import keep_local_ray_on_loopback
from workers.runner import JobRunner

log = logging.getLogger(__name__)


def connect_ray(settings: Settings, dashboard: bool = False) -> None:
    """Join the cluster at ``settings.ray_address``, or start a local Ray instance of our own.

    Without an address Ray is told ``"local"``: left to itself it would join whatever cluster the
    ``ray_current_cluster`` file in its temp folder names, even one that died long ago. The local
    instance has no dashboard (a web server and a port) unless ``dashboard`` asks for one.
    """
    import ray

    if ray.is_initialized():
        return
    options: dict[str, object] = {"log_to_driver": False, "configure_logging": False}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **options)
        return
    keep_local_ray_on_loopback()
    context = ray.init(address="local", include_dashboard=dashboard, **options)
    if dashboard:
        log.info("Ray dashboard at http://%s", context.dashboard_url)


class Dispatcher:
    """A polling loop in a thread; one runner thread per job, at most ``max_jobs`` at once.

    A second thread records a heartbeat with Ray's state and its nodes' CPUs and GPUs in the store
    every ``beat_s`` seconds: the API's readiness answer and its check of a job's resources read it,
    since API processes never talk to Ray.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        runner_id: str,
        max_jobs: int = 2,
        poll_s: float = 0.5,
        lease_s: float = 15.0,
        beat_s: float = DISPATCHER_HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.settings = settings
        self.max_jobs = max_jobs
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.beat_s = beat_s
        self.runner_id = runner_id
        self._stop = threading.Event()
        self._runners: dict[str, tuple[JobRunner, threading.Thread]] = {}
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._beat_thread = threading.Thread(target=self._beat, name="dispatcher-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._beat_thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Drain: readiness turns false, running jobs stop their trials and go back to the queue."""
        self._stop.set()
        # A probe of a Ray that is gone may hang; once stopped, the heartbeat thread writes nothing.
        self._beat_thread.join(self.beat_s)
        try:
            self.store.remove_dispatcher(self.runner_id)
        except Exception:
            log.warning("could not remove this dispatcher's heartbeat; it goes stale instead", exc_info=True)
        self._thread.join(timeout)
        for runner, thread in list(self._runners.values()):
            runner.stop()
        for runner, thread in list(self._runners.values()):
            thread.join(timeout)

    def _beat(self) -> None:
        while True:
            nodes = ray_nodes()  # a live node is one to run trials on
            if self._stop.is_set():
                return
            try:
                self.store.dispatcher_heartbeat(self.runner_id, ray_up=bool(nodes), nodes=nodes or None)
            except Exception:
                log.warning("recording the dispatcher's heartbeat failed; retrying", exc_info=True)
            if self._stop.wait(self.beat_s):
                return

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
