"""The agent's work loop: register, lease a task, download its model, time it, put the result.

The agent survives what a device on a network meets: an unreachable or restarting server is retried
with backoff (a task's result too, so a measurement is not lost to a restart), and a model that
fails to load or run is reported as that task's error, never the agent's end. A lease is kept alive
by a heartbeat while the model is timed; an agent that dies loses nothing, since its lease expires
and the service hands the task to another agent of the target. SIGTERM or SIGINT stops the agent
after the measurements in progress are reported (a second one stops it at once, abandoning them to
their leases).

With ``concurrency`` above 1 the agent times several models at once on threads; on one CPU they
disturb each other's timings (and torch's thread setting is per process), so that is for devices
with several independent accelerators, or where throughput matters more than precision.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx

from nas.agent.hardware import describe, offered_runtimes
from nas.agent.measure import MAX_ERROR_CHARS, task_result

API = "/api/v1"
STATE_FILE = "agent.json"
MAX_BACKOFF_S = 30.0
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})  # a restarting server, or a proxy in front of one
EXIT_USAGE, EXIT_AUTH = 2, 3  # as the other `nas` commands (nas.cli.ExitCode)

log = logging.getLogger("nas.agent")


class Fatal(Exception):
    """The server refused the agent for good (an unknown or revoked key, a user key, a registration it
    rejects), or the agent cannot start; retrying cannot help. ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Stopped(Exception):
    """The agent was asked to stop while it waited for the server."""


@dataclass(frozen=True)
class AgentConfig:
    """What ``nas agent`` was started with."""

    url: str
    key: str
    target: str
    home: Path
    name: str | None = None
    runtimes: tuple[str, ...] = ()  # empty: every runtime present here
    concurrency: int = 1
    once: bool = False  # exit after one task
    poll: float | None = None  # long-poll seconds; None: what the server suggests


def agent_name(home: Path, name: str | None = None) -> str:
    """The agent's name, kept in ``home`` so that a restarted agent registers as the same agent.

    ``name``, when given, replaces the stored one; without either, the name is the host's name
    with a short random suffix (two agents on hosts of one name stay apart).
    """
    path = home / STATE_FILE
    if name is None and path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))["name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Fatal(f"cannot read the agent's state in {path}: {exc}") from None
        return str(stored)
    if name is None:
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:48] or "agent"
        name = f"{host}-{secrets.token_hex(2)}"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"name": name}) + "\n", encoding="utf-8")
    partial.replace(path)
    return name


def _backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): doubling from 0.5 s up to 30 s, with jitter so that
    many agents do not come back at one instant after a server restart."""
    return min(MAX_BACKOFF_S, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)


class Connection:
    """One thread's HTTP client to the service, with the agent key.

    :meth:`request` repeats a call that could not reach the server, or got an answer that says
    "later" (:data:`RETRIED_STATUSES`), with backoff until it gets another answer or the agent stops;
    every agent call is safe to repeat (registration, lease, heartbeat and result are idempotent or
    refused with 409 once they no longer apply).
    """

    def __init__(self, url: str, key: str, stop: threading.Event) -> None:
        self.stop = stop
        self.client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": f"nas-agent/{_version()}"},
            timeout=httpx.Timeout(30.0, connect=10.0),
        )

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The server's answer to one call, retried while the server cannot be reached; ``Stopped``
        when the agent stops meanwhile (a call is always tried once, even while stopping)."""
        attempt = 0
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
                if response.status_code not in RETRIED_STATUSES:
                    return response
                problem = f"HTTP {response.status_code}"
                delay = _retry_after(response) or _backoff(attempt)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = _backoff(attempt)
            if self.stop.is_set():
                raise Stopped
            log.warning("%s %s: server unreachable (%s); retrying in %.1f s", method, path, problem, delay)
            if self.stop.wait(delay):
                raise Stopped
            attempt += 1


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return None


def _detail(response: httpx.Response) -> str:
    """The server's reason for an answer (FastAPI's ``detail``), else the status and body's start."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else f"HTTP {response.status_code}: {response.text[:200]}"


def _check_key(response: httpx.Response, what: str) -> None:
    """Raise :class:`Fatal` when the server refuses the key itself (401, 403): no later call can succeed."""
    if response.status_code in (401, 403):
        raise _refused(response, what)


def _refused(response: httpx.Response, what: str) -> Fatal:
    """The :class:`Fatal` error of a call the server refused for good."""
    code = EXIT_AUTH if response.status_code in (401, 403) else EXIT_USAGE
    return Fatal(f"{what}: the server refused (HTTP {response.status_code}): {_detail(response)}", code)


class Agent:
    """One ``nas agent`` process: its identity, its runtimes, and the workers that measure."""

    def __init__(self, config: AgentConfig) -> None:
        if config.concurrency < 1:
            raise Fatal(f"concurrency must be at least 1, got {config.concurrency}")
        self.config = config
        self.url = config.url.rstrip("/")
        self.stop = threading.Event()
        self.runtimes = offered_runtimes(config.runtimes or None)
        if not self.runtimes:
            raise Fatal("no runtime to offer: install onnxruntime (pip install 'sparse-nas[agent]'), or torch and onnx")
        self.hardware = describe(self.runtimes)
        self.name = agent_name(config.home, config.name)
        self.agent_id: str | None = None
        self.lease_s = 30.0
        self.poll_s = 20.0
        self.measured = 0  # tasks reported, results and errors alike
        self.fatal: Fatal | None = None
        self._lock = threading.Lock()  # the agent id, the busy set, and stopping
        self._busy: set[threading.Thread] = set()

    # -- the process ---------------------------------------------------------------------------

    def run(self) -> int:
        """Register, then measure until stopped (or after one task with ``once``); the exit status."""
        _warn_if_cleartext(self.url)
        connection = Connection(self.url, self.config.key, self.stop)
        try:
            self.register(connection)
        except Stopped:
            return 0
        finally:
            connection.close()
        workers = [
            threading.Thread(target=self._work, name=f"nas-agent-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        for worker in workers:
            worker.start()
        while not self.stop.is_set() and any(w.is_alive() for w in workers):
            self.stop.wait(0.5)
        with self._lock:
            self.stop.set()
            busy = list(self._busy)
        if busy:
            log.info("stopping after %d measurement(s) in progress", len(busy))
        for worker in busy:  # idle workers may be inside a long poll: they are not waited for
            worker.join()
        if self.fatal is not None:
            raise self.fatal
        log.info("stopped after %d measurement(s)", self.measured)
        return 0

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the agent after its measurements in progress; a second one at once."""

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.stop.is_set():
                log.warning("stopping now: measurements in progress are left to their leases")
                os._exit(128 + signum)
            log.info("%s: stopping after the measurements in progress", signal.Signals(signum).name)
            self.stop.set()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def register(self, connection: Connection) -> None:
        """``POST /agents``: the same (target, name) under the same key is the same agent again."""
        body = {
            "target": self.config.target,
            "name": self.name,
            "hardware": self.hardware,
            "runtimes": self.runtimes,
            "concurrency": self.config.concurrency,
        }
        response = connection.request("POST", f"{API}/agents", json=body)
        if response.status_code not in (200, 201):
            raise _refused(response, f"registering agent {self.name!r} for target {self.config.target!r}")
        answer = response.json()
        with self._lock:
            self.agent_id = str(answer["id"])
            self.lease_s = float(answer.get("lease_s") or self.lease_s)
            self.poll_s = float(answer.get("poll_s") or self.poll_s)
        names = ", ".join(f"{r['name']} {r['version']}" for r in self.runtimes)
        log.info("agent %s (%s) registered for target %s: %s", self.name, self.agent_id, self.config.target, names)

    # -- one worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        connection = Connection(self.url, self.config.key, self.stop)
        try:
            while not self.stop.is_set():
                try:
                    if self._next_task(connection) and self.config.once:
                        self.stop.set()
                except (Stopped, Fatal):
                    raise
                except Exception:  # an answer the agent cannot read (a proxy's error page...): later
                    log.exception("unexpected failure; trying again in %.0f s", MAX_BACKOFF_S)
                    self.stop.wait(MAX_BACKOFF_S)
        except Stopped:
            pass
        except Fatal as exc:
            self.fatal = exc
            self.stop.set()
        finally:
            connection.close()

    def _next_task(self, connection: Connection) -> bool:
        """Lease a task and measure it; whether there was one."""
        task = self._lease(connection)
        if task is None:
            return False
        with self._lock:
            if self.stop.is_set():
                log.info("task %s leased while stopping: left to its lease", task.get("id"))
                raise Stopped
            self._busy.add(threading.current_thread())
        try:
            self._measure(connection, task)
        finally:
            with self._lock:
                self._busy.discard(threading.current_thread())
        return True

    def _lease(self, connection: Connection) -> dict[str, Any] | None:
        """``POST /agents/{id}/lease?wait=S``: a task, or None when none came (or the agent re-registered)."""
        agent_id = self.agent_id
        wait = self.poll_s if self.config.poll is None else self.config.poll
        wait = int(min(30.0, max(0.0, wait)))
        timeout = httpx.Timeout(wait + 30.0, connect=10.0)  # the server holds the call up to ``wait`` seconds
        response = connection.request("POST", f"{API}/agents/{agent_id}/lease", params={"wait": wait}, timeout=timeout)
        if response.status_code == 204:
            if wait == 0:  # no long poll: pace the polls
                self.stop.wait(1.0)
            return None
        if response.status_code == 404:  # the server no longer knows this agent (a new database)
            self._register_again(connection, agent_id)
            return None
        if response.status_code != 200:
            _check_key(response, "leasing a task")
            log.warning("leasing a task: %s; trying again in %.0f s", _detail(response), MAX_BACKOFF_S)
            self.stop.wait(MAX_BACKOFF_S)
            return None
        task: dict[str, Any] = response.json()
        return task

    def _register_again(self, connection: Connection, stale_id: str | None) -> None:
        """Register once for all workers that found ``stale_id`` unknown."""
        with self._lock:
            if self.agent_id != stale_id:
                return
        log.warning("the server does not know agent %s: registering again", stale_id)
        self.register(connection)

    def _measure(self, connection: Connection, task: dict[str, Any]) -> None:
        """Download, time and report one task; a failure of the model or the runtime is the task's result."""
        task_id, lease_id, runtime = task["id"], task["lease_id"], task.get("runtime", "?")
        base = f"{API}/agents/{self.agent_id}/tasks/{task_id}"
        started = time.monotonic()
        url = task.get("model_url") or f"{base}/model"
        model = connection.request("GET", url, timeout=httpx.Timeout(300.0, connect=10.0))
        if model.status_code != 200:
            _check_key(model, f"downloading the model of task {task_id}")
            log.warning("task %s: the model could not be downloaded (%s); left to its lease", task_id, _detail(model))
            return
        lease_s = float(task.get("lease_s") or self.lease_s)
        heartbeat = Heartbeat(self.url, self.config.key, f"{base}/heartbeat", lease_id, lease_s)
        heartbeat.start()
        try:
            result = {"lease_id": lease_id, **task_result(model.content, task, self.runtimes)}
        finally:
            heartbeat.finish()
        answer = connection.request("PUT", f"{base}/result", json=result)
        if answer.status_code == 422 and "stats" in result:  # stats the server will not take: say so instead
            refusal = f"the server refused the statistics: {_detail(answer)}"
            result = {"lease_id": lease_id, "error": refusal[:MAX_ERROR_CHARS]}
            answer = connection.request("PUT", f"{base}/result", json=result)
        seconds = time.monotonic() - started
        if answer.status_code != 200:
            _check_key(answer, f"reporting task {task_id}")
            reason = "lease lost" if answer.status_code == 409 else f"HTTP {answer.status_code}"
            log.warning("task %s %s: result not taken (%s: %s)", task_id, runtime, reason, _detail(answer))
            return
        self.measured += 1
        if "error" in result:
            log.info("task %s %s: error: %s (%.1f s)", task_id, runtime, result["error"], seconds)
        else:
            stats = result["stats"]
            log.info(
                "task %s %s: p10 %.4g ms, median %.4g ms, IQR %.3g ms over %d calls%s (%.1f s)",
                task_id, runtime, stats["p10_ms"], stats["median_ms"], stats["iqr_ms"], stats.get("runs", 0),
                ", noisy" if stats.get("noisy") else "", seconds,
            )  # fmt: skip


class Heartbeat(threading.Thread):
    """Renews one task's lease every third of its length while the model is timed.

    A heartbeat that cannot reach the server is tried again at the next beat; one answered 409 (the
    lease expired and the task went to another agent) ends the heartbeat: the result is still put,
    and the server decides whether it is taken.
    """

    def __init__(self, url: str, key: str, path: str, lease_id: str, lease_s: float) -> None:
        super().__init__(name="nas-agent-heartbeat", daemon=True)
        self.url, self.key, self.path, self.lease_id = url, key, path, lease_id
        self.interval = max(0.5, lease_s / 3)
        self.done = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "User-Agent": f"nas-agent/{_version()}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(10.0)) as client:
            while not self.done.wait(self.interval):
                try:
                    response = client.post(self.path, json={"lease_id": self.lease_id})
                except httpx.TransportError as exc:
                    log.warning("heartbeat %s: server unreachable (%s)", self.path, type(exc).__name__)
                    continue
                if response.status_code == 409:
                    log.warning("heartbeat %s: lease lost (%s)", self.path, _detail(response))
                    return
                if response.status_code == 200:
                    lease_s = response.json().get("lease_s")
                    if lease_s:
                        self.interval = max(0.5, float(lease_s) / 3)

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=15.0)


def _warn_if_cleartext(url: str) -> None:
    """Warn when the key would cross a network unencrypted (plain http to a host other than this one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and not loopback:
        log.warning("%s is plain http: the agent key crosses the network unencrypted; use https", url)


def _version() -> str:
    from nas import __version__

    return __version__
