#!/usr/bin/env python
"""What the service costs per trial when trials cost nothing: NAS-Bench-201 jobs through ``nas serve`` on PostgreSQL.

    python benchmarks/scale.py [--trials 10000] [--jobs 20 --job-trials 500] [--only single|many]

Trials of the ``nasbench201`` dataset look their results up (microseconds), so what a job takes is
the service itself: REST, the store, the dispatcher, Ray Tune and the trial workers. Two runs, each
on a fresh PostgreSQL database (127.0.0.1:5432, trust auth; ``NAS_SCALE_PG``) and a fresh ``nas
serve`` with its own NAS_HOME:

1. **single**: one job of ``--trials`` random-search trials;
2. **many**: ``--jobs`` jobs of ``--job-trials`` trials each, submitted at once, run side by side;
3. **resume**: the single job again, with ``nas serve`` killed (SIGKILL) when ``--kill-at`` of its
   trials have finished and started again: afterwards the job has exactly its trials, numbered
   once each, all complete, and every trial that had finished before the kill is as it was.

Reported per run: trials per second and per-trial overhead (from the first job's start to the last
one's end, divided by the trials), the API's read latency while the jobs run (a client reading the
job and a page of its trials in a loop: p50, p99), the peak resident memory of the API process and
of the dispatcher process (Ray's own processes not counted), and the database's growth per trial
(``pg_database_size``). The numbers are printed and written as JSON to
``benchmarks/results/scale-<date>.json``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402

from benchmarks.server_process import ServerProcess  # noqa: E402

PG = os.environ.get("NAS_SCALE_PG", "postgresql://postgres@127.0.0.1:5432")
OVERHEAD_TARGET_MS = 20.0


def job_spec(name: str, trials: int, concurrent: int, seed: int, cpus: float) -> dict[str, Any]:
    return {
        "name": name,
        "search_space": {"name": "nasbench201", "params": {"table": "cifar10"}},
        "dataset": {"name": "nasbench201", "params": {"table": "cifar10"}},
        "strategy": {"name": "random"},
        "budget": {"max_trials": trials, "max_concurrent": concurrent},
        "resources": {"cpus": cpus},
        "seed": seed,
    }


class Sampler(threading.Thread):
    """Peak RSS of the API process and of its dispatcher child, every 0.2 s."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server = psutil.Process(server_pid)
        self.peak = {"api_mb": 0.0, "dispatcher_mb": 0.0}
        self.cpu_s = {"api": 0.0, "dispatcher": 0.0}  # CPU time so far (user + system), at the last sample
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                api = self.server.memory_info().rss
                dispatchers = [c for c in self.server.children() if "workers.dispatch_process" in " ".join(c.cmdline())]
                dispatcher = sum(c.memory_info().rss for c in dispatchers)
                self.cpu_s = {"api": sum(self.server.cpu_times()[:2]),
                              "dispatcher": sum(sum(c.cpu_times()[:2]) for c in dispatchers)}  # fmt: skip
            except psutil.Error:
                continue
            self.peak["api_mb"] = max(self.peak["api_mb"], api / 2**20)
            self.peak["dispatcher_mb"] = max(self.peak["dispatcher_mb"], dispatcher / 2**20)


class Reader(threading.Thread):
    """A client reading a job and the first page of its trials, over and over: the API's read latency."""

    def __init__(self, url: str, key: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.job_id = job_id
        self.latencies_ms: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        paths = [f"/api/v1/jobs/{self.job_id}", f"/api/v1/jobs/{self.job_id}/trials?limit=50"]
        while not self.stopped.is_set():
            for path in paths:
                start = time.perf_counter()
                try:
                    self.client.get(path).raise_for_status()
                except httpx.TransportError:  # the server is down (the resume run kills it): not a read
                    time.sleep(0.5)
                    continue
                self.latencies_ms.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)


def finished_trials(db: psycopg.Connection, job_id: str) -> dict[str, tuple[Any, ...]]:
    rows = db.execute("SELECT id, state, attempts, finished_at FROM trials WHERE job_id = %s AND finished_at IS NOT NULL",
                      (job_id,)).fetchall()  # fmt: skip
    return {row[0]: row[1:] for row in rows}


def run(name: str, n_jobs: int, trials: int, concurrent: int, kill_at: float | None = None) -> dict[str, Any]:
    database = f"nas_scale_{secrets.token_hex(4)}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://{PG.split('://', 1)[1]}/{database}"
    home = Path(tempfile.mkdtemp(prefix="nas-scale-"))
    server = ServerProcess(home, {"NAS_DATABASE_URL": url, "NAS_LIMIT_ACTIVE_JOBS": str(max(10, n_jobs))})
    try:
        key = server.create_key("scale")
        server.start("--max-jobs", str(n_jobs), "--limit-trials-per-job", str(trials),
                     "--limit-trial-epochs", str(trials * 200))  # a looked-up trial trains no epoch
        with psycopg.connect(f"{PG}/{database}") as db:
            empty = db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        sampler = Sampler(server.process.pid)
        sampler.start()
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        submitted = time.time()
        ids = []
        for i in range(n_jobs):
            # every job's trials fit on the machine's CPUs at once, so no job waits for another's workers
            cpus = min(0.25, (os.cpu_count() or 2) / (n_jobs * concurrent))
            answer = api.post("/api/v1/jobs", json=job_spec(f"{name}-{i}", trials, concurrent, i, cpus))
            if answer.status_code != 201:
                raise RuntimeError(f"the job was refused: {answer.status_code} {answer.text}")
            ids.append(answer.json()["id"])
        reader = Reader(server.url, key, ids[0])
        reader.start()
        resume: dict[str, Any] = {}
        if kill_at is not None:  # SIGKILL once that share of the trials finished, then start again
            with psycopg.connect(f"{PG}/{database}") as db:
                while len(before := finished_trials(db, ids[0])) < kill_at * trials:
                    time.sleep(0.2)
                server.kill()
                before = finished_trials(db, ids[0])
            sampler.stopped.set()
            server.start("--max-jobs", str(n_jobs), "--limit-trials-per-job", str(trials),
                         "--limit-trial-epochs", str(trials * 200))  # fmt: skip
            sampler = Sampler(server.process.pid)
            sampler.start()
            resume = {"finished_before_kill": len(before)}
        jobs: list[dict[str, Any]] = []
        while len(jobs) < n_jobs:
            time.sleep(1)
            jobs = [job for job in (api.get(f"/api/v1/jobs/{i}").json() for i in ids) if job["status"] in
                    ("succeeded", "failed", "cancelled")]  # fmt: skip
        reader.stopped.set()
        sampler.stopped.set()
        reader.join()
        sampler.join()
        with psycopg.connect(f"{PG}/{database}") as db:
            size = db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            counts = dict(db.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
            numbers = db.execute("SELECT count(*), count(DISTINCT (job_id, number)) FROM trials").fetchone()
            if resume:
                after = finished_trials(db, ids[0])
                resume["changed_after_resume"] = sum(after.get(i) != row for i, row in before.items())
                resume["attempts_above_one"] = db.execute("SELECT count(*) FROM trials WHERE attempts > 1").fetchone()[0]
        started = min(dt.datetime.fromisoformat(job["started_at"]) for job in jobs)
        finished = max(dt.datetime.fromisoformat(job["finished_at"]) for job in jobs)
        span = (finished - started).total_seconds()
        total = n_jobs * trials
        latencies = sorted(reader.latencies_ms)
        return {
            "run": name, "jobs": n_jobs, "trials_per_job": trials, "max_concurrent": concurrent,
            "statuses": sorted({job["status"] for job in jobs}), "trial_states": counts,
            "trials": numbers[0], "distinct_numbers": numbers[1],
            "submit_to_end_s": round(finished.timestamp() - submitted, 1), "run_s": round(span, 1),
            "trials_per_s": round(total / span, 1), "overhead_ms_per_trial": round(span / total * 1000, 2),
            "read_p50_ms": round(statistics.median(latencies), 1),
            "read_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1), "reads": len(latencies),
            "api_peak_mb": round(sampler.peak["api_mb"]), "dispatcher_peak_mb": round(sampler.peak["dispatcher_mb"]),
            "dispatcher_cpu_ms_per_trial": round(sampler.cpu_s["dispatcher"] / total * 1000, 2),
            "load_average": os.getloadavg()[0],
            "db_bytes_per_trial": round((size - empty) / total), **resume,
        }  # fmt: skip
    finally:
        server.stop()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10000, help="trials of the single job")
    parser.add_argument("--jobs", type=int, default=20, help="jobs of the many-jobs run")
    parser.add_argument("--job-trials", type=int, default=500, help="trials of each of those jobs")
    parser.add_argument("--concurrent", type=int, default=4, help="budget.max_concurrent of the single job")
    parser.add_argument("--only", choices=["single", "many", "resume"], help="run one of the three")
    parser.add_argument("--kill-at", type=float, default=0.4, help="resume: share of trials finished at the kill")
    args = parser.parse_args()
    results = []
    if args.only in (None, "single"):
        results.append(run("single", 1, args.trials, args.concurrent))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "many"):
        results.append(run("many", args.jobs, args.job_trials, 1))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "resume"):
        results.append(run("resume", 1, args.trials, args.concurrent, args.kill_at))
        print(json.dumps(results[-1]), flush=True)
    size = f"{args.jobs}x{args.job_trials}" if args.only == "many" else str(args.trials)
    out = ROOT / "benchmarks" / "results" / f"scale-{dt.date.today()}-{args.only or 'all'}-{size}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                               "python": platform.python_version(), "results": results}, indent=2))  # fmt: skip
    for result in results:
        met = "met" if result["overhead_ms_per_trial"] <= OVERHEAD_TARGET_MS else "missed"
        print(f"{result['run']}: {result['trials_per_s']} trials/s, {result['overhead_ms_per_trial']} ms per trial "
              f"(target <= {OVERHEAD_TARGET_MS:g}: {met}), read p99 {result['read_p99_ms']} ms")


if __name__ == "__main__":
    main()
