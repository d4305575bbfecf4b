#!/usr/bin/env python
"""Load: concurrent clients polling jobs and trials and submitting jobs against ``nas serve`` on
PostgreSQL, with errors and p50/p99 latency per endpoint.

    python benchmarks/load.py [--clients 50] [--duration 60] [--think-ms 200]

What it does, start to end:

1. creates a fresh PostgreSQL database through the ``postgres`` maintenance database
   (``--admin-url``, default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, and
   through the store mints one key per owner and fills in finished jobs with complete trials
   (metrics, per-epoch history, layers), as a real search would leave them;
2. starts the real ``nas serve`` on it (``--max-jobs 1``, ``--workers`` API processes (default 2),
   JSON logs, a temporary ``NAS_HOME``); the dispatcher is its own process, as always;
3. runs ``--clients`` asyncio clients (``httpx.AsyncClient``) for ``--duration`` seconds; each waits a
   random think time (uniform, mean ``--think-ms``) between requests, picks one of
   ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/trials``, ``GET /trials/{id}`` on its
   owner's data, and every ``--submit-every`` seconds submits a one-trial, one-epoch job that the
   server's dispatcher then really runs on Ray;
4. prints, per endpoint, requests, errors, and p50/p99 latency as the clients saw it and as the
   server logged it (``duration_ms`` of its JSON access lines), then stops the server and drops
   the database.

Latencies are wall times on the same machine as the server, the clients and the trials they
submit; nothing is asserted, the target (no errors, p99 < 100 ms for reads) is only reported.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.net import free_port  # noqa: E402

READ_TARGET_P99_MS = 100.0
OWNERS = 5
JOBS_PER_OWNER = 3
TRIALS_PER_JOB = 40
METRICS = {
    "accuracy": 0.9, "loss": 0.3, "sparsity": 0.9, "nonzero_params": 1e4, "params": 1e5,
    "flops": 2e5, "latency_ms": 0.05, "predicted_latency_ms": 0.05,
}
TINY_JOB = {
    "name": "load-test",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "training": {"epochs": 1, "batch_size": 128},
    "budget": {"max_trials": 1, "max_concurrent": 1},
}
READS = ("GET /jobs", "GET /jobs/{id}", "GET /jobs/{id}/trials", "GET /trials/{id}")
# Server access lines name concrete paths; these map them back to the endpoint.
_ROUTES = [
    (re.compile(r"^/api/v1/jobs$"), "jobs"),
    (re.compile(r"^/api/v1/jobs/[0-9a-f]+$"), "GET /jobs/{id}"),
    (re.compile(r"^/api/v1/jobs/[0-9a-f]+/trials$"), "GET /jobs/{id}/trials"),
    (re.compile(r"^/api/v1/trials/[0-9a-f]+$"), "GET /trials/{id}"),
]


def create_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"nas_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host_part = admin_url.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgresql+psycopg://{host_part}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def populate(database_url: str) -> list[dict[str, Any]]:
    """Per owner: a key, and finished jobs full of complete trials; returns what clients poll."""
    from nas.specs import JobSpec, JobStatus, LayerInfo, TrialState
    from nas.store import Store, make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine)
    store = Store(engine)
    layers = [LayerInfo(name=f"fc{i}.weight", shape=[64, 64], density=0.1, pattern="unstructured") for i in range(3)]
    owners = []
    for o in range(OWNERS):
        owner = f"load-{o}"
        jobs, trials = [], []
        for _ in range(JOBS_PER_OWNER):
            job = store.create_job(JobSpec.model_validate({**TINY_JOB, "name": "prepopulated"}), owner)
            assert store.claim_job("load-populate", 60) == job.id
            for _ in range(TRIALS_PER_JOB):
                trial = store.create_trial(job.id, {"hidden": [64, 64, 64]})
                store.start_trial(trial.id, "node-0")
                for epoch in range(3):
                    store.report_epoch(trial.id, epoch, METRICS)
                store.finish_trial(trial.id, TrialState.complete, dict(METRICS), layers)
                trials.append(trial.id)
            store.finish_job(job.id, JobStatus.succeeded)
            jobs.append(job.id)
        owners.append({"owner": owner, "key": store.create_api_key(owner), "jobs": jobs, "trials": trials})
    engine.dispose()
    return owners


def start_server(database_url: str, home: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    import httpx

    env = {**os.environ, "NAS_HOME": str(home), "NAS_LIMIT_ACTIVE_JOBS": "100000"}
    log = open(home / "serve.log", "wb")
    process = subprocess.Popen(
        ["nas", "serve", "--port", str(port), "--database-url", database_url, "--max-jobs", "1",
         "--workers", str(workers), "--log-format", "json"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nas serve exited with {process.returncode}; see {home / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError("nas serve did not answer /healthz within 180 s")


class Recorder:
    """Latencies (ms) and errors per endpoint, as the clients saw them."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    async def call(self, http: Any, endpoint: str, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            response = await http.request(method, path, **kwargs)
        except Exception as exc:  # a transport failure is an error like a bad status
            self.errors[endpoint][type(exc).__name__] += 1
            return None
        self.latency[endpoint].append((time.perf_counter() - start) * 1000)
        if response.status_code != expect:
            self.errors[endpoint][str(response.status_code)] += 1
            return None
        return response


async def client(url: str, data: dict[str, Any], args: argparse.Namespace, rec: Recorder, stop_at: float) -> None:
    import httpx

    rng = random.Random()
    headers = {"Authorization": f"Bearer {data['key']}"}
    next_submit = time.monotonic() + rng.uniform(0, args.submit_every)
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=30) as http:
        while time.monotonic() < stop_at:
            await asyncio.sleep(rng.uniform(0, 2 * args.think_ms / 1000))
            if time.monotonic() >= next_submit:
                next_submit += args.submit_every
                await rec.call(http, "POST /jobs", "POST", "/jobs", 201, json=TINY_JOB)
                continue
            endpoint = rng.choice(READS)
            job, trial = rng.choice(data["jobs"]), rng.choice(data["trials"])
            path = {"GET /jobs": "/jobs", "GET /jobs/{id}": f"/jobs/{job}",
                    "GET /jobs/{id}/trials": f"/jobs/{job}/trials", "GET /trials/{id}": f"/trials/{trial}"}[endpoint]
            await rec.call(http, endpoint, "GET", path, 200)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def server_latencies(log_path: Path) -> dict[str, list[float]]:
    """``duration_ms`` of the server's JSON access lines, per endpoint."""
    found: dict[str, list[float]] = defaultdict(list)
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("logger") != "nas.access":
            continue
        for pattern, endpoint in _ROUTES:
            if pattern.match(record["path"]):
                if endpoint == "jobs":
                    endpoint = f"{record['method']} /jobs"
                found[endpoint].append(record["duration_ms"])
    return found


def report(rec: Recorder, server: dict[str, list[float]], args: argparse.Namespace, load: tuple[str, str]) -> None:
    total = sum(len(v) for v in rec.latency.values()) + sum(sum(e.values()) for e in rec.errors.values())
    print(f"\n{args.clients} clients, {args.duration:.0f} s, think time mean {args.think_ms:.0f} ms, "
          f"a submit every {args.submit_every:.0f} s per client; {total} requests ({total / args.duration:.0f}/s)")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"load average before: {load[0]}; after: {load[1]}\n")
    print("| endpoint | requests | errors | client p50 ms | client p99 ms | server p50 ms | server p99 ms |")
    print("|---|---:|---|---:|---:|---:|---:|")
    met = True
    for endpoint in (*READS, "POST /jobs"):
        lat, srv = rec.latency.get(endpoint, []), server.get(endpoint, [])
        errors = dict(rec.errors.get(endpoint, {}))
        print(f"| `{endpoint}` | {len(lat) + sum(errors.values())} | {errors or 0} | {percentile(lat, 50):.1f} | "
              f"{percentile(lat, 99):.1f} | {percentile(srv, 50):.1f} | {percentile(srv, 99):.1f} |")
        met &= not errors and (endpoint not in READS or percentile(lat, 99) < READ_TARGET_P99_MS)
    print(f"\ntarget (no errors, client p99 < {READ_TARGET_P99_MS:.0f} ms for reads): {'met' if met else 'MISSED'}")


def uptime_load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--think-ms", type=float, default=200.0, help="mean pause between a client's requests")
    parser.add_argument("--submit-every", type=float, default=30.0, help="seconds between a client's submissions")
    parser.add_argument("--workers", type=int, default=2, help="API worker processes of nas serve")
    parser.add_argument("--admin-url", default=os.environ.get(
        "NAS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()

    name, database_url = create_database(args.admin_url)
    process = None
    try:
        with tempfile.TemporaryDirectory(prefix="nas-load-") as tmp:
            home = Path(tmp)
            print(f"database {name}: populating {OWNERS} owners x {JOBS_PER_OWNER} jobs x {TRIALS_PER_JOB} trials",
                  flush=True)
            owners = populate(database_url)
            port = free_port()
            process = start_server(database_url, home, port, args.workers)
            print(f"nas serve on port {port} ({args.workers} API workers); {args.clients} clients for "
                  f"{args.duration:.0f} s", flush=True)
            load_before = uptime_load()
            rec = Recorder()
            url = f"http://127.0.0.1:{port}"

            async def run_all() -> None:
                stop_at = time.monotonic() + args.duration
                await asyncio.gather(
                    *(client(url, owners[i % len(owners)], args, rec, stop_at) for i in range(args.clients))
                )

            asyncio.run(run_all())
            load_after = uptime_load()
            process.terminate()
            process.wait(120)
            report(rec, server_latencies(home / "serve.log"), args, (load_before, load_after))
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(30)
        drop_database(args.admin_url, name)


if __name__ == "__main__":
    main()
